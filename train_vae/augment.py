"""Colour augmentation of training clips, for students that must decode colours their training set lacks.

A student is trained on the teacher's latents of a few hundred clips, then judged on clips unlike them
(saturated colours, greyscale, a warm studio wall). The teacher's decoder handles every colour; a student
only learns the ones its training latents show it. ``ColourJitter`` widens that set: each clip, with
probability ``p``, gets one random colour transform of all its frames, in this order:

* hue rotation: RGB rotated about the grey axis (1, 1, 1) by an angle in [-pi, pi] (greys stay grey);
* saturation: blended with its luminance by a factor uniform in [0, 2] (mean 1: as many clips more
  saturated as less; 0: greyscale, also drawn with probability ``grey``);
* gamma: ``x ** g`` with ``log g`` uniform in [-0.4, 0.4] (darker or brighter mid-tones);
then clamped to the valid range. The teacher encodes the transformed clip (its latents are new, so the
student sees latents of colours no real clip had) and the student learns to decode them like the teacher.

Layout: video (B, 3, T, H, W) in [-1, 1]; each clip of the batch gets its own transform. Random numbers
come from the generator passed in (the trainer's seeded global RNG by default), so a run is reproducible.
"""
from __future__ import annotations

import math

import torch

__all__ = ["LUMA", "ColourJitter", "hue_rotation"]

LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luma weights of R, G, B


def hue_rotation(angle: float) -> torch.Tensor:
    """(3, 3) rotation of RGB vectors about the grey axis by ``angle`` radians (Rodrigues' formula)."""
    k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    rot = math.cos(angle) * torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross \
        + (1 - math.cos(angle)) * torch.outer(k, k)
    return rot.float()


class ColourJitter:
    """Random hue rotation, saturation and gamma per clip (see the module docstring).

    Args:
        p: probability that a clip is transformed at all (0 turns augmentation off).
        grey: probability that a transformed clip is made greyscale (saturation 0).
        max_saturation: saturation factors are uniform in [0, max_saturation].
        max_log_gamma: ``log g`` is uniform in [-max_log_gamma, max_log_gamma].
    """

    def __init__(self, p: float, grey: float = 0.2, max_saturation: float = 2.0, max_log_gamma: float = 0.4):
        for name, v in (("p", p), ("grey", grey)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"colour augmentation {name} must be a probability in [0, 1], got {v}")
        if max_saturation < 0 or max_log_gamma < 0:
            raise ValueError("colour augmentation ranges must be >= 0")
        self.p, self.grey, self.max_saturation, self.max_log_gamma = p, grey, max_saturation, max_log_gamma

    def _one(self, clip: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """clip (3, T, H, W) in [0, 1] -> transformed, in [0, 1]."""
        u = torch.rand(4, generator=gen).tolist()
        rot = hue_rotation((2 * u[0] - 1) * math.pi).to(clip)
        x = torch.einsum("ij,jthw->ithw", rot, clip)
        sat = 0.0 if u[1] < self.grey else u[2] * self.max_saturation
        luma = torch.einsum("j,jthw->thw", torch.tensor(LUMA).to(clip), x)[None]
        x = (luma + sat * (x - luma)).clamp(0, 1)
        gamma = math.exp((2 * u[3] - 1) * self.max_log_gamma)
        return x.clamp_min(1e-6) ** gamma

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video (B, 3, T, H, W) in [-1, 1] -> the same layout and range, some clips transformed."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"colour augmentation needs video (B, 3, T, H, W), got {tuple(video.shape)}")
        if self.p == 0:
            return video
        out = []
        for clip in video:
            if float(torch.rand((), generator=generator)) < self.p:
                clip = self._one((clip.float() + 1) / 2, generator) * 2 - 1
            out.append(clip.to(video.dtype))
        return torch.stack(out)
