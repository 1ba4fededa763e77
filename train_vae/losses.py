"""Training losses of decoder-only distillation (paper Sec. 4, DESIGN.md section 4).

L = w_l1 * L1 + w_teacher_l1 * L1(teacher's decode) + w_lpips * LPIPS(VGG) + w_distill * L_distill
    + w_adv * lambda_adaptive * L_adv
with the weights of ``LossSchedule`` at each step: fixed for Turbo-VAED (L1 1, LPIPS 1, distillation 1, the
GAN term from ``disc_start`` on), or the three phases of Flash-VAED's distillation for teacher-derived
students (align stages, then outputs, then perceptual/adversarial), each blending into the next.

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


LOSS_TERMS = ("l1", "teacher_l1", "lpips", "distill", "adv")


class LossSchedule:
    """The weight of every loss term (``LOSS_TERMS``) at each optimizer step.

    ``phases``: a list of {"name", "end" (fraction of ``max_steps`` where the phase ends; the last one 1.0),
    and a weight per term (absent: 0)}. Entering a phase, each weight moves linearly from the previous phase's
    value to its own over ``ramp`` x ``max_steps`` steps, so the loss never jumps.
    ``LossSchedule.fixed`` is the Turbo-VAED recipe: one set of weights, the GAN term switched on at
    ``disc_start``.
    """

    def __init__(self, phases: list[dict], max_steps: int, ramp: float = 0.0):
        if not phases:
            raise ValueError("train.phases is empty")
        ends, prev = [], 0.0
        for p in phases:
            unknown = sorted(set(p) - {"name", "end", *LOSS_TERMS})
            if unknown:
                raise ValueError(f"phase {p.get('name', len(ends))!r}: unknown loss terms {unknown}; "
                                 f"use {', '.join(LOSS_TERMS)}")
            end = float(p.get("end", 1.0))
            if not prev < end <= 1.0:
                raise ValueError(f"phase {p.get('name', len(ends))!r}: end {end} must be after {prev} and at most "
                                 "1.0 (fractions of max_steps)")
            ends.append(end)
            prev = end
        if ends[-1] != 1.0:
            raise ValueError(f"the last phase must end at 1.0 (max_steps), not {ends[-1]}")
        if not 0 <= ramp < 1:
            raise ValueError(f"phase_ramp {ramp} must be a fraction of max_steps in [0, 1)")
        self.names = [str(p.get("name", i)) for i, p in enumerate(phases)]
        self.weights = [{t: float(p.get(t, 0.0)) for t in LOSS_TERMS} for p in phases]
        self.starts = [0] + [round(e * max_steps) for e in ends[:-1]]
        bounds = self.starts + [max_steps]
        for name, a, b in zip(self.names, bounds, bounds[1:]):
            if b <= a:
                raise ValueError(f"phase {name!r} gets no step of max_steps={max_steps}; raise max_steps or move "
                                 "the phase ends apart")
        self.ramp = ramp * max_steps

    @classmethod
    def fixed(cls, max_steps: int, lpips: float, distill: float, adv: float, disc_start: int) -> "LossSchedule":
        base = {"l1": 1.0, "lpips": lpips, "distill": distill}
        phases = [{"name": "reconstruction", "end": 1.0, **base}]
        if adv > 0 and 0 <= disc_start < max_steps:
            end = disc_start / max_steps
            phases = ([{"name": "reconstruction", "end": end, **base}] if end > 0 else []) + \
                [{"name": "adversarial", "end": 1.0, **base, "adv": adv}]
        return cls(phases, max_steps)

    def phase(self, step: int) -> int:
        return max(i for i, s in enumerate(self.starts) if step >= s)

    def __call__(self, step: int) -> dict[str, float]:
        i = self.phase(step)
        w = self.weights[i]
        if i == 0 or self.ramp <= 0:
            return dict(w)
        f = min(1.0, (step - self.starts[i] + 1) / self.ramp)   # the phase's first step already moves
        return {t: self.weights[i - 1][t] + f * (w[t] - self.weights[i - 1][t]) for t in LOSS_TERMS}

    def uses(self, term: str) -> bool:
        return any(w[term] > 0 for w in self.weights)


class ReconstructionLoss(nn.Module):
    """The pixel-space part of the loss and its weights: per-pixel L1 against the video, L1 against the teacher's
    decode (``teacher_l1``) and LPIPS-VGG on ``lpips_frames`` frames of the batch drawn at random (all if None).

    ``lpips``: build the LPIPS network (a run whose LPIPS weight is 0 throughout never loads it). The weights of
    each step come from ``LossSchedule`` and are applied here only: ``forward`` returns every term it computed
    and ``nll``, their weighted sum; a term of weight 0 is not computed (except L1, which is logged always).
    LPIPS-VGG over every frame dominates a CPU step, so sampling frames keeps it affordable; the expectation
    over draws is the all-frame LPIPS.
    """

    def __init__(self, lpips: bool = True, lpips_frames: int | None = None, net: str = "vgg"):
        super().__init__()
        self.lpips_frames = lpips_frames
        self.lpips = LPIPS(net) if lpips else None

    def forward(self, rec: torch.Tensor, target: torch.Tensor, weights: dict[str, float] | None = None,
                teacher_rec: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``rec``, ``target``, ``teacher_rec``: (B, 3, T, H, W) in [-1, 1]. ``weights``: {"l1", "lpips",
        "teacher_l1"} (None: L1 1 and LPIPS 1 when built)."""
        if rec.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(rec.shape)} and target {tuple(target.shape)} differ")
        w = {"l1": 1.0, "lpips": 1.0 if self.lpips is not None else 0.0, "teacher_l1": 0.0, **(weights or {})}
        if w["lpips"] > 0 and self.lpips is None:
            raise ValueError("an LPIPS weight > 0 for a ReconstructionLoss built without LPIPS (lpips=False)")
        out = {"l1": (rec - target).abs().mean()}
        if teacher_rec is not None and w["teacher_l1"]:
            out["teacher_l1"] = (rec - teacher_rec).abs().mean()
        if w["lpips"] > 0:
            frames = lambda v: v.transpose(1, 2).reshape(-1, *v.shape[1:2], *v.shape[3:])  # noqa: E731 (B*T, 3, H, W)
            a, b = frames(rec), frames(target)
            if self.lpips_frames is not None and self.lpips_frames < len(a):
                idx = torch.randperm(len(a), device=a.device)[: self.lpips_frames]
                a, b = a[idx], b[idx]
            out["lpips"] = self.lpips(a.float(), b.float()).mean()
        out["nll"] = sum((w[k] * v for k, v in out.items() if w[k]), rec.new_zeros((), dtype=torch.float32))
        return out


PROJECTION_HEADS = ("two_layer", "linear")


class FeatureProjection(nn.Module):
    """Maps a student feature onto a teacher feature of another width and, possibly, resolution.

    ``head="two_layer"``: two stacked 1x1x1 convs with a SiLU between them (the paper's choice, Table 7);
    ``head="linear"``: one 1x1x1 conv (Table 7's other row). When the teacher block is at
    a higher resolution by (r_t, r_h, r_w), the second conv predicts C_t * r_t * r_h * r_w channels that
    the decoupled pixel shuffle moves into time and space (dropping r_t - 1 leading frames for first-frame-alone
    teachers). When the teacher block is at a lower spatial resolution, the student feature is first
    folded space-to-depth.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], head: str = "two_layer"):
        super().__init__()
        if head not in PROJECTION_HEADS:
            raise ValueError(f"projection head must be one of {', '.join(PROJECTION_HEADS)}, got '{head}'")
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
        self.proj = (nn.Conv3d(cs2, hidden, 1) if head == "linear" else
                     nn.Sequential(nn.Conv3d(cs2, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, hidden, 1)))
        self.shuffle = DecoupledPixelShuffle3d(self.up)

    def align(self, f_student: torch.Tensor, f_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(f_student), f_teacher

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.down != (1, 1):
            b, c, t, h, w = f.shape
            dh, dw = self.down
            f = f.reshape(b, c, t, h // dh, dh, w // dw, dw).permute(0, 1, 4, 6, 2, 3, 5)
            f = f.reshape(b, c * dh * dw, t, h // dh, w // dw)
        f = self.shuffle(self.proj(f))
        return f[:, :, self.trim:] if self.trim else f


class ChannelSelection(nn.Module):
    """The "head" of a teacher-derived student's stage: its output holds a subset of the teacher's channels
    of the same stage (``DerivedStudent.config.teacher_channels``), so it is compared with those channels
    directly. No parameters."""

    def __init__(self, teacher_channels: list[int]):
        super().__init__()
        self.register_buffer("index", torch.tensor(teacher_channels, dtype=torch.long), persistent=False)

    def align(self, f_student: torch.Tensor, f_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return f_student, f_teacher.index_select(1, self.index)


class DistillationLoss(nn.Module):
    """L_distill = sum over aligned (student block, teacher block) pairs of mean |proj(f_s) - f_t| (paper
    Eq. 4; ``kind="mse"`` for the reference code's squared error). Heads are built from feature shapes
    (``FeatureProjection``), or, for a stage whose ``teacher_channels`` are given (teacher-derived students,
    same stage on both sides), select those teacher channels (``ChannelSelection``)."""

    def __init__(self, pairs: list[tuple[str, str]], student_shapes: dict, teacher_shapes: dict, kind: str = "l1",
                 teacher_channels: dict[str, list[int]] | None = None, head: str = "two_layer"):
        super().__init__()
        if kind not in ("l1", "mse"):
            raise ValueError(f"distillation loss must be 'l1' or 'mse', got '{kind}'")
        self.pairs = list(pairs)
        self.kind = kind
        chosen = teacher_channels or {}
        self.heads = nn.ModuleDict({
            f"{s}__{t}": ChannelSelection(chosen[s]) if s == t and s in chosen
            else FeatureProjection(student_shapes[s], teacher_shapes[t], head) for s, t in self.pairs
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
            pred, target = self.heads[f"{s}__{t}"].align(student_feats[s], teacher_feats[t])
            target = target.to(pred.dtype)
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
