"""The frame rule: how many video frames a latent clip stands for.

A video VAE with temporal compression ``ct`` either encodes the first frame alone and every later group of ``ct``
frames into one latent frame (the four diffusers video VAEs: videos of ``1 + ct*k`` frames, T' latent frames
decode to ``1 + ct*(T' - 1)``), or every group of ``ct`` frames alike (``ct*k`` frames, ``ct*T'``; TAEF2, which
works frame by frame, has ``ct = 1``). One home for that arithmetic, used by teachers, students, tiling and the
entry points' checks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameRule:
    """``factor``: temporal compression; ``first_frame_alone``: the first frame has a latent frame of its own."""

    factor: int
    first_frame_alone: bool

    def frames(self, latent_frames: int) -> int:
        """Video frames decoded from ``latent_frames``."""
        if self.first_frame_alone:
            return self.factor * (latent_frames - 1) + 1
        return self.factor * latent_frames

    def latent_frames(self, frames: int) -> int | None:
        """Latent frames of a video of ``frames`` frames; None when no latent clip stands for that many."""
        if not self.fits(frames):
            return None
        return (frames - 1) // self.factor + 1 if self.first_frame_alone else frames // self.factor

    def fits(self, frames: int) -> bool:
        if self.first_frame_alone:
            return frames >= 1 and (frames - 1) % self.factor == 0
        return frames >= self.factor and frames % self.factor == 0

    @property
    def _first_k(self) -> int:
        """Latent frames of the shortest clip worth suggesting: one group of ``factor`` frames (after the first)."""
        return 2 if self.first_frame_alone else 1

    def valid(self, count: int = 4) -> list[int]:
        """The first ``count`` frame counts worth suggesting, for messages."""
        return [self.frames(k) for k in range(self._first_k, self._first_k + count)]

    def nearest(self, frames: int) -> int:
        """The largest of those counts <= ``frames`` (or the smallest of them)."""
        k = (frames - 1) // self.factor + 1 if self.first_frame_alone else frames // self.factor
        return self.frames(max(k, self._first_k))

    def describe(self) -> str:
        """``1 + 4k`` or ``4k``."""
        return f"1 + {self.factor}k" if self.first_frame_alone else f"{self.factor}k"
