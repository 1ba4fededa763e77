"""LPIPS v0.1 (Zhang et al. 2018), implemented in the project.

Backbones are plain ``nn.Sequential`` ``features`` stacks with torchvision's layer indices, so
torchvision ImageNet state dicts (features-only files or full checkpoints with ``classifier.*``
keys, which are dropped) load with ``strict=True``. Weights are found only through
``models.weights.resolve_weight``.

Inputs are images in [-1, 1] (NOT [0, 1]: map [0, 1] frames with ``x * 2 - 1``). They are never rescaled or clamped here. The module is frozen (no trainable parameters,
always in eval mode) but differentiable with respect to its inputs, so it can be used as a loss.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.files import CheckpointMismatchError, read_state_dict
from models.weights import resolve_weight

__all__ = ["LPIPS", "CheckpointMismatchError", "alexnet_features", "vgg16_features", "load_backbone_state"]


# net name -> (backbone weight name, linear weight name, tap indices, tapped channels)
_NETS = {
    "alex": ("alexnet", "lpips_alex", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", "lpips_vgg", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


def alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` layout (indices 0..12)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(),  # 1  <- tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(),  # 4  <- tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(),  # 7  <- tap
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(),  # 9  <- tap
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(),  # 11 <- tap
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12
    )


def vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` layout (indices 0..30)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


def _check_keys(expected: set[str], got: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{what}: checkpoint does not match the model; missing keys {missing}, unexpected keys {unexpected}"
        )


def load_backbone_state(features: nn.Sequential, state: Mapping[str, torch.Tensor], what: str = "backbone") -> None:
    """Load a torchvision state dict into a ``features`` stack, strictly.

    ``classifier.*`` keys (full torchvision checkpoints) are dropped; every other key must be a
    ``features.*`` key of ``features``, and every one of those must be present.
    """
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    feat = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    other = sorted(k for k in state if not k.startswith("features."))
    expected = set(features.state_dict())
    missing = sorted("features." + k for k in expected - set(feat))
    unexpected = other + sorted("features." + k for k in set(feat) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{what}: checkpoint does not match the torchvision features layout; "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    features.load_state_dict(feat, strict=True)


def _normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # as in the reference: x / (||x||_2 over channels + eps)
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance.

    Args:
        net: ``"alex"`` (the standard metric) or ``"vgg"`` (common as a training loss).
        backbone_path / linear_path: explicit weight files; ``None`` resolves them through
            ``models.weights.resolve_weight`` (``alexnet``/``vgg16`` and ``lpips_alex``/``lpips_vgg``).

    ``forward(x, y)``:
        * x, y of shape (B, 3, H, W) in [-1, 1] -> tensor of shape (B,) (one distance per image).
        * x, y of shape (B, 3, T, H, W) (video) -> time is folded into the batch, the T per-frame
          distances of each video are averaged -> shape (B,).
        Inputs are not rescaled/clamped. Gradients flow to x and y; the parameters are frozen
        (``requires_grad=False``) and the module stays in eval mode even under ``.train()``.
    """

    def __init__(self, net: str = "alex", backbone_path=None, linear_path=None):
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"net must be one of {sorted(_NETS)}, got {net!r}")
        backbone_name, linear_name, taps, channels = _NETS[net]
        self.net_name = net
        self.taps = taps
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

        features = alexnet_features() if net == "alex" else vgg16_features()
        bpath = resolve_weight(backbone_name, backbone_path)
        load_backbone_state(features, read_state_dict(bpath), what=f"{net} backbone ({bpath})")
        # keep only the layers up to the last tap
        self.features = features[: taps[-1] + 1]

        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        lpath = resolve_weight(linear_name, linear_path)
        lin_sd = read_state_dict(lpath)
        _check_keys({f"lin{i}.model.1.weight" for i in range(len(channels))}, set(lin_sd), f"LPIPS heads ({lpath})")
        for i, lin in enumerate(self.lins):
            w = lin_sd[f"lin{i}.model.1.weight"]
            if w.shape != lin.weight.shape:
                raise CheckpointMismatchError(
                    f"LPIPS heads ({lpath}): lin{i}.model.1.weight has shape {tuple(w.shape)}, "
                    f"expected {tuple(lin.weight.shape)}"
                )
            lin.load_state_dict({"weight": w}, strict=True)

        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # frozen metric: always eval
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def _distance_4d(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        feats = self._taps(torch.cat([x, y], dim=0))
        total = 0
        for f, lin in zip(feats, self.lins):
            f = _normalize(f)
            d = (f[:n] - f[n:]) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects (B, 3, H, W) images or (B, 3, T, H, W) videos in [-1, 1], got shape {tuple(x.shape)}"
            )
        if x.ndim == 4:
            return self._distance_4d(x, y)
        b, c, t, h, w = x.shape
        fold = lambda v: v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # noqa: E731
        return self._distance_4d(fold(x), fold(y)).view(b, t).mean(dim=1)
