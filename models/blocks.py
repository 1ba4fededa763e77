"""Building blocks of the Turbo-VAED student decoder.

Tensor layout everywhere: (B, C, T, H, W), float. Every intermediate tensor of the modules used by
the student keeps rank <= 5 (Core ML rejects rank > 5 tensors with dynamic shapes); only
``PixelShuffle3d`` (the classic shuffle, kept for the ablation and the export comparison) does not.

Plain PyTorch ops only: the CPU fast paths (oneDNN convolutions, fused norms, reused buffers) live beside
these blocks in ``models/cpu_fast.py``, a transform applied to a finished model (same state dict).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .streaming import Chain, Frames, Residual, Stream, TemporalConv, Trim


def _triple(k: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)


def pad_time(x: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """Replicate the first frame ``front`` times and the last frame ``back`` times along T (one copy,
    in the memory format of ``x``)."""
    if not front and not back:
        return x
    return torch.cat([x[:, :, :1]] * front + [x] + [x[:, :, -1:]] * back, dim=2)


class Conv3d(nn.Module):
    """3D convolution with replicate padding in time and zero padding in space ("same" output size).

    Non-causal: (k_t - 1) // 2 frames replicated at each end. Causal: k_t - 1 copies of the first frame
    in front, so output frame t sees input frames <= t only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, causal: bool = False,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        self.causal = causal
        self.time_pad = (kt - 1, 0) if causal else ((kt - 1) // 2, (kt - 1) // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2),
                              groups=groups, bias=bias)

    def forward(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """``padded=True``: ``x`` already holds the temporal padding (see ``rms_silu``)."""
        return self.conv(x if padded else pad_time(x, *self.time_pad))

    def stream(self) -> Stream:
        return TemporalConv(lambda x: self(x, padded=True), *self.time_pad)


class DepthwiseSeparableConv3d(nn.Module):
    """Paper Finding 1: depthwise k x k x k conv (one filter per channel), then a 1x1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, causal: bool = False):
        super().__init__()
        self.depthwise = Conv3d(in_channels, in_channels, kernel_size, causal=causal, groups=in_channels)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)
        self.time_pad = self.depthwise.time_pad

    def forward(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        return self.pointwise(self.depthwise(x, padded))

    def stream(self) -> Stream:
        return TemporalConv(lambda x: self(x, padded=True), *self.time_pad)


class RMSNorm(nn.Module):
    """RMS normalisation over the channel dimension (dim 1), no affine parameters. Any rank >= 2."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """1 / RMS over channels, shape (B, 1, ...)."""
        if x.dtype in (torch.float16, torch.bfloat16):  # the mean square in float32: x^2 overflows fp16 from |x| = 256
            return torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        return torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension (dim 1) with affine weight and bias, for 5D tensors.

    Written with reductions over dim 1 instead of ``nn.LayerNorm`` on a permuted tensor, so it exports
    as plain elementwise ops (Core ML has no GroupNorm/LayerNorm for 5D channel-first input).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):  # statistics in float32 (fp16 squares overflow)
            x = x.float()
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return ((x - mean) * torch.rsqrt(var + self.eps)).to(dtype) * self.weight.view(shape) + self.bias.view(shape)


def rms_silu(norm: RMSNorm | None, x: torch.Tensor, time_pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``pad_time(silu(norm(x)), *time_pad)``: the pre-activation of a conv, with its temporal padding
    (``norm=None``: no normalisation, ``x`` is left untouched)."""
    return pad_time(F.silu(x) if norm is None else F.silu(norm(x), inplace=True), *time_pad)


class ResBlock3d(nn.Module):
    """RMSNorm -> SiLU -> conv -> RMSNorm -> SiLU -> conv, plus a residual.

    ``depthwise=True`` uses ``DepthwiseSeparableConv3d`` with ``kernel_size`` (paper: 5); otherwise dense
    3x3x3 convs. When the channel count changes, the shortcut is LayerNorm + 1x1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, depthwise: bool = False, kernel_size: int = 5,
                 causal: bool = False):
        super().__init__()
        if depthwise:
            def make_conv(i, o):
                return DepthwiseSeparableConv3d(i, o, kernel_size, causal=causal)
        else:
            def make_conv(i, o):
                return Conv3d(i, o, 3, causal=causal)
        self.norm1 = RMSNorm()
        self.conv1 = make_conv(in_channels, out_channels)
        self.norm2 = RMSNorm()
        self.conv2 = make_conv(out_channels, out_channels)
        self.out_channels = out_channels
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(ChannelLayerNorm(in_channels), nn.Conv3d(in_channels, out_channels, 1))

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(rms_silu(self.norm1, x, self.conv1.time_pad), padded=True)
        h = self.conv2(rms_silu(self.norm2, h, self.conv2.time_pad), padded=True)
        return h + self.skip(x)

    def stream(self) -> Stream:
        main = Chain([Frames(lambda x: rms_silu(self.norm1, x)), self.conv1.stream(),
                      Frames(lambda x: rms_silu(self.norm2, x)), self.conv2.stream()])
        return Residual(main, None if self.shortcut is None else self.shortcut)


def channels_to_time(x: torch.Tensor, r_t: int) -> torch.Tensor:
    """(B, C*r_t, T, H, W) -> (B, C, T*r_t, H, W); channel c*r_t + a goes to frame t*r_t + a. Rank <= 5.

    One copy, in the memory format of ``x`` (channels-last stays channels-last)."""
    if r_t == 1:
        return x
    b, cr, t, h, w = x.shape
    fmt = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
    x = x.reshape(b, cr // r_t, r_t, t, h * w).transpose(2, 3).contiguous(memory_format=fmt)
    return x.view(b, cr // r_t, t * r_t, h, w)


def pixel_shuffle_frames(x: torch.Tensor, r_h: int, r_w: int) -> torch.Tensor:
    """Per-frame 2D pixel shuffle: (B, C*r_h*r_w, T, H, W) -> (B, C, T, H*r_h, W*r_w). Rank <= 5.

    Channel (c*r_h + i)*r_w + k goes to pixel (h*r_h + i, w*r_w + k), as ``F.pixel_shuffle``.
    """
    if r_h == 1 and r_w == 1:
        return x
    b, crr, t, h, w = x.shape
    c = crr // (r_h * r_w)
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, crr, h, w)
    x = F.pixel_shuffle(x, r_h) if r_h == r_w else _pixel_shuffle_2d(x, r_h, r_w)
    return x.reshape(b, t, c, h * r_h, w * r_w).permute(0, 2, 1, 3, 4)


def _pixel_shuffle_2d(x: torch.Tensor, r_h: int, r_w: int) -> torch.Tensor:
    """2D pixel shuffle with distinct factors, rank <= 5: (N, C*r_h*r_w, H, W) -> (N, C, H*r_h, W*r_w)."""
    n, crr, h, w = x.shape
    c = crr // (r_h * r_w)
    x = x.reshape(n * c, r_h, r_w, h, w).permute(0, 3, 1, 4, 2)  # (N*C, H, r_h, W, r_w)
    return x.reshape(n, c, h * r_h, w * r_w)


class DecoupledPixelShuffle3d(nn.Module):
    """Paper Finding 2 / Eq. 3: channels -> time, then an ordinary 2D pixel shuffle per frame.

    (B, C*r_t*r_h*r_w, T, H, W) -> (B, C, r_t*T, r_h*H, r_w*W) with
    out[b, c, r_t*t + a, r_h*h + i, r_w*w + k] = in[b, ((c*r_h + i)*r_w + k)*r_t + a, t, h, w].
    Every intermediate tensor has rank <= 5.
    """

    def __init__(self, factors: tuple[int, int, int]):
        super().__init__()
        self.factors = tuple(factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r_t, r_h, r_w = self.factors
        return pixel_shuffle_frames(channels_to_time(x, r_t), r_h, r_w)


class PixelShuffle3d(nn.Module):
    """Classic 3D pixel shuffle through a rank-8 permute (what Core ML rejects; kept for the ablation).

    out[b, c, r_t*t + a, r_h*h + i, r_w*w + k] = in[b, ((c*r_t + a)*r_h + i)*r_w + k, t, h, w].
    """

    def __init__(self, factors: tuple[int, int, int]):
        super().__init__()
        self.factors = tuple(factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r_t, r_h, r_w = self.factors
        b, _, t, h, w = x.shape
        x = x.reshape(b, -1, r_t, r_h, r_w, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, -1, t * r_t, h * r_h, w * r_w)


def classic_to_decoupled_permutation(channels: int, factors: tuple[int, int, int]) -> torch.Tensor:
    """Index ``p`` such that ``DecoupledPixelShuffle3d(x[:, p]) == PixelShuffle3d(x)``.

    Decoupled channel ((c*r_h + i)*r_w + k)*r_t + a holds what the classic shuffle reads from
    channel ((c*r_t + a)*r_h + i)*r_w + k.
    """
    r_t, r_h, r_w = factors
    idx = torch.arange(channels * r_t * r_h * r_w).reshape(channels, r_t, r_h, r_w)  # classic order
    return idx.permute(0, 2, 3, 1).reshape(-1)  # read in decoupled order (c, i, k, a)


class Interpolate3d(nn.Module):
    """Nearest-neighbour 3D upsampling, (B, C, T, H, W) -> (B, C, r_t*T, r_h*H, r_w*W): the paper's
    "3D interpolation" upsampler of Table 1 (no channel expansion; the 3x3x3 conv runs after it)."""

    def __init__(self, factors: tuple[int, int, int]):
        super().__init__()
        self.factors = tuple(factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factors, mode="nearest")


SHUFFLES = {"decoupled": DecoupledPixelShuffle3d, "classic": PixelShuffle3d, "interpolate": Interpolate3d}


class Upsampler3d(nn.Module):
    """3x3x3 conv expanding C -> C*r_t*r_h*r_w channels, then a 3D pixel shuffle back to C channels.

    With ``trim_first_frames`` (causal teachers, videos of 1 + r_t*k frames) the first r_t - 1 output
    frames are dropped, so T latent frames give r_t*(T-1) + 1 frames.
    """

    def __init__(self, channels: int, factors: tuple[int, int, int], causal: bool = False,
                 trim_first_frames: bool = True, shuffle: str = "decoupled"):
        super().__init__()
        if shuffle not in SHUFFLES:
            raise ValueError(f"pixel shuffle must be one of {sorted(SHUFFLES)}, got '{shuffle}'")
        self.factors = tuple(factors)
        self.trim = self.factors[0] - 1 if trim_first_frames else 0
        self.interpolate = shuffle == "interpolate"  # upsample first, then a C -> C conv at the new size
        expand = 1 if self.interpolate else self.factors[0] * self.factors[1] * self.factors[2]
        self.conv = Conv3d(channels, channels * expand, 3, causal=causal)
        self.shuffle = SHUFFLES[shuffle](self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.shuffle(x)) if self.interpolate else self.shuffle(self.conv(x))
        return x[:, :, self.trim:] if self.trim else x

    def stream(self) -> Stream:
        if self.interpolate:  # nearest in time repeats frames, so chunk by chunk is exact
            return Chain([Frames(self.shuffle), self.conv.stream(), Trim(self.trim)])
        return Chain([self.conv.stream(), Frames(self.shuffle), Trim(self.trim)])


class MidBlock3d(nn.Module):
    """``num_layers`` residual blocks at constant width (the lowest-resolution block)."""

    def __init__(self, channels: int, num_layers: int, depthwise: bool, kernel_size: int, causal: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock3d(channels, channels, depthwise, kernel_size, causal) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x

    def stream(self) -> Stream:
        return Chain([r.stream() for r in self.resnets])


class UpBlock3d(nn.Module):
    """Optional channel change (a residual block in -> out), optional upsampler, ``num_layers`` resblocks."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, factors: tuple[int, int, int],
                 depthwise: bool, kernel_size: int, causal: bool, trim_first_frames: bool, shuffle: str):
        super().__init__()
        self.conv_in = (ResBlock3d(in_channels, out_channels, depthwise, kernel_size, causal)
                        if in_channels != out_channels else None)
        self.upsampler = (Upsampler3d(out_channels, factors, causal, trim_first_frames, shuffle)
                          if tuple(factors) != (1, 1, 1) else None)
        self.resnets = nn.ModuleList(
            ResBlock3d(out_channels, out_channels, depthwise, kernel_size, causal) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsampler is not None:
            x = self.upsampler(x)
        for resnet in self.resnets:
            x = resnet(x)
        return x

    def stream(self) -> Stream:
        parts = [m.stream() for m in (self.conv_in, self.upsampler) if m is not None]
        return Chain(parts + [r.stream() for r in self.resnets])


class Upsampler2d(nn.Module):
    """Per-frame RMSNorm -> SiLU -> 3x3 conv (C -> C) -> 2D pixel shuffle x2: (B, C, T, H, W) ->
    (B, C/4, T, 2H, 2W). Used after the 3D blocks for 32x spatial teachers (LTX, DC-AE)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 4:
            raise ValueError(f"Upsampler2d needs channels divisible by 4, got {channels}")
        self.norm = RMSNorm()
        self.act = nn.SiLU(inplace=True)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = self.act(self.norm(x)).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = F.pixel_shuffle(self.conv(x), 2)
        return x.reshape(b, t, c // 4, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)
