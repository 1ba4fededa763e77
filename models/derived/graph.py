"""What every teacher-derived decoder graph provides (TAEF2, Wan 2.1, LTX-Video 0.9.0).

A graph is the teacher's own decoder, rebuilt with a width for every channel group and an operator for
every stage. With the teacher's widths and ``dense`` everywhere it *is* the teacher decoder: its state
dict is the teacher decoder's (renamed by ``teacher_state``), and its output equals the teacher's.

Config vocabulary (see ``configs/flash_*.yaml``):
  ``widths``: channels of each residual stream (``streams``: the run of layers between two channel changes);
  ``inner``: hidden channels of every residual block in a stage (``stages``);
  ``operators``: the conv operator of the residual blocks of a stage (``models/derived/operators.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..streaming import Stream


class DecoderGraph(nn.Module):
    """Base class. Subclasses set the class attributes and build their layers in ``__init__``, naming each
    channel group with ``self.width(group, channels)`` and tagging layers (``channels.tag``).

    ``forward(z, features=(), cache=None)``: raw teacher latents (B, C, T', H', W') -> (video in the
    teacher's own output range, {stage: feature}). ``cache`` (a dict) decodes a chunk of a longer clip
    (the causal Wan graph). ``stream()``: the decode as a ``models.streaming`` pipeline (every graph).
    """

    family: str
    stages: tuple[str, ...]         # feature taps, ``inner`` and ``operators`` keys
    operators: tuple[str, ...]      # operators this family's residual convs can take
    stage_output_groups: dict[str, str]  # the channel group of each stage's output

    def __init__(self):
        super().__init__()
        self.group_widths: dict[str, int] = {}

    def width(self, group: str, channels: int) -> int:
        """Register channel group ``group`` with ``channels`` channels; returns ``channels``."""
        if channels < 1:
            raise ValueError(f"channel group '{group}' would have {channels} channels")
        if self.group_widths.setdefault(group, channels) != channels:
            raise ValueError(f"channel group '{group}' built with two widths ({self.group_widths[group]}, {channels})")
        return channels

    # ---- subclass interface ---------------------------------------------------------------------
    @classmethod
    def teacher_widths(cls, teacher_config: dict) -> tuple[dict[str, int], dict[str, int]]:
        """(widths per stream, inner widths per stage) of the teacher itself; their keys are the stream and
        stage names a config may use."""
        raise NotImplementedError

    @classmethod
    def teacher_state(cls, teacher) -> dict[str, torch.Tensor]:
        """The teacher decoder's weights under this graph's parameter names (dense, full width)."""
        raise NotImplementedError

    compression: tuple[int, int, int]

    def num_output_frames(self, latent_frames: int) -> int:
        raise NotImplementedError

    def forward(self, z: torch.Tensor, features: Sequence[str] = (), cache: dict | None = None):
        raise NotImplementedError

    def stream(self) -> Stream:
        """A fresh ``models.streaming`` pipeline decoding raw latents chunk by chunk to the one-pass video."""
        raise NotImplementedError
