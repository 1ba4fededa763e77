"""The TAEF2 decoder as a derivable graph (see ``models/taef2.py`` for the teacher itself).

Layout, on frames (N, C, H, W) (the video's frames are decoded independently):
  clamp -> conv_in (32 -> mid) -> ReLU -> mid: 3 pooled Blocks (H/8)
  -> up0, up1: [nearest x2, conv (no bias), 3 Blocks]  (H/4, H/2)  -> up2: [nearest x2, conv, 1 Block] (H)
  -> conv_out (-> RGB in [0, 1]).
Block: x += pool(x) (pooled blocks: 1x1 conv to 4 * 64, GroupNorm(4), ReLU, 1x1 conv back);
       x = ReLU(conv(x) + x) with conv = conv1, ReLU, conv2, ReLU, conv3 (3x3 each).

Channel groups: the stream of each stage (``mid``, ``up0``, ``up1``, ``up2``: stage entry conv, every block
output, the next stage's entry conv reads it); the two hidden groups of each block (``{stage}.{i}.c1``,
``.c2``, width ``inner``); the pool branch's hidden channels (``mid.{i}.pool``, kept at 256: its GroupNorm
couples them in groups of 64). Operators (``dense``, ``dw3``, ``dw5``) replace the three convs of each Block;
the stage entry convs, conv_in and conv_out stay dense.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..taef2 import DECODER_STAGES, LATENT_CHANNELS, WIDTH
from ..streaming import Frames, Stream
from .channels import tag
from .graph import DecoderGraph
from .operators import make_conv

BLOCKS = {"mid": 3, "up0": 3, "up1": 3, "up2": 1}
POOL_HIDDEN = 4 * WIDTH


class Block(nn.Module):
    def __init__(self, graph: DecoderGraph, stream: str, name: str, channels: int, inner: int, op: str,
                 pooled: bool):
        super().__init__()
        self.pool = None
        if pooled:
            hidden = graph.width(f"{name}.pool", POOL_HIDDEN)
            self.pool = nn.Sequential(
                tag(nn.Conv2d(channels, hidden, 1, bias=False), inp=stream, out=f"{name}.pool"),
                tag(nn.GroupNorm(4, hidden), channels=f"{name}.pool"), nn.ReLU(),
                tag(nn.Conv2d(hidden, channels, 1, bias=False), inp=f"{name}.pool", out=stream))
        c1, c2 = graph.width(f"{name}.c1", inner), graph.width(f"{name}.c2", inner)
        self.conv = nn.Sequential(
            tag(make_conv(op, channels, c1, 2), inp=stream, out=f"{name}.c1"), nn.ReLU(),
            tag(make_conv(op, c1, c2, 2), inp=f"{name}.c1", out=f"{name}.c2"), nn.ReLU(),
            tag(make_conv(op, c2, channels, 2), inp=f"{name}.c2", out=stream))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class Stage(nn.Module):
    """[nearest x2, entry conv (no bias)] (not for ``mid``), then the Blocks."""

    def __init__(self, graph: DecoderGraph, name: str, cin: int, channels: int, inner: int, op: str,
                 prev_stream: str | None):
        super().__init__()
        self.conv = None
        if prev_stream is not None:
            self.conv = tag(nn.Conv2d(cin, channels, 3, padding=1, bias=False), inp=prev_stream, out=name)
        self.blocks = nn.ModuleList(Block(graph, name, f"{name}.{i}", channels, inner, op, name == "mid")
                                    for i in range(BLOCKS[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        for block in self.blocks:
            x = block(x)
        return x


class TAEF2Graph(DecoderGraph):
    family = "taef2"
    stages = ("mid", "up0", "up1", "up2")
    operators = ("dense", "dw3", "dw5")
    compression = (1, 8, 8)
    stage_output_groups = {s: s for s in stages}

    def __init__(self, teacher_config: dict, widths: dict[str, int], inner: dict[str, int], ops: dict[str, str]):
        super().__init__()
        w = {s: self.width(s, widths[s]) for s in self.stages}
        self.conv_in = tag(nn.Conv2d(LATENT_CHANNELS, w["mid"], 3, padding=1), out="mid")
        prev, cin = None, w["mid"]
        stages = {}
        for s in self.stages:
            stages[s] = Stage(self, s, cin, w[s], inner[s], ops[s], prev)
            prev, cin = s, w[s]
        self.stage = nn.ModuleDict(stages)
        self.conv_out = tag(nn.Conv2d(w["up2"], 3, 3, padding=1), inp="up2")

    @classmethod
    def teacher_widths(cls, teacher_config: dict):
        return {s: WIDTH for s in cls.stages}, {s: WIDTH for s in cls.stages}

    @classmethod
    def teacher_state(cls, teacher) -> dict[str, torch.Tensor]:
        """TAEF2's Sequential indices -> names: 1 conv_in, 3-5 mid blocks, 7/12/17 stage entry convs, ..."""
        names = {1: "conv_in", 19: "conv_out"}
        for stage, last in DECODER_STAGES.items():
            n = BLOCKS[stage]
            for i in range(n):
                names[last - n + 1 + i] = f"stage.{stage}.blocks.{i}"
            if stage != "mid":
                names[last - n] = f"stage.{stage}.conv"
        out = {}
        for key, value in teacher.decoder.state_dict().items():
            index, rest = key.split(".", 1)
            out[f"{names[int(index)]}.{rest}"] = value
        return out

    def num_output_frames(self, latent_frames: int) -> int:
        return latent_frames

    def forward(self, z: torch.Tensor, features: Sequence[str] = (), cache: dict | None = None):
        b, c, t, h, w = z.shape
        frames = lambda x: x.transpose(1, 2).reshape(b * t, x.shape[1], x.shape[3], x.shape[4])  # noqa: E731
        video = lambda x: x.reshape(b, t, x.shape[1], x.shape[2], x.shape[3]).transpose(1, 2)  # noqa: E731
        x = F.relu(self.conv_in(torch.tanh(frames(z) / 3) * 3))
        feats = {}
        for name, stage in self.stage.items():
            x = stage(x)
            if name in features:
                feats[name] = video(x)
        return video(self.conv_out(x)) * 2 - 1, feats  # TAEF2 decodes to [0, 1]

    def stream(self) -> Stream:
        return Frames(lambda z: self(z)[0])  # frame by frame: any chunk is exact
