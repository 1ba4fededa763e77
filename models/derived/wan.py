"""The Wan 2.1 VAE decoder (diffusers ``AutoencoderKLWan``, ``is_residual=False``) as a derivable graph.

Layout, on video (B, C, T, H, W); every 3D conv is causal (k - 1 zero frames in front):
  post_quant_conv (1x1x1) -> conv_in (z -> 384) -> mid: resnet, per-frame attention, resnet
  -> up0..up3: (num_res_blocks + 1) resnets each, then (up0..up2) a resampler: up0 and up1 double time
     (causal 3x1x1 conv to 2C, interleaved into time; the first frame passes alone) and every resampler
     doubles space (nearest, then a 2D 3x3 conv C -> C/2)
  -> RMS norm, SiLU, conv_out (-> RGB).  T latent frames give 1 + 4 (T - 1) frames.
Resnet: RMS norm, SiLU, conv1 (C_in -> C_out), RMS norm, SiLU, conv2, plus the input (1x1x1 conv when
C_in != C_out). RMS norm: F.normalize over channels * sqrt(C) * gamma.

Channel groups: residual streams ``mid`` (conv_in through up0), ``up1.in`` (up0's resampler output, read by
up1's first resnet), ``up1``, ``up2``, ``up3`` (named after the stage whose resnets they feed); the hidden
channels of every resnet (``{stage}.{i}.inner``); attention's q/k/v (``mid.attn``, width of ``inner.mid``).
Operators replace conv1/conv2 of the resnets of a stage; the shortcut, resampler, conv_in and conv_out stay.

Streaming: ``forward(z, cache=dict)`` decodes a chunk of latent frames after the chunks already passed with
the same dict (each causal conv keeps its last two input frames, each time upsampler whether it saw the
first frame), like diffusers' frame-by-frame ``feat_cache`` decode; the one-pass decode gives the same frames.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..streaming import Frames, Stream
from .channels import tag
from .graph import DecoderGraph
from .operators import Conv3d, make_conv

DEFAULTS = {"base_dim": 96, "decoder_base_dim": None, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True], "is_residual": False,
            "out_channels": 3, "patch_size": None}


def _layout(teacher_config: dict) -> dict:
    cfg = {**DEFAULTS, **{k: v for k, v in teacher_config.items() if k in DEFAULTS}}
    if cfg["is_residual"] or cfg["patch_size"] is not None:
        raise ValueError("only the Wan 2.1 VAE decoder (is_residual=False, no patch_size) can be derived; "
                         "this config is a Wan 2.2 VAE")
    if cfg["attn_scales"]:
        raise ValueError("Wan decoders with attention in the up blocks (attn_scales) are not supported")
    dim = cfg["decoder_base_dim"] or cfg["base_dim"]
    mult = list(cfg["dim_mult"])
    dims = [dim * m for m in [mult[-1]] + mult[::-1]]
    blocks = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if i > 0 else cin
        up = i != len(mult) - 1
        temporal = bool(cfg["temperal_downsample"][::-1][i]) if up else False
        blocks.append({"in": cin, "out": cout, "mode": ("upsample3d" if temporal else "upsample2d") if up else None})
    return {"dims": dims, "blocks": blocks, "z_dim": cfg["z_dim"], "res": cfg["num_res_blocks"] + 1,
            "out_channels": cfg["out_channels"]}


def _streams(layout: dict) -> tuple[list[str], list[str]]:
    """Name of the stream each up block reads and of the one it writes (see module docstring)."""
    ins, outs, current = [], [], "mid"
    for i, b in enumerate(layout["blocks"]):
        ins.append(current)
        current = f"up{i}" if b["in"] != b["out"] else current
        outs.append(current)
        if b["mode"] is not None:  # the resampler halves the channels: a new stream
            nxt = layout["blocks"][i + 1]
            current = f"up{i + 1}" if nxt["in"] == nxt["out"] else f"up{i + 1}.in"
    return ins, outs


class RMSNorm(nn.Module):
    """Wan's RMS norm: F.normalize over channels (dim 1) * sqrt(C) * gamma."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # the norm in float32: fp16 sums of squares overflow
            return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Resnet(nn.Module):
    def __init__(self, graph: DecoderGraph, cin: int, cout: int, inner: int, op: str, inp: str, out: str,
                 name: str):
        super().__init__()
        hidden = graph.width(f"{name}.inner", inner)
        self.norm1 = tag(RMSNorm(cin), channels=inp)
        self.conv1 = tag(make_conv(op, cin, hidden, 3, "causal_zero"), inp=inp, out=f"{name}.inner")
        self.norm2 = tag(RMSNorm(hidden), channels=f"{name}.inner")
        self.conv2 = tag(make_conv(op, hidden, cout, 3, "causal_zero"), inp=f"{name}.inner", out=out)
        self.conv_shortcut = tag(Conv3d(cin, cout, 1, "causal_zero"), inp=inp, out=out) if inp != out else None

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        return self.conv2(F.silu(self.norm2(x)), cache) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of each frame (identity + proj(attn(norm(x))))."""

    def __init__(self, graph: DecoderGraph, channels: int, inner: int, stream: str):
        super().__init__()
        width = graph.width("mid.attn", inner)
        self.norm = tag(RMSNorm(channels, images=True), channels=stream)
        self.to_qkv = tag(nn.Conv2d(channels, 3 * width, 1), inp=stream, out="mid.attn", layout=("blocked", 3))
        self.proj = tag(nn.Conv2d(width, channels, 1), inp="mid.attn", out=stream)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        q, k, v = self.to_qkv(y).reshape(b * t, 1, -1, h * w).transpose(2, 3).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, -1, h, w)
        return self.proj(y).reshape(b, t, c, h, w).transpose(1, 2) + x


class Resample(nn.Module):
    """Wan's upsampler: (``upsample3d``) double time with a causal 3x1x1 conv to 2C interleaved into time, the
    first frame of the clip passing alone; then per frame nearest x2 and a 3x3 conv C -> C_out."""

    def __init__(self, channels: int, cout: int, mode: str, stream: str, out: str):
        super().__init__()
        self.mode = mode
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      tag(nn.Conv2d(channels, cout, 3, padding=1), inp=stream, out=out))
        self.time_conv = (tag(Conv3d(channels, 2 * channels, (3, 1, 1), "causal_zero"), inp=stream, out=stream,
                              layout=("blocked", 2)) if mode == "upsample3d" else None)

    def _double_time(self, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache).reshape(b, 2, c, t, h * w)  # channel r*C + c -> frame 2t + r
        return y.permute(0, 2, 3, 1, 4).reshape(b, c, 2 * t, h, w)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if self.time_conv is not None:
            first_seen = cache is not None and cache.get((self, "first"), False)
            if cache is not None:
                cache[(self, "first")] = True
            head, rest = (x[:, :, :0], x) if first_seen else (x[:, :, :1], x[:, :, 1:])
            parts = [head] + ([self._double_time(rest, cache)] if rest.shape[2] else [])
            x = torch.cat(parts, dim=2)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, -1, 2 * h, 2 * w).transpose(1, 2)


class UpBlock(nn.Module):
    def __init__(self, graph: DecoderGraph, i: int, spec: dict, res: int, inner: int, op: str, inp: str,
                 out: str, next_stream: str | None, widths: dict):
        super().__init__()
        cin, cout = widths[inp], widths[out]
        self.resnets = nn.ModuleList(Resnet(graph, cin if j == 0 else cout, cout, inner, op, inp if j == 0 else out,
                                            out, f"up{i}.{j}") for j in range(res))
        self.upsamplers = None
        if spec["mode"] is not None:
            self.upsamplers = nn.ModuleList([Resample(cout, widths[next_stream], spec["mode"], out, next_stream)])

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.upsamplers is None else self.upsamplers[0](x, cache)


class WanGraph(DecoderGraph):
    family = "wan"
    stages = ("mid", "up0", "up1", "up2", "up3")
    operators = ("dense", "dw3", "dw5", "frame")

    def __init__(self, teacher_config: dict, widths: dict[str, int], inner: dict[str, int], ops: dict[str, str]):
        super().__init__()
        lay = _layout(teacher_config)
        if len(lay["blocks"]) != len(self.stages) - 1:
            raise ValueError(f"expected a Wan decoder with {len(self.stages) - 1} up blocks, got {len(lay['blocks'])}")
        w = {s: self.width(s, widths[s]) for s in widths}
        ins, outs = _streams(lay)
        self.num_time_upsamplers = sum(b["mode"] == "upsample3d" for b in lay["blocks"])
        z = lay["z_dim"]
        self.post_quant_conv = Conv3d(z, z, 1, "causal_zero")
        self.conv_in = tag(Conv3d(z, w["mid"], 3, "causal_zero"), out="mid")
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList(Resnet(self, w["mid"], w["mid"], inner["mid"], ops["mid"], "mid", "mid",
                                                      f"mid.{j}") for j in range(2))
        self.mid_block.attentions = nn.ModuleList([Attention(self, w["mid"], inner["mid"], "mid")])
        blocks, self.stage_output_groups = [], {"mid": "mid"}
        for i, spec in enumerate(lay["blocks"]):
            nxt = ins[i + 1] if i + 1 < len(ins) else None
            blocks.append(UpBlock(self, i, spec, lay["res"], inner[f"up{i}"], ops[f"up{i}"], ins[i], outs[i], nxt, w))
            self.stage_output_groups[f"up{i}"] = nxt if spec["mode"] is not None else outs[i]
        self.up_blocks = nn.ModuleList(blocks)
        last = outs[-1]
        self.norm_out = tag(RMSNorm(w[last]), channels=last)
        self.conv_out = tag(Conv3d(w[last], lay["out_channels"], 3, "causal_zero"), inp=last)

    @classmethod
    def teacher_widths(cls, teacher_config: dict):
        lay = _layout(teacher_config)
        ins, outs = _streams(lay)
        widths = {"mid": lay["dims"][0]}
        for i, b in enumerate(lay["blocks"]):
            widths[ins[i]] = b["in"] if i else widths["mid"]
            widths[outs[i]] = b["out"]
        inner = {"mid": lay["dims"][0], **{f"up{i}": b["out"] for i, b in enumerate(lay["blocks"])}}
        return widths, inner

    @classmethod
    def teacher_state(cls, teacher) -> dict[str, torch.Tensor]:
        vae = teacher.vae
        state = {f"post_quant_conv.{k}": v for k, v in vae.post_quant_conv.state_dict().items()}
        state.update(vae.decoder.state_dict())
        return state

    @property
    def compression(self) -> tuple[int, int, int]:
        return (2 ** self.num_time_upsamplers, 8, 8)

    def num_output_frames(self, latent_frames: int) -> int:
        return 1 + 2 ** self.num_time_upsamplers * (latent_frames - 1)

    def forward(self, z: torch.Tensor, features: Sequence[str] = (), cache: dict | None = None):
        feats = {}
        x = self.conv_in(self.post_quant_conv(z), cache)
        mid = self.mid_block
        x = mid.resnets[1](mid.attentions[0](mid.resnets[0](x, cache)), cache)
        if "mid" in features:
            feats["mid"] = x
        for i, block in enumerate(self.up_blocks):
            x = block(x, cache)
            if f"up{i}" in features:
                feats[f"up{i}"] = x
        return self.conv_out(F.silu(self.norm_out(x)), cache), feats

    def stream(self) -> Stream:
        cache: dict = {}  # causal: each chunk decodes at once, with the per-conv cache of the chunks before
        return Frames(lambda z: self(z, cache=cache)[0])
