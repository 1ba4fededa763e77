"""Coupled channel groups of a decoder graph, declared where its layers are built.

A *channel group* is a set of channel positions that must be pruned together: a residual stream (every
layer writing into it and reading from it, with its norms), the hidden channels of one residual block, the
channels an upsampler moves into time or space. Family graphs (``models/derived/taef2.py``, ``wan.py``,
``ltx.py``) tag each layer with the groups of its input and output channels (``tag``); pruning then needs
no tracing: ``param_dims`` lists, for every parameter, which dimension belongs to which group.

``layout`` describes an output dimension that holds R copies of a group (C * R channels):
  ``("interleaved", R)``: channel c*R + r  (LTX's upsampler conv before its pixel shuffle),
  ``("blocked", R)``:     channel r*C + c  (Wan's time upsampler (R=2), the q/k/v of attention (R=3)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .operators import Conv3d, DepthwiseSeparable, FrameConv

CONV_TYPES = (nn.Conv2d, nn.Conv3d, Conv3d, FrameConv)


def tag(module: nn.Module, inp: str | None = None, out: str | None = None, layout: tuple | None = None,
        channels: str | None = None) -> nn.Module:
    """Record the channel groups of a layer: ``inp``/``out`` for convs (``layout`` of the output, see module
    docstring), ``channels`` for per-channel layers (norms). Returns the module."""
    module.channel_tags = {"inp": inp, "out": out, "layout": layout, "channels": channels}
    return module


def expand(keep: torch.Tensor, channels: int, layout: tuple | None) -> torch.Tensor:
    """Indices along a dimension of ``channels * R`` positions that belong to the kept channels ``keep``."""
    if layout is None:
        return keep
    kind, r = layout
    if kind == "interleaved":
        return (keep[:, None] * r + torch.arange(r)).reshape(-1)
    if kind == "blocked":
        return (torch.arange(r)[:, None] * channels + keep[None, :]).reshape(-1)
    raise ValueError(f"unknown channel layout {layout}")


@dataclass(frozen=True)
class Dim:
    """Dimension ``dim`` of a parameter belongs to channel group ``group`` (with ``layout``)."""
    dim: int
    group: str
    layout: tuple | None = None


def param_dims(graph: nn.Module) -> dict[str, list[Dim]]:
    """{parameter name: its grouped dimensions} for every tagged layer of ``graph``."""
    out: dict[str, list[Dim]] = {}
    for name, m in graph.named_modules():
        tags = getattr(m, "channel_tags", None)
        if tags is None:
            continue
        prefix = f"{name}." if name else ""
        if tags["channels"] is not None:  # a norm: every parameter is per channel
            for pname, _ in m.named_parameters(recurse=False):
                out[prefix + pname] = [Dim(0, tags["channels"])]
            continue
        inp, o, layout = tags["inp"], tags["out"], tags["layout"]
        if isinstance(m, DepthwiseSeparable):
            if inp:
                out[prefix + "depthwise.weight"] = [Dim(0, inp)]
            dims = ([Dim(0, o, layout)] if o else []) + ([Dim(1, inp)] if inp else [])
            out[prefix + "pointwise.weight"] = dims
            if m.pointwise.bias is not None and o:
                out[prefix + "pointwise.bias"] = [Dim(0, o, layout)]
        elif isinstance(m, CONV_TYPES):
            out[prefix + "weight"] = ([Dim(0, o, layout)] if o else []) + ([Dim(1, inp)] if inp else [])
            if m.bias is not None and o:
                out[prefix + "bias"] = [Dim(0, o, layout)]
        else:
            raise TypeError(f"{name}: cannot tag channels of a {type(m).__name__}")
    return out


def readers(graph: nn.Module) -> dict[str, list[str]]:
    """{group: names of the convs that read it} (the layers a pruned group's compensation folds into)."""
    out: dict[str, list[str]] = {}
    for name, m in graph.named_modules():
        tags = getattr(m, "channel_tags", None)
        if tags and tags["inp"] and isinstance(m, CONV_TYPES + (DepthwiseSeparable,)):
            out.setdefault(tags["inp"], []).append(name)
    return out


def writers(graph: nn.Module) -> dict[str, list[tuple[str, tuple | None]]]:
    """{group: [(conv name, output layout)]} of the convs that write into it."""
    out: dict[str, list] = {}
    for name, m in graph.named_modules():
        tags = getattr(m, "channel_tags", None)
        if tags and tags["out"] and isinstance(m, CONV_TYPES + (DepthwiseSeparable,)):
            out.setdefault(tags["out"], []).append((name, tags["layout"]))
    return out
