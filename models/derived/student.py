"""``DerivedStudent``: a student decoder derived from its teacher (Flash-VAED's recipe), next to ``TurboVAED``.

It is the teacher's own decoder graph (``models/derived/{taef2,wan,ltx}.py``) with fewer channels per
group and some convs replaced (``operators.py``), initialised from the teacher by ``pruning.derive``. It
takes the same latents as the project's Turbo-VAED students (normalised as the diffusion model sees them)
and returns what the teacher's ``decode`` returns: video (B, 3, T, H, W) in about [-1, 1], with the
teacher's frame rule (``num_output_frames``) and size. Built from its config alone it has random weights
(for speed benchmarks and exports); ``save_pretrained`` / ``from_pretrained`` (strict) round-trip it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from ..streaming import StudentStream
from ..student import StudentDecoder
from .graph import DecoderGraph
from .ltx import LTXGraph
from .taef2 import TAEF2Graph
from .wan import WanGraph

FAMILIES: dict[str, type[DecoderGraph]] = {"taef2": TAEF2Graph, "wan": WanGraph, "ltx": LTXGraph}


def check_layout(graph_cls: type[DecoderGraph], teacher_config: dict, widths: dict, inner: dict,
                 operators: dict) -> None:
    """Clear errors for a stage or stream this teacher lacks, a missing one, or an unknown operator."""
    streams, stages = (tuple(d) for d in graph_cls.teacher_widths(teacher_config))
    for what, given, known in (("widths", widths, streams), ("inner", inner, stages),
                               ("operators", operators, stages)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"{what}: the {graph_cls.family} decoder has no {'/'.join(unknown)}; "
                             f"its {'streams' if what == 'widths' else 'stages'} are {', '.join(known)}")
        missing = [k for k in known if k not in given]
        if missing:
            raise ValueError(f"{what}: missing {', '.join(missing)} (the {graph_cls.family} decoder needs all of "
                             f"{', '.join(known)})")
    bad = {s: op for s, op in operators.items() if op not in graph_cls.operators}
    if bad:
        raise ValueError(f"operators: unknown operator {bad} for the {graph_cls.family} decoder; "
                         f"choose from {', '.join(graph_cls.operators)}")


class DerivedStudent(StudentDecoder):
    """Teacher-derived student decoder.

    Config:
      family: "taef2", "wan" or "ltx" (the teacher decoder's graph).
      teacher_config: the teacher VAE's diffusers config (empty for TAEF2); fixes the graph's layout.
      widths: channels of every residual stream; inner: hidden channels of the residual blocks per stage;
      operators: conv operator per stage ("dense", "dw3", "dw5", "frame").
      teacher_channels: for each stage, the teacher channels its output kept (set by derivation; used to
        align student and teacher stages during training), or None.
    Buffers ``latent_mean`` / ``latent_scale`` undo the diffusion model's latent normalisation
    (z = latents / scale + mean) as the teacher does; derivation copies them from the teacher.
    """

    @register_to_config
    def __init__(self, family: str = "taef2", teacher_config: dict | None = None, widths: dict | None = None,
                 inner: dict | None = None, operators: dict | None = None, latent_channels: int = 32,
                 out_channels: int = 3, teacher_channels: dict | None = None):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown derived-student family '{family}'; choose from {sorted(FAMILIES)}")
        graph_cls = FAMILIES[family]
        full_w, full_i = graph_cls.teacher_widths(teacher_config or {})
        widths, inner = widths or full_w, inner or full_i
        operators = operators or {s: "dense" for s in graph_cls.stages}
        check_layout(graph_cls, teacher_config or {}, widths, inner, operators)
        self.decoder = graph_cls(teacher_config or {}, dict(widths), dict(inner), dict(operators))
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))

    @property
    def compression(self) -> tuple[int, int, int]:
        return tuple(self.decoder.compression)

    def num_output_frames(self, latent_frames: int) -> int:
        return self.decoder.num_output_frames(latent_frames)

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.decoder.stages

    @property
    def last_layer_weight(self) -> torch.nn.Parameter:
        """The output conv's weight (VQGAN's adaptive GAN weight compares gradients there)."""
        return self.decoder.conv_out.weight

    def forward(self, latents: torch.Tensor, return_features: Sequence[str] = (), cache: dict | None = None):
        """Decode ``latents``; with ``return_features`` also return {stage: stage output}. ``cache``: decode
        one chunk of a longer clip (streaming graphs, see ``decode_stream``)."""
        self.check_latents(latents)
        unknown = set(return_features) - set(self.decoder.stages)
        if unknown:
            raise ValueError(f"unknown feature stages {sorted(unknown)}; choose from {self.decoder.stages}")
        shape = (1, -1, 1, 1, 1)
        z = latents / self.latent_scale.view(shape) + self.latent_mean.view(shape)
        video, feats = self.decoder(z, tuple(return_features), cache)
        return (video, feats) if return_features else video

    def stream(self) -> StudentStream:
        """A fresh decode state for one clip: the graph's ``stream`` (per-conv cache for the causal Wan graph,
        per-layer lookahead for LTX, frame by frame for TAEF2) after undoing the latent normalisation."""
        def prepare(latents):
            self.check_latents(latents)
            shape = (1, -1, 1, 1, 1)
            return latents / self.latent_scale.view(shape) + self.latent_mean.view(shape)

        return StudentStream(self.decoder.stream(), prepare)
