"""Convolution operators of teacher-derived students, and how each is initialised from a teacher kernel.

Every conv of a derived decoder is one of four operators, chosen per stage in the config:

  ``dense``  the teacher's own conv (3x3x3 for video teachers, 3x3 for TAEF2), pruned to the kept channels;
  ``dw3`` / ``dw5``  depthwise-separable: a depthwise k x k (x k) conv, one filter per input channel, then a
             1x1(x1) pointwise conv (Flash-VAED's "dominant operator" for low-resolution stages);
  ``frame``  a per-frame 2D 3x3 conv replacing a 3D conv (video teachers only; no temporal context).

Tensor layout: video teachers (B, C, T, H, W); TAEF2 works on frames (N, C, H, W).

Temporal padding (``TimePadding``) is the teacher's: Wan pads ``k - 1`` zero frames in front (causal), LTX
replicates the first and last frames ((k - 1) / 2 each side, non-causal decoder). A causal conv can also
decode as a stream: ``forward(x, cache)`` with a dict ``cache`` prepends the frames this conv saw last
instead of the padding, and stores its own last ``k - 1`` input frames, so decoding a clip chunk by
chunk gives the one-pass result.

Initialisation from a teacher kernel W (C_out, C_in, k...), see ``init_from_dense``:
  * ``dw``: for every input channel c the slice W[:, c] (C_out x taps) is replaced by its best rank-1
    approximation p_c d_c^T (SVD): d_c becomes the depthwise filter of channel c, p_c column c of the
    pointwise conv. A kernel of 5 taps per axis holds the 3-tap teacher filter at its centre.
  * ``frame``: the sum of W over its temporal taps, which is exact for content that is constant in time.
``init_from_dense`` returns the relative Frobenius error of the ``dw`` factorisation; the output error each
replacement adds is measured on calibration latents by ``models.derived.pruning`` (reported in RESULTS.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..streaming import Frames, Stream, TemporalConv

OPERATORS = ("dense", "dw3", "dw5", "frame")


class TimePadding:
    """How a video teacher pads its convs in time. ``mode``: "causal_zero" (Wan), "causal_replicate",
    "replicate" (non-causal, both ends), or "none" (per-frame or 1-tap kernels)."""

    MODES = ("causal_zero", "causal_replicate", "replicate", "none")

    def __init__(self, mode: str, taps: int):
        if mode not in self.MODES:
            raise ValueError(f"unknown temporal padding '{mode}'; choose from {self.MODES}")
        self.mode = "none" if taps == 1 else mode
        self.taps = taps

    @property
    def causal(self) -> bool:
        return self.mode.startswith("causal")

    @property
    def sides(self) -> tuple[int, int]:
        """(front, back) frames of padding."""
        k = self.taps - 1
        return (0, 0) if self.mode == "none" else (k, 0) if self.causal else (k // 2, k // 2)

    def stream(self, valid_conv) -> Stream:
        """``valid_conv`` (a conv on input padded in time like this) as a ``models.streaming`` stage."""
        if self.mode == "none":
            return Frames(valid_conv)
        return TemporalConv(valid_conv, *self.sides, zeros=self.mode == "causal_zero")

    def __call__(self, x: torch.Tensor, cache: dict | None = None, key=None) -> torch.Tensor:
        k = self.taps - 1
        if self.mode == "none":
            return x
        if cache is not None:
            if not self.causal:
                raise ValueError("a non-causal conv cannot decode as a causal stream")
            prev = cache.get(key)
            if prev is None:
                prev = (torch.zeros_like(x[:, :, :1]) if self.mode == "causal_zero" else x[:, :, :1]).expand(
                    -1, -1, k, -1, -1)
            padded = torch.cat([prev, x], dim=2)
            cache[key] = padded[:, :, -k:].detach()
            return padded
        if self.mode == "causal_zero":
            return F.pad(x, (0, 0, 0, 0, k, 0))
        if self.mode == "causal_replicate":
            return torch.cat([x[:, :, :1]] * k + [x], dim=2)
        return torch.cat([x[:, :, :1]] * (k // 2) + [x] + [x[:, :, -1:]] * (k // 2), dim=2)


class Conv3d(nn.Module):
    """A dense 3D conv (stride 1) with the teacher's temporal padding and zero spatial padding ("same" size).
    Parameters ``weight`` (C_out, C_in, kt, kh, kw) and ``bias``, named like the teacher's."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple = 3, time_padding: str = "causal_zero",
                 bias: bool = True):
        super().__init__()
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.weight = nn.Parameter(torch.empty(cout, cin, *k))
        self.bias = nn.Parameter(torch.empty(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.time_pad = TimePadding(time_padding, k[0])
        self.padding = (0, k[1] // 2, k[2] // 2)

    def valid_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The conv of ``x`` already padded in time."""
        return F.conv3d(x, self.weight, self.bias, padding=self.padding)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.valid_conv(self.time_pad(x, cache, self))

    def stream(self) -> Stream:
        return self.time_pad.stream(self.valid_conv)


class FrameConv(nn.Module):
    """``frame``: a 2D conv applied to every frame of (B, C, T, H, W); weight (C_out, C_in, k, k)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.padding = (kernel // 2, kernel // 2)

    def frame_conv(self, frames: torch.Tensor) -> torch.Tensor:
        """The 2D conv of frames (N, C, H, W)."""
        return F.conv2d(frames, self.weight, self.bias, padding=self.padding)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.frame_conv(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, -1, h, w).transpose(1, 2)

    def stream(self) -> Stream:
        return Frames(self)


class DepthwiseSeparable(nn.Module):
    """``dw3`` / ``dw5``: ``depthwise`` (one k-tap filter per channel, the teacher's temporal padding for 3D)
    then ``pointwise`` (1x1 or 1x1x1 conv, C_in -> C_out, with the bias). ``dims`` 2 (TAEF2) or 3."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, dims: int = 3, time_padding: str = "causal_zero",
                 bias: bool = True):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.dims = dims
        self.depthwise = conv(cin, cin, kernel, padding=0 if dims == 3 else kernel // 2, groups=cin, bias=False)
        if dims == 3:
            self.depthwise.padding = (0, kernel // 2, kernel // 2)  # time is padded by ``time_pad``
        self.pointwise = conv(cin, cout, 1, bias=bias)
        self.time_pad = TimePadding(time_padding if dims == 3 else "none", kernel)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if self.dims == 3:
            x = self.time_pad(x, cache, self)
        return self.pointwise(self.depthwise(x))

    def stream(self) -> Stream:
        return self.time_pad.stream(lambda x: self.pointwise(self.depthwise(x)))


def make_conv(op: str, cin: int, cout: int, dims: int, time_padding: str = "causal_zero", bias: bool = True):
    """The operator ``op`` as a module; ``dims`` 2 for TAEF2 (dense = ``nn.Conv2d``), 3 for video teachers."""
    if op not in OPERATORS:
        raise ValueError(f"unknown operator '{op}'; choose from {OPERATORS}")
    if op == "dense":
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias) if dims == 2 else Conv3d(cin, cout, 3, time_padding, bias)
    if op == "frame":
        if dims == 2:
            raise ValueError("operator 'frame' replaces a 3D conv; this teacher's convs are already 2D")
        return FrameConv(cin, cout, 3, bias)
    return DepthwiseSeparable(cin, cout, int(op[2:]), dims, time_padding, bias)


# ---- initialisation from the teacher's (pruned) dense kernel --------------------------------------------
def _centre(w: torch.Tensor, taps: int) -> torch.Tensor:
    """Embed a kernel with fewer taps per axis at the centre of ``taps`` taps (zeros around)."""
    pad = []
    for k in reversed(w.shape[2:]):
        extra = (taps - k) // 2
        pad += [extra, extra]
    return F.pad(w, pad)


@torch.no_grad()
def init_from_dense(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
    """Set ``module`` (any operator) from a dense teacher kernel ``weight`` (C_out, C_in, k...) and ``bias``.
    Returns the relative Frobenius error of a ``dw`` factorisation, 0 for ``dense``, None for ``frame``."""
    if isinstance(module, DepthwiseSeparable):
        taps = module.depthwise.kernel_size[0]
        w = _centre(weight, taps) if weight.shape[2] < taps else weight
        cout, cin = w.shape[:2]
        m = w.transpose(0, 1).reshape(cin, cout, -1).double()  # per input channel: C_out x taps
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        root = s[:, :1].sqrt()
        p, d = u[:, :, 0] * root, vh[:, 0, :] * root  # (C_in, C_out), (C_in, taps)
        module.depthwise.weight.copy_(d.reshape(module.depthwise.weight.shape))
        module.pointwise.weight.copy_(p.T.reshape(module.pointwise.weight.shape))
        err = (m - p[:, :, None] * d[:, None, :]).norm() / m.norm().clamp_min(1e-12)
        target = module.pointwise
    elif isinstance(module, FrameConv):
        module.weight.copy_(weight.sum(dim=2))  # exact on static content; motion is what it gives up
        err = None
        target = module
    else:
        module.weight.copy_(weight)
        err = torch.zeros(())
        target = module
    if bias is not None:
        target.bias.copy_(bias)
    return None if err is None else float(err)
