"""Training losses of decoder-only distillation (paper Sec. 4, DESIGN.md section 4).

L = L1 + w_lpips * LPIPS(VGG) + w_distill * L_distill + w_adv * lambda_adaptive * L_adv

The KL term of the paper is not here on purpose: the encoder is frozen, so the posterior (and its KL)
is a constant with zero gradient (the reference code's "KL loss" trained nothing).

Videos are (B, 3, T, H, W) in [-1, 1]; features are (B, C, T, H, W).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.blocks import DecoupledPixelShuffle3d
from .lpips import LPIPS


class ReconstructionLoss(nn.Module):
    """Per-pixel L1 plus LPIPS-VGG on ``lpips_frames`` frames per clip drawn at random (all if None).

    LPIPS-VGG over every frame dominates a CPU step, so sampling frames keeps it affordable; the
    expectation over draws is the all-frame LPIPS.
    """

    def __init__(self, lpips_weight: float = 1.0, lpips_frames: int | None = None, net: str = "vgg"):
        super().__init__()
        self.lpips_weight = lpips_weight
        self.lpips_frames = lpips_frames
        self.lpips = LPIPS(net) if lpips_weight > 0 else None

    def forward(self, rec: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if rec.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(rec.shape)} and target {tuple(target.shape)} differ")
        out = {"l1": (rec - target).abs().mean()}
        if self.lpips is not None:
            t = rec.shape[2]
            if self.lpips_frames is not None and self.lpips_frames < t:
                idx = torch.randperm(t, device=rec.device)[: self.lpips_frames]
                rec, target = rec[:, :, idx], target[:, :, idx]
            out["lpips"] = self.lpips(rec.float(), target.float()).mean()
        return out


class FeatureProjection(nn.Module):
    """Maps a student feature onto a teacher feature of another width and, possibly, resolution.

    Two stacked 1x1x1 convs (paper Table 7) with a SiLU between them. When the teacher block is at
    a higher resolution by (r_t, r_h, r_w), the second conv predicts C_t * r_t * r_h * r_w channels that
    the decoupled pixel shuffle moves into time and space (dropping r_t - 1 leading frames for causal
    teachers). When the teacher block is at a lower spatial resolution, the student feature is first
    folded space-to-depth.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        cs, ts, hs, ws = student_shape[1:]
        ct, tt, ht, wt = teacher_shape[1:]
        self.down = (hs // ht, ws // wt) if hs > ht else (1, 1)
        if hs > ht and (hs % ht or ws % wt or hs // ht != ws // wt):
            raise ValueError(f"cannot align student feature {student_shape} to teacher {teacher_shape}")
        hs2, ws2 = hs // self.down[0], ws // self.down[1]
        cs2 = cs * self.down[0] * self.down[1]
        r_h, r_w = ht // hs2, wt // ws2
        if tt == ts:
            r_t, self.trim = 1, 0
        elif tt == 2 * ts - 1 or tt == 2 * ts:
            r_t, self.trim = 2, 2 * ts - tt
        else:
            raise ValueError(f"cannot align student feature {student_shape} to teacher {teacher_shape} in time")
        if (hs2 * r_h, ws2 * r_w) != (ht, wt):
            raise ValueError(f"cannot align student feature {student_shape} to teacher {teacher_shape} in space")
        self.up = (r_t, r_h, r_w)
        hidden = ct * r_t * r_h * r_w
        self.proj = nn.Sequential(nn.Conv3d(cs2, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, hidden, 1))
        self.shuffle = DecoupledPixelShuffle3d(self.up)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.down != (1, 1):
            b, c, t, h, w = f.shape
            dh, dw = self.down
            f = f.reshape(b, c, t, h // dh, dh, w // dw, dw).permute(0, 1, 4, 6, 2, 3, 5)
            f = f.reshape(b, c * dh * dw, t, h // dh, w // dw)
        f = self.shuffle(self.proj(f))
        return f[:, :, self.trim:] if self.trim else f


class DistillationLoss(nn.Module):
    """L_distill = sum over aligned (student block, teacher block) pairs of mean |proj(f_s) - f_t| (paper
    Eq. 4; ``kind="mse"`` for the reference code's squared error). Heads are built from feature shapes."""

    def __init__(self, pairs: list[tuple[str, str]], student_shapes: dict, teacher_shapes: dict, kind: str = "l1"):
        super().__init__()
        if kind not in ("l1", "mse"):
            raise ValueError(f"distillation loss must be 'l1' or 'mse', got '{kind}'")
        self.pairs = list(pairs)
        self.kind = kind
        self.heads = nn.ModuleDict({
            f"{s}__{t}": FeatureProjection(student_shapes[s], teacher_shapes[t]) for s, t in self.pairs
        })

    @property
    def student_blocks(self) -> list[str]:
        return sorted({s for s, _ in self.pairs})

    @property
    def teacher_blocks(self) -> list[str]:
        return sorted({t for _, t in self.pairs})

    def forward(self, student_feats: dict, teacher_feats: dict) -> dict[str, torch.Tensor]:
        out = {}
        for s, t in self.pairs:
            pred = self.heads[f"{s}__{t}"](student_feats[s])
            target = teacher_feats[t].to(pred.dtype)
            if pred.shape != target.shape:
                raise RuntimeError(f"projected {s} {tuple(pred.shape)} != teacher {t} {tuple(target.shape)}")
            diff = pred - target
            out[f"distill_{s}"] = diff.abs().mean() if self.kind == "l1" else diff.pow(2).mean()
        return out


class PatchDiscriminator3d(nn.Module):
    """3D PatchGAN: 3x4x4 convs (time x space, strided in space, once in time) with LeakyReLU and GroupNorm,
    one logit per patch. Input: video (B, 3, T, H, W) in [-1, 1], any T >= 1; output (B, 1, T', H', W')."""

    def __init__(self, channels: int = 32, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv3d(3, channels, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, num_layers):
            layers += [nn.Conv3d(c, 2 * c, (3, 4, 4), stride=(2 if i == 1 else 1, 2, 2), padding=1, bias=False),
                       nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv3d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's lambda = ||grad_last(nll)|| / (||grad_last(g_loss)|| + 1e-4), clamped, no gradient."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0, max_weight).detach()
