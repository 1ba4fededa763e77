"""Inflated Inception-V1 (I3D, RGB stream, Kinetics-400) for FVD features.

The network reproduces DeepMind's ``kinetics-i3d`` RGB model (the TF-Hub ``i3d-kinetics-400``
module used by the original FVD) with the parameter names of the piergiaj ``pytorch-i3d`` port, so it
loads ``i3d/i3d_kinetics400_tfhub_piergiaj_layout.pt`` (resolved by ``models.weights``) with
``strict=True``.

Conventions
-----------
* Input: ``(B, 3, T, H, W)`` float RGB in ``[-1, 1]`` (pixel ``p`` in [0, 1] -> ``2p - 1``), normally
  224x224. ``T`` must be at least 9 (the final ``(2, 7, 7)`` VALID average pool needs two time steps).
* Output of :class:`InceptionI3d`: pre-softmax logits ``(B, 400)``, averaged over the time positions
  that remain after the final average pool (as the TF model's ``averaged_logits``); at other spatial
  sizes than 224 the remaining spatial positions are averaged as well.
* Padding is TensorFlow "SAME", computed per input: total ``max((ceil(n/s)-1)*s + k - n, 0)``, the
  smaller half in front. Convolutions pad with zeros (as TF). Max pools pad with ``-inf`` (TF ignores
  padded positions in max pooling); the piergiaj port pads with zeros, which only gives the same result
  because every max pool here follows a ReLU (inputs >= 0). ``-inf`` is correct for any input.
* Batch norm: eps 1e-3, always in inference mode (the network is frozen).

:class:`I3DFeatureExtractor` wraps either this network or the StyleGAN-V TorchScript file
``i3d_torchscript.pt`` and returns float64 features ``(B, 400)`` for videos of any size.
"""
from __future__ import annotations

import math
import os
import warnings
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["InceptionI3d", "Unit3D", "InceptionModule", "load_i3d", "I3DFeatureExtractor", "I3D_NUM_CLASSES"]

I3D_NUM_CLASSES = 400
I3D_INPUT_SIZE = 224
I3D_MIN_FRAMES = 9


def _same_pad(sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """F.pad argument (last dim first) for TensorFlow SAME padding of the trailing dims ``sizes``."""
    pads: list[int] = []
    for n, k, s in zip(sizes, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        front = total // 2
        pads.append((front, total - front))
    out: list[int] = []
    for front, back in reversed(pads):
        out += [front, back]
    return out


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + optional BatchNorm3d(eps=1e-3) + optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=1, stride=1, use_bn: bool = True,
                 use_bias: bool = False, activation: bool = True):
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if use_bn else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = _same_pad(tuple(x.shape[2:]), self.kernel, self.stride)
        if any(pad):
            x = F.pad(x, pad)  # zeros, as TF convolution
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activation:
            x = F.relu(x)
        return x


class MaxPool3dSame(nn.Module):
    """Max pool with TensorFlow SAME padding (padded positions never win: -inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = _same_pad(tuple(x.shape[2:]), self.kernel, self.stride)
        if any(pad):
            x = F.pad(x, pad, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3x3 -> 1x1; concatenated on channels."""

    def __init__(self, in_channels: int, ch: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, ch[0], 1)
        self.b1a = Unit3D(in_channels, ch[1], 1)
        self.b1b = Unit3D(ch[1], ch[2], 3)
        self.b2a = Unit3D(in_channels, ch[3], 1)
        self.b2b = Unit3D(ch[3], ch[4], 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, ch[5], 1)
        self.out_channels = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in_channels, branch channels) of the Inception modules, in order.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D RGB network; ``forward`` maps ``(B,3,T,H,W)`` in [-1,1] to time-averaged logits ``(B,400)``."""

    def __init__(self, num_classes: int = I3D_NUM_CLASSES, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"])
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(1024, num_classes, 1, use_bn=False, use_bias=True, activation=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output ``(B, 1024, T', H', W')``."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W) videos, got shape {tuple(x.shape)}")
        if x.shape[2] < I3D_MIN_FRAMES:
            raise ValueError(f"I3D needs at least {I3D_MIN_FRAMES} frames, got {x.shape[2]}")
        for name in ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                     "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                     "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        kh, kw = min(7, x.shape[3]), min(7, x.shape[4])
        x = F.avg_pool3d(x, (2, kh, kw), stride=1)  # VALID
        x = self.logits(self.dropout(x))  # (B, 400, T'', H'', W'')
        return x.mean(dim=(2, 3, 4))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict`` but ``strict`` defaults to True and mismatches raise a clear
        ``RuntimeError`` naming the missing / unexpected / wrongly shaped keys."""
        if strict:
            own = self.state_dict()
            missing = sorted(set(own) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(own))
            shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
            if missing or unexpected or shapes:
                def _fmt(items):
                    return ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")
                parts = []
                if missing:
                    parts.append(f"{len(missing)} missing key(s): {_fmt(missing)}")
                if unexpected:
                    parts.append(f"{len(unexpected)} unexpected key(s): {_fmt(unexpected)}")
                if shapes:
                    parts.append(f"{len(shapes)} shape mismatch(es): {_fmt(shapes)}")
                raise RuntimeError("I3D state dict does not match InceptionI3d (piergiaj layout): " + "; ".join(parts))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_i3d(path: str | os.PathLike | None = None) -> InceptionI3d:
    """Frozen, eval-mode :class:`InceptionI3d` loaded (strict) from ``path`` or from the registry's
    ``i3d_kinetics400`` file (``models.weights.resolve_weight``)."""
    from models.files import load_strict, read_state_dict
    from models.weights import resolve_weight

    p = resolve_weight("i3d_kinetics400", path)
    model = InceptionI3d()
    load_strict(model, read_state_dict(p), f"{p} is not an InceptionI3d state dict")
    return _freeze(model)


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a TorchScript archive (zip with a ``code/`` folder or ``constants.pkl``);
    plain ``torch.save`` files (zip with ``data.pkl`` only, or legacy pickles) give False."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.startswith("code/") or n.endswith("/constants.pkl") or n == "constants.pkl"
               for n in names)


def load_i3d_labels() -> list[str]:
    """The 400 Kinetics class names in logit order."""
    from models.weights import resolve_weight

    lines = resolve_weight("kinetics400_labels").read_text(encoding="utf-8").splitlines()
    labels = [ln.strip() for ln in lines if ln.strip()]
    if len(labels) != I3D_NUM_CLASSES:
        raise RuntimeError(f"expected {I3D_NUM_CLASSES} Kinetics labels, found {len(labels)}")
    return labels


class I3DFeatureExtractor(nn.Module):
    """Frozen I3D returning float64 FVD features ``(B, 400)``.

    ``weights``: None -> the registry's InceptionI3d state dict; a TorchScript archive (e.g. StyleGAN-V's
    ``i3d_torchscript.pt``) -> ``torch.jit.load`` and called as ``model(v, rescale=False, resize=False,
    return_features=True)``; any other file -> an InceptionI3d state dict (strict).

    ``forward(videos)``: ``(B, 3, T, H, W)`` in ``[-1, 1]`` at any size (T >= 9). Frames are resized to
    224x224 (bilinear, ``align_corners=False``, no antialias) unless already that size, then run in chunks
    of ``batch_size`` videos without gradients. Returns float64 on the input's device.
    """

    def __init__(self, weights: str | os.PathLike | None = None, batch_size: int = 4):
        super().__init__()
        self.batch_size = int(batch_size)
        if weights is not None and is_torchscript_file(weights):
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = _freeze(torch.jit.load(str(weights), map_location="cpu"))
            self.is_torchscript = True
        else:
            self.model = load_i3d(weights)
            self.is_torchscript = False

    def train(self, mode: bool = True):  # always stays in eval mode
        super().train(False)
        return self

    @staticmethod
    def resize(videos: torch.Tensor, size: int = I3D_INPUT_SIZE) -> torch.Tensor:
        b, c, t, h, w = videos.shape
        if (h, w) == (size, size):
            return videos
        frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected videos (B, 3, T, H, W) in [-1, 1], got shape {tuple(videos.shape)}")
        device = videos.device
        param = next(iter(self.model.parameters()), None)
        model_device = param.device if param is not None else device
        out = []
        with torch.no_grad():
            for chunk in videos.split(max(self.batch_size, 1), dim=0):
                x = self.resize(chunk.to(model_device, torch.float32))
                if self.is_torchscript:
                    f = self.model(x, rescale=False, resize=False, return_features=True)
                else:
                    f = self.model(x)
                out.append(f.reshape(f.shape[0], -1).to(torch.float64))
        return torch.cat(out, dim=0).to(device)
