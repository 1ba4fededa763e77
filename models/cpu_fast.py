"""CPU fast paths, applied to a finished model as a transform: ``cpu_fast(model)``.

The models of this project (``models/blocks.py``, ``models/student.py``, ``models/derived``) are written as
plain PyTorch, readable as the paper and exportable. On a CPU in float32, eager mode, PyTorch leaves speed on
the table; ``cpu_fast`` swaps the class of the modules it knows for a subclass that runs the same computation
faster. Parameters, buffers and the state dict stay exactly those of the plain model (a transformed model saves,
loads and trains like the plain one), and outputs equal the plain model's to float rounding (<= 1e-5 relative,
``tests/test_cpu_fast.py``). It works on any model: Turbo-VAED and teacher-derived students, and teachers
(unmodified diffusers decoders: their ``nn.Conv2d`` / ``nn.Conv3d`` layers, subclasses included).

What it does, each where it applies (a float32 CPU tensor outside tracing, export and compile; anywhere else
every swapped module runs its plain code):
  * every convolution goes through oneDNN (``onednn_conv``), which PyTorch skips for small convs (one group,
    kernel <= 3, batch 1, N*C*T*H <= 20480) in favour of a native kernel several times slower; 5D inputs are
    turned ``channels_last_3d`` (channels innermost), a layout the following ops keep, so oneDNN convolves
    without reordering activations. Without autograd the weight is kept in oneDNN's blocked layout
    (re-packed when the weight or the input's channels or frame size change; not for another frame count or
    batch, which packs the same: a stream's pieces of varying length reuse it); with autograd stride-1 convs
    run their backward pass as oneDNN convolutions too (``_OneDnnConv``);
  * ``RMSNorm``: one fused reduction (``vector_norm``) instead of pow + mean;
  * ``ChannelLayerNorm`` on channels-last input: one ``F.layer_norm`` over the innermost axis instead of six
    full-size temporaries;
  * ``ResBlock3d``: the normalised activations are written straight into the temporally padded conv input,
    and in a no-grad ``TurboVAED`` decode the block's large buffers are reused and its shortcut is added
    inside its last convolution (``Workspace``), so the block's output lives in its input's memory.
    Those speed-ups are measured in RESULTS.md.

Not for export or training checkpoints in another layout: exports trace the plain model (the fast paths step
aside under tracing anyway), and the state dict of a transformed model is the plain one.
"""
from __future__ import annotations

import contextvars
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import blocks
from .derived import operators


def eager_cpu(x: torch.Tensor) -> bool:
    """True for a plain float32 CPU tensor outside tracing/export/compile (where the fast paths apply)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


# ---- buffers of one no-grad decode ----------------------------------------------------------------------
class Workspace:
    """Buffers reused across the blocks of one no-grad CPU decode, one per (role, shape).

    A large CPU tensor is freshly mapped memory whose every 4 KiB page faults when first written. Inside a
    workspace the pre-activations (``rms_silu``) and the first conv output of each ``ResBlock3d`` reuse these
    buffers, and the second conv of a residual block accumulates into its shortcut tensor (oneDNN's fused sum),
    so a block's output lives in its input's memory. Each buffer is dead before its role asks for it again.
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
_WORKSPACE_OWNER: contextvars.ContextVar[object] = contextvars.ContextVar("turbo_vaed_workspace_owner", default=None)


def current_workspace() -> Workspace | None:
    return _WORKSPACE.get()


# ---- convolutions through oneDNN --------------------------------------------------------------------------
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _geometry(layer: nn.Module) -> tuple[list[int], list[int], list[int], int]:
    """(padding, stride, dilation, groups) of a conv module; stride 1, dilation 1, one group where it has none."""
    n = layer.weight.ndim - 2

    def as_list(v) -> list[int]:
        return [v] * n if isinstance(v, int) else list(v)

    return (as_list(layer.padding), as_list(getattr(layer, "stride", 1)), as_list(getattr(layer, "dilation", 1)),
            getattr(layer, "groups", 1))


def onednn_applies(layer: nn.Module, x: torch.Tensor) -> bool:
    return (eager_cpu(x) and getattr(layer, "padding_mode", "zeros") == "zeros" and not isinstance(layer.padding, str)
            and torch.backends.mkldnn.is_available())


def onednn_conv(layer: nn.Module, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of ``layer`` (``weight``, ``bias``, ``padding`` and, if it has them, ``stride``, ``dilation``,
    ``groups``) on ``x``, plus ``add_to`` if given, through oneDNN; call only where ``onednn_applies``.

    Without autograd ``add_to`` (a channels-last tensor of the output's shape) is accumulated into in place by
    the conv itself and returned, so it must not be needed afterwards. Elsewhere the sum is a new tensor."""
    if x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    w, geometry = layer.weight, _geometry(layer)
    if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
        if _OneDnnConv.handles(geometry, w):
            out = _OneDnnConv.apply(x, w, layer.bias, geometry[0], geometry[3])
        else:
            out = torch.mkldnn_convolution(x, w, layer.bias, *geometry)
        return out if add_to is None else out + add_to
    key = (w.data_ptr(), w._version, x.shape[1], *x.shape[-2:])
    cached = _PACKED.get(layer)
    if cached is None or cached[0] is not w or cached[1] != key:
        cached = None  # the stale packing goes before the new one is made: a large weight is never held twice
        _PACKED.pop(layer, None)
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
    does, and is slow for depthwise ones even on oneDNN.

    Input gradient: the convolution of ``grad`` with the flipped, in/out-swapped kernel (per group).
    Weight gradient: the convolution of the padded input (channels as batch) with ``grad`` as the kernel.
    """

    @staticmethod
    def handles(geometry, w: torch.Tensor) -> bool:
        _, stride, dilation, groups = geometry
        cout, cin_g = w.shape[:2]
        return (all(s == 1 for s in stride) and all(d == 1 for d in dilation)
                and (groups == 1 or (groups == cout and cin_g == 1)))

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


class FastConvNd:
    """Mixed into a copy of any ``nn.Conv2d`` / ``nn.Conv3d`` class (diffusers' own subclasses too): its
    ``_conv_forward``, which ``forward`` calls, runs through oneDNN."""

    def _conv_forward(self, input, weight, bias):
        if weight is self.weight and bias is self.bias and onednn_applies(self, input):
            return onednn_conv(self, input)
        return super()._conv_forward(input, weight, bias)


_FAST_CONV_CLASSES: dict[type, type] = {}


def _fast_conv_class(cls: type) -> type:
    if cls not in _FAST_CONV_CLASSES:
        _FAST_CONV_CLASSES[cls] = type(f"Fast{cls.__name__}", (FastConvNd, cls), {"__module__": __name__})
    return _FAST_CONV_CLASSES[cls]


class FastOperatorConv3d(operators.Conv3d):
    def valid_conv(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_conv(self, x) if onednn_applies(self, x) else super().valid_conv(x)


class FastFrameConv(operators.FrameConv):
    def frame_conv(self, frames: torch.Tensor) -> torch.Tensor:
        return onednn_conv(self, frames) if onednn_applies(self, frames) else super().frame_conv(frames)


# ---- norms and the residual block ----------------------------------------------------------------------------
class FastRMSNorm(blocks.RMSNorm):
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        if not eager_cpu(x):
            return super().scale(x)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # one fused reduction, then eps + norm^2 / C
        return torch.rsqrt(torch.addcmul(norm.new_tensor(self.eps), norm, norm, value=1 / x.shape[1]))


class FastChannelLayerNorm(blocks.ChannelLayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (eager_cpu(x) and x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)):
            return super().forward(x)
        channels_innermost = x.permute(0, 2, 3, 4, 1)  # a contiguous (B, T, H, W, C) view
        return F.layer_norm(channels_innermost, (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 4, 1, 2, 3)


def fast_rms_silu(norm: blocks.RMSNorm | None, x: torch.Tensor, time_pad: tuple[int, int]) -> torch.Tensor:
    """``blocks.rms_silu`` with the normalised frames written once, straight into the padded buffer (the
    workspace's, if one is active), instead of being copied again by ``pad_time``."""
    if not eager_cpu(x) or (torch.is_grad_enabled() and x.requires_grad) or not any(time_pad):
        return blocks.rms_silu(norm, x, time_pad)
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


def _padded_conv(conv: blocks.Conv3d | blocks.DepthwiseSeparableConv3d, x: torch.Tensor,
                 add_to: torch.Tensor | None) -> torch.Tensor:
    """``conv(x, padded=True) + add_to``, the sum inside the last oneDNN convolution (see ``onednn_conv``)."""
    last = conv.pointwise if isinstance(conv, blocks.DepthwiseSeparableConv3d) else conv.conv
    if add_to is None or not onednn_applies(last, x):
        out = conv(x, padded=True)
        return out if add_to is None else out + add_to
    if isinstance(conv, blocks.DepthwiseSeparableConv3d):
        x = conv.depthwise(x, padded=True)
    return onednn_conv(last, x, add_to)


class FastResBlock3d(blocks.ResBlock3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws = current_workspace() if eager_cpu(x) else None
        h_buf = None if ws is None else ws.zeros("resblock-conv1", (x.shape[0], self.out_channels, *x.shape[2:]), x.dtype)
        h = _padded_conv(self.conv1, fast_rms_silu(self.norm1, x, self.conv1.time_pad), h_buf)
        h = fast_rms_silu(self.norm2, h, self.conv2.time_pad)
        if ws is None:
            return self.conv2(h, padded=True).add_(self.skip(x))
        return _padded_conv(self.conv2, h, self.skip(x))


# ---- the transform -------------------------------------------------------------------------------------------
_SWAPS = {blocks.RMSNorm: FastRMSNorm, blocks.ChannelLayerNorm: FastChannelLayerNorm,
          blocks.ResBlock3d: FastResBlock3d, operators.Conv3d: FastOperatorConv3d, operators.FrameConv: FastFrameConv}
_FAST = set(_SWAPS.values())


def _open_workspace(model, args, kwargs):
    """Forward pre-hook of a ``TurboVAED``: a no-grad CPU decode that returns no block features reuses its large
    buffers (``Workspace``) until the forward hook ``_close_workspace``."""
    latents = args[0] if args else kwargs.get("latents")
    features = args[1] if len(args) > 1 else kwargs.get("return_features", ())
    if (isinstance(latents, torch.Tensor) and eager_cpu(latents) and not torch.is_grad_enabled() and not features
            and _WORKSPACE.get() is None):
        _WORKSPACE.set(Workspace())
        _WORKSPACE_OWNER.set(model)


def _close_workspace(model, args, kwargs, output):
    if _WORKSPACE_OWNER.get() is model:
        _WORKSPACE.set(None)
        _WORKSPACE_OWNER.set(None)


def _clear_workspace(block, args):
    """Forward pre-hook of a student block: the next block works at other shapes."""
    ws = _WORKSPACE.get()
    if ws is not None:
        ws.clear()


def _contiguous_video(model, args, output):
    """Forward hook: the decoded video comes back in the default layout (block features stay channels-last)."""
    if isinstance(output, tuple):
        return (output[0].contiguous(),) + output[1:]
    return output.contiguous() if isinstance(output, torch.Tensor) else output


def cpu_fast(model: nn.Module) -> nn.Module:
    """``model`` itself, its modules swapped in place for their CPU fast versions (see the module docstring);
    same parameters, buffers and state dict. Applying it twice changes nothing more."""
    from .student import TurboVAED

    for module in model.modules():
        cls = type(module)
        if cls in _SWAPS:
            module.__class__ = _SWAPS[cls]
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and not isinstance(module, FastConvNd):
            module.__class__ = _fast_conv_class(cls)
    if getattr(model, "_cpu_fast_hooks", False):
        return model
    model._cpu_fast_hooks = True
    model.register_forward_hook(_contiguous_video)
    if isinstance(model, TurboVAED):
        model.register_forward_pre_hook(_open_workspace, with_kwargs=True)
        model.register_forward_hook(_close_workspace, with_kwargs=True, always_call=True)
        for block in model.up_blocks:
            block.register_forward_pre_hook(_clear_workspace)
    return model


def fast_on(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``cpu_fast(model)`` when ``device`` is the CPU, else ``model`` unchanged: how the training loop and the
    validation scripts (the decodes a CPU user runs) take a model."""
    return cpu_fast(model) if torch.device(device).type == "cpu" else model


def is_cpu_fast(model: nn.Module) -> bool:
    return any(type(m) in _FAST or isinstance(m, FastConvNd) for m in model.modules())
