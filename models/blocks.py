"""Building blocks of the Turbo-VAED student decoder.

Tensor layout everywhere: (B, C, T, H, W), float. Every intermediate tensor of the modules used by
the student keeps rank <= 5 (Core ML rejects rank > 5 tensors with dynamic shapes); only
``PixelShuffle3d`` (the classic shuffle, kept for the ablation and the export comparison) does not.

Speed on CPU (measured, see scripts/benchmark.py): the blocks work in either memory format and keep
the one they are given; ``TurboVAED`` runs them in ``channels_last_3d`` on CPU, where oneDNN convolves
without reordering activations, and ``conv`` sends every CPU float32 convolution to oneDNN, in training
its backward pass too (``_OneDnnConv``: about 2x faster CPU training steps for the TAEF2 student).
In a no-grad CPU decode, ``workspace`` reuses the large per-block buffers and each residual block adds its
shortcut inside its last convolution (see ``Workspace``).
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .streaming import Chain, Frames, Residual, Stream, TemporalConv, Trim


def _triple(k: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)


def eager_cpu(x: torch.Tensor) -> bool:
    """True for a plain float32 CPU tensor outside tracing/export/compile (where the fast paths apply)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


class Workspace:
    """Buffers reused across the blocks of one no-grad CPU decode, one per (role, shape).

    A large CPU tensor is freshly mapped memory whose every 4 KiB page faults when first written: about
    0.9M faults (2.8 of 28 CPU-seconds) in a 17 x 256 x 256 CogVideoX-student decode. Inside ``workspace()``
    the pre-activations (``rms_silu``) and the first conv output of each ``ResBlock3d`` reuse these buffers,
    and the second conv of a residual block accumulates into its shortcut tensor (oneDNN's fused sum), so a
    block's output lives in its input's memory. Each buffer is dead before its role asks for it again.
    Shapes change from one student block to the next, so the decode ``clear``s the workspace between blocks
    (peak memory stays that of one block's buffers). Never active with autograd or when block outputs are
    returned.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def empty(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised channels-last 5D buffer (the same one at every call with these arguments)."""
        key = (role, tuple(shape), dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, memory_format=torch.channels_last_3d)
        return buf

    def zeros(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.empty(role, shape, dtype).zero_()

    def clear(self) -> None:
        self._buffers.clear()


_WORKSPACE: contextvars.ContextVar[Workspace | None] = contextvars.ContextVar("turbo_vaed_workspace", default=None)


@contextlib.contextmanager
def workspace(enabled: bool = True):
    """Run the enclosed no-grad CPU decode with a fresh ``Workspace`` (per thread), which it yields;
    ``enabled=False``: none (yields None)."""
    ws = Workspace() if enabled else None
    token = _WORKSPACE.set(ws)
    try:
        yield ws
    finally:
        _WORKSPACE.reset(token)


def current_workspace() -> Workspace | None:
    return _WORKSPACE.get()


_PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def conv(layer: nn.Conv2d | nn.Conv3d, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)``, or ``layer(x) + add_to``; on CPU always through oneDNN, which PyTorch skips for small
    convs (one group, kernel <= 3, batch 1, N*C*T*H <= 20480) in favour of a native kernel several times slower.

    Without autograd the weight is also kept in oneDNN's blocked layout (re-packed when the weight or the
    input shape changes) instead of being reordered on every call, which dominates low-resolution convs;
    there ``add_to`` (a channels-last tensor of the output's shape) is accumulated into in place by the conv
    itself and returned, so it must not be needed afterwards. Elsewhere the sum is a new tensor.
    """
    if not (eager_cpu(x) and layer.padding_mode == "zeros" and torch.backends.mkldnn.is_available()):
        return layer(x) if add_to is None else layer(x) + add_to
    w, geometry = layer.weight, (list(layer.padding), list(layer.stride), list(layer.dilation), layer.groups)
    if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
        if _OneDnnConv.handles(layer):
            out = _OneDnnConv.apply(x, w, layer.bias, list(layer.padding), layer.groups)
        else:
            out = torch.mkldnn_convolution(x, w, layer.bias, *geometry)
        return out if add_to is None else out + add_to
    key = (w.data_ptr(), w._version, tuple(x.shape))
    cached = _PACKED.get(layer)
    if cached is None or cached[0] is not w or cached[1] != key:
        reorder = torch._C._nn.mkldnn_reorder_conv3d_weight if w.ndim == 5 else torch._C._nn.mkldnn_reorder_conv2d_weight
        cached = _PACKED[layer] = (w, key, reorder(w.detach().to_mkldnn(), *geometry, list(x.shape)))
    if add_to is not None:
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        if eager_cpu(add_to) and add_to.is_contiguous(memory_format=fmt) and x.is_contiguous(memory_format=fmt):
            return torch.ops.mkldnn._convolution_pointwise_.binary(add_to, x, cached[2], layer.bias, *geometry,
                                                                   "add", None, None, [], None)
    out = torch.ops.mkldnn._convolution_pointwise(x, cached[2], layer.bias, *geometry, "none", [], "")
    return out if add_to is None else out.add_(add_to)


class _OneDnnConv(torch.autograd.Function):
    """A stride-1 convolution (dense or depthwise) whose backward pass also runs as oneDNN forward
    convolutions. PyTorch's own backward picks its native kernel for the same small convs as the forward
    does, and is slow for depthwise ones even on oneDNN: about 10-20x the forward on one CPU thread.

    Input gradient: the convolution of ``grad`` with the flipped, in/out-swapped kernel (per group).
    Weight gradient: the convolution of the padded input (channels as batch) with ``grad`` as the kernel.
    """

    @staticmethod
    def handles(layer: nn.Conv2d | nn.Conv3d) -> bool:
        return (all(s == 1 for s in layer.stride) and all(d == 1 for d in layer.dilation)
                and (layer.groups == 1 or layer.groups == layer.in_channels == layer.out_channels))

    @staticmethod
    def forward(ctx, x, w, b, padding: list[int], groups: int):
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, b is not None
        ones = [1] * len(padding)
        return torch.mkldnn_convolution(x, w, b, padding, ones, ones, groups)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        padding, groups = ctx.padding, ctx.groups
        ones, spatial = [1] * len(padding), tuple(range(2, w.ndim))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            cout, cin_g = w.shape[:2]
            w_t = (w.reshape(groups, cout // groups, cin_g, *w.shape[2:]).transpose(1, 2)
                   .reshape(groups * cin_g, cout // groups, *w.shape[2:]).flip(spatial))
            back_pad = [k - 1 - p for k, p in zip(w.shape[2:], padding)]
            grad_x = torch.mkldnn_convolution(grad, w_t, None, back_pad, ones, ones, groups)
        if ctx.needs_input_grad[1]:
            pads = [p for q in reversed(padding) for p in (q, q)]
            xp = F.pad(x, pads) if any(padding) else x
            if groups == 1:  # (Cin, N, ...) convolved with (Cout, N, ...) -> (Cin, Cout, k...)
                grad_w = torch.mkldnn_convolution(xp.transpose(0, 1), grad.transpose(0, 1), None, [0] * len(padding),
                                                  ones, ones, 1).transpose(0, 1)
            else:  # depthwise: one group per (sample, channel), summed over the batch
                n, c = x.shape[:2]
                k = torch.mkldnn_convolution(xp.reshape(1, n * c, *xp.shape[2:]),
                                             grad.reshape(n * c, 1, *grad.shape[2:]), None, [0] * len(padding),
                                             ones, ones, n * c)
                grad_w = k.reshape(n, c, 1, *k.shape[2:]).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, *spatial))
        return grad_x, grad_w, grad_b, None, None


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

    def forward(self, x: torch.Tensor, padded: bool = False, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """``padded=True``: ``x`` already holds the temporal padding (see ``rms_silu``); ``add_to``: see ``conv``."""
        return conv(self.conv, x if padded else pad_time(x, *self.time_pad), add_to)

    def stream(self) -> Stream:
        return TemporalConv(lambda x: self(x, padded=True), *self.time_pad)


class DepthwiseSeparableConv3d(nn.Module):
    """Paper Finding 1: depthwise k x k x k conv (one filter per channel), then a 1x1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, causal: bool = False):
        super().__init__()
        self.depthwise = Conv3d(in_channels, in_channels, kernel_size, causal=causal, groups=in_channels)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)
        self.time_pad = self.depthwise.time_pad

    def forward(self, x: torch.Tensor, padded: bool = False, add_to: torch.Tensor | None = None) -> torch.Tensor:
        return conv(self.pointwise, self.depthwise(x, padded), add_to)

    def stream(self) -> Stream:
        return TemporalConv(lambda x: self(x, padded=True), *self.time_pad)


class RMSNorm(nn.Module):
    """RMS normalisation over the channel dimension (dim 1), no affine parameters. Any rank >= 2."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """1 / RMS over channels, shape (B, 1, ...)."""
        if eager_cpu(x):  # one fused reduction (about 3x faster on CPU than pow + mean), then eps + norm^2 / C
            norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            return torch.rsqrt(torch.addcmul(norm.new_tensor(self.eps), norm, norm, value=1 / x.shape[1]))
        if x.dtype in (torch.float16, torch.bfloat16):  # the mean square in float32: x^2 overflows fp16 from |x| = 256
            return torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        return torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)  # plain ops for export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension (dim 1) with affine weight and bias, for 5D tensors.

    Written with reductions over dim 1 instead of ``nn.LayerNorm`` on a permuted tensor, so it exports
    as plain elementwise ops (Core ML has no GroupNorm/LayerNorm for 5D channel-first input). On CPU in
    ``channels_last_3d`` the channels are already the innermost axis, and one fused ``F.layer_norm`` over
    them replaces the six full-size temporaries of those ops (about 4x faster).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if eager_cpu(x) and x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            channels_innermost = x.permute(0, 2, 3, 4, 1)  # a contiguous (B, T, H, W, C) view
            return F.layer_norm(channels_innermost, (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 4, 1, 2, 3)
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):  # statistics in float32 (fp16 squares overflow)
            x = x.float()
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return ((x - mean) * torch.rsqrt(var + self.eps)).to(dtype) * self.weight.view(shape) + self.bias.view(shape)


def rms_silu(norm: RMSNorm | None, x: torch.Tensor, time_pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``pad_time(silu(norm(x)), *time_pad)``: the pre-activation of a conv, with its temporal padding
    (``norm=None``: no normalisation, ``x`` is left untouched).

    On CPU without autograd the normalised frames are written once, straight into the padded buffer (the
    workspace's, if one is active), instead of being copied again by ``pad_time``."""
    if not eager_cpu(x) or (torch.is_grad_enabled() and x.requires_grad) or not any(time_pad):
        return pad_time(F.silu(x) if norm is None else F.silu(norm(x), inplace=True), *time_pad)
    front, back = time_pad
    b, c, t, h, w = x.shape
    shape, ws = (b, c, front + t + back, h, w), current_workspace()
    out = (ws.empty("pre-activation", shape, x.dtype) if ws is not None
           else torch.empty(shape, dtype=x.dtype, memory_format=torch.channels_last_3d))
    frames = out[:, :, front:front + t]
    F.silu(frames.copy_(x) if norm is None else torch.mul(x, norm.scale(x), out=frames), inplace=True)
    out[:, :, :front] = frames[:, :, :1]
    out[:, :, front + t:] = frames[:, :, -1:]
    return out


class ResBlock3d(nn.Module):
    """RMSNorm -> SiLU -> conv -> RMSNorm -> SiLU -> conv, plus a residual.

    ``depthwise=True`` uses ``DepthwiseSeparableConv3d`` with ``kernel_size`` (paper: 5); otherwise dense
    3x3x3 convs. When the channel count changes, the shortcut is LayerNorm + 1x1x1 conv. Inside a
    ``workspace`` the block writes its output into its input's memory.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws = current_workspace()
        h_buf = None if ws is None else ws.zeros("resblock-conv1", (x.shape[0], self.out_channels, *x.shape[2:]), x.dtype)
        h = self.conv1(rms_silu(self.norm1, x, self.conv1.time_pad), padded=True, add_to=h_buf)
        h = rms_silu(self.norm2, h, self.conv2.time_pad)
        skip = x if self.shortcut is None else conv(self.shortcut[1], self.shortcut[0](x))
        if ws is None:
            return self.conv2(h, padded=True).add_(skip)
        return self.conv2(h, padded=True, add_to=skip)

    def stream(self) -> Stream:
        main = Chain([Frames(lambda x: rms_silu(self.norm1, x)), self.conv1.stream(),
                      Frames(lambda x: rms_silu(self.norm2, x)), self.conv2.stream()])
        skip = None if self.shortcut is None else (lambda x: conv(self.shortcut[1], self.shortcut[0](x)))
        return Residual(main, skip)


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
        x = F.pixel_shuffle(conv(self.conv, x), 2)
        return x.reshape(b, t, c // 4, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)
