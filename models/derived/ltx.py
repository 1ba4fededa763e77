"""The LTX-Video 0.9.0 VAE decoder (diffusers ``AutoencoderKLLTXVideo``) as a derivable graph.

Layout, on video (B, C, T, H, W); 3D convs pad time by replicating the first and last frame (the 0.9.0
decoder is not causal):
  conv_in (128 -> 512) -> mid: 4 resnets -> up0: 3 resnets (512) -> up1: upsampler, 3 resnets (512)
  -> up2, up3: a resnet changing the width (512 -> 256, 256 -> 128), an upsampler, 3 (up3: 4) resnets
  -> RMS norm, SiLU, conv_out (128 -> 3 x 4 x 4), per-frame pixel shuffle x4 (patch size 4).
Resnet: RMS norm, SiLU, conv1, RMS norm, SiLU, conv2, plus the input (LayerNorm + 1x1x1 conv when the width
changes). Upsampler: 3x3x3 conv C -> 8C, 3D pixel shuffle (2, 2, 2), first frame dropped: T latent frames
give 1 + 8 (T - 1) frames. Every tensor has rank <= 5: the upsampler uses the decoupled shuffle (channels to
time, then a 2D shuffle per frame) and the unpatchify a per-frame 2D shuffle; ``teacher_state`` reorders
the output channels of those convs so the function is the teacher's.

Channel groups: streams ``mid`` (conv_in through up0, into up1's upsampler), ``up1`` (after it), ``up2.in``
(up2's first resnet to its upsampler), ``up2``, ``up3.in``, ``up3``; the hidden channels of every resnet
(``{stage}.{i}.inner``, ``{stage}.in.inner``). Operators replace conv1/conv2 of the resnets of a stage.
Decoders with timestep conditioning, noise injection or residual upsamplers (0.9.1+) are refused.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import ChannelLayerNorm, DecoupledPixelShuffle3d, RMSNorm, classic_to_decoupled_permutation, \
    pixel_shuffle_frames
from ..streaming import Chain, Frames, Residual, Stream, Trim
from .channels import tag
from .graph import DecoderGraph
from .operators import Conv3d, make_conv

DEFAULTS = {"latent_channels": 128, "out_channels": 3, "decoder_block_out_channels": [128, 256, 512, 512],
            "decoder_layers_per_block": [4, 3, 3, 3, 4], "decoder_spatio_temporal_scaling": [True, True, True, False],
            "decoder_inject_noise": [False] * 5, "upsample_residual": [False] * 4, "upsample_factor": [1] * 4,
            "timestep_conditioning": False, "patch_size": 4, "patch_size_t": 1, "resnet_norm_eps": 1e-6,
            "decoder_causal": False}
SHUFFLE = (2, 2, 2)


def _layout(teacher_config: dict) -> dict:
    cfg = {**DEFAULTS, **{k: v for k, v in teacher_config.items() if k in DEFAULTS}}
    if (cfg["timestep_conditioning"] or any(cfg["decoder_inject_noise"]) or any(cfg["upsample_residual"])
            or any(f != 1 for f in cfg["upsample_factor"]) or cfg["patch_size_t"] != 1):
        raise ValueError("only the LTX-Video 0.9.0 decoder can be derived; this VAE config has timestep "
                         "conditioning, noise injection or residual upsamplers (LTX-Video 0.9.1+)")
    chans = list(reversed(cfg["decoder_block_out_channels"]))
    layers = list(reversed(cfg["decoder_layers_per_block"]))
    scaling = list(reversed(cfg["decoder_spatio_temporal_scaling"]))
    blocks, prev = [], chans[0]
    for i, c in enumerate(chans):
        blocks.append({"in": prev, "out": c, "up": bool(scaling[i]), "layers": layers[i + 1]})
        prev = c
    return {"mid": chans[0], "mid_layers": layers[0], "blocks": blocks, "latent": cfg["latent_channels"],
            "out_channels": cfg["out_channels"], "patch": cfg["patch_size"], "eps": cfg["resnet_norm_eps"],
            "time_padding": "causal_replicate" if cfg["decoder_causal"] else "replicate"}


def _streams(layout: dict) -> list[dict]:
    """Per up block: the stream it reads, after its first resnet (``conv_in``) and after its upsampler."""
    out, current = [], "mid"
    for i, b in enumerate(layout["blocks"]):
        s = {"in": current}
        if b["in"] != b["out"]:
            current = f"up{i}.in" if b["up"] else f"up{i}"
        s["conv_in"] = current
        if b["up"]:
            current = f"up{i}"
        s["out"] = current
        out.append(s)
    return out


class Resnet(nn.Module):
    def __init__(self, graph: DecoderGraph, cin: int, cout: int, inner: int, op: str, inp: str, out: str,
                 name: str, time_padding: str, eps: float):
        super().__init__()
        hidden = graph.width(f"{name}.inner", inner)
        self.norm1 = RMSNorm()
        self.conv1 = tag(make_conv(op, cin, hidden, 3, time_padding), inp=inp, out=f"{name}.inner")
        self.norm2 = RMSNorm()
        self.conv2 = tag(make_conv(op, hidden, cout, 3, time_padding), inp=f"{name}.inner", out=out)
        self.norm3 = self.conv_shortcut = None
        if inp != out:
            self.norm3 = tag(ChannelLayerNorm(cin, eps), channels=inp)
            self.conv_shortcut = tag(Conv3d(cin, cout, 1, time_padding), inp=inp, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(self.norm3(x)))

    def stream(self) -> Stream:
        main = Chain([Frames(lambda x: F.silu(self.norm1(x))), self.conv1.stream(),
                      Frames(lambda x: F.silu(self.norm2(x))), self.conv2.stream()])
        return Residual(main, None if self.conv_shortcut is None else (lambda x: self.conv_shortcut(self.norm3(x))))


class Upsampler(nn.Module):
    """3x3x3 conv C -> 8C, (decoupled) 3D pixel shuffle x2x2x2, first frame dropped."""

    def __init__(self, cin: int, cout: int, inp: str, out: str, time_padding: str):
        super().__init__()
        r = SHUFFLE[0] * SHUFFLE[1] * SHUFFLE[2]
        self.conv = tag(Conv3d(cin, cout * r, 3, time_padding), inp=inp, out=out, layout=("interleaved", r))
        self.shuffle = DecoupledPixelShuffle3d(SHUFFLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))[:, :, SHUFFLE[0] - 1:]

    def stream(self) -> Stream:
        return Chain([self.conv.stream(), Frames(self.shuffle), Trim(SHUFFLE[0] - 1)])


class UpBlock(nn.Module):
    def __init__(self, graph: DecoderGraph, i: int, spec: dict, streams: dict, widths: dict, inner: int, op: str,
                 lay: dict):
        super().__init__()
        tp, eps = lay["time_padding"], lay["eps"]
        self.conv_in = None
        if streams["in"] != streams["conv_in"]:
            self.conv_in = Resnet(graph, widths[streams["in"]], widths[streams["conv_in"]], inner, op,
                                  streams["in"], streams["conv_in"], f"up{i}.in", tp, eps)
        self.upsamplers = None
        if spec["up"]:
            self.upsamplers = nn.ModuleList([Upsampler(widths[streams["conv_in"]], widths[streams["out"]],
                                                       streams["conv_in"], streams["out"], tp)])
        c = widths[streams["out"]]
        self.resnets = nn.ModuleList(Resnet(graph, c, c, inner, op, streams["out"], streams["out"], f"up{i}.{j}", tp,
                                            eps) for j in range(spec["layers"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        for resnet in self.resnets:
            x = resnet(x)
        return x

    def stream(self) -> Stream:
        parts = [m.stream() for m in (self.conv_in, self.upsamplers and self.upsamplers[0]) if m is not None]
        return Chain(parts + [r.stream() for r in self.resnets])


class LTXGraph(DecoderGraph):
    family = "ltx"
    stages = ("mid", "up0", "up1", "up2", "up3")
    operators = ("dense", "dw3", "dw5", "frame")

    def __init__(self, teacher_config: dict, widths: dict[str, int], inner: dict[str, int], ops: dict[str, str]):
        super().__init__()
        lay = _layout(teacher_config)
        if len(lay["blocks"]) != len(self.stages) - 1:
            raise ValueError(f"expected an LTX decoder with {len(self.stages) - 1} up blocks, got {len(lay['blocks'])}")
        w = {s: self.width(s, widths[s]) for s in widths}
        tp, eps = lay["time_padding"], lay["eps"]
        self.patch = lay["patch"]
        self.num_time_upsamplers = sum(b["up"] for b in lay["blocks"])
        self.conv_in = tag(Conv3d(lay["latent"], w["mid"], 3, tp), out="mid")
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList(Resnet(self, w["mid"], w["mid"], inner["mid"], ops["mid"], "mid", "mid",
                                                      f"mid.{j}", tp, eps) for j in range(lay["mid_layers"]))
        streams = _streams(lay)
        self.up_blocks = nn.ModuleList(UpBlock(self, i, b, streams[i], w, inner[f"up{i}"], ops[f"up{i}"], lay)
                                       for i, b in enumerate(lay["blocks"]))
        self.stage_output_groups = {"mid": "mid", **{f"up{i}": s["out"] for i, s in enumerate(streams)}}
        last = streams[-1]["out"]
        self.norm_out = RMSNorm()
        self.conv_out = tag(Conv3d(w[last], lay["out_channels"] * self.patch ** 2, 3, tp), inp=last)

    @classmethod
    def teacher_widths(cls, teacher_config: dict):
        lay = _layout(teacher_config)
        widths, inner = {"mid": lay["mid"]}, {"mid": lay["mid"]}
        for i, (b, s) in enumerate(zip(lay["blocks"], _streams(lay))):
            widths[s["conv_in"]] = b["out"] if s["conv_in"] != s["in"] else widths[s["in"]]
            widths[s["out"]] = b["out"]
            inner[f"up{i}"] = b["out"]
        return widths, inner

    @classmethod
    def teacher_state(cls, teacher) -> dict[str, torch.Tensor]:
        """diffusers' names without the causal-conv wrapper level; upsampler rows in decoupled-shuffle order,
        conv_out rows in per-frame pixel-shuffle order (the teacher's unpatchify sends sub-index 1 to width)."""
        out = {}
        for key, value in teacher.vae.decoder.state_dict().items():
            if key.endswith((".conv.weight", ".conv.bias")):
                head, _, tail = key.rpartition(".conv.")
                key = f"{head}.{tail}"
            if ".upsamplers." in key:
                perm = classic_to_decoupled_permutation(value.shape[0] // 8, SHUFFLE)
                value = value[perm]
            if key.startswith("conv_out."):
                c, p = value.shape[0], teacher.vae.decoder.patch_size
                idx = torch.arange(c).reshape(c // p ** 2, p, p).transpose(1, 2).reshape(-1)
                value = value[idx]
            out[key] = value
        return out

    @property
    def compression(self) -> tuple[int, int, int]:
        s = 2 ** self.num_time_upsamplers
        return (s, s * self.patch, s * self.patch)

    def num_output_frames(self, latent_frames: int) -> int:
        return 1 + 2 ** self.num_time_upsamplers * (latent_frames - 1)

    def forward(self, z: torch.Tensor, features: Sequence[str] = (), cache: dict | None = None):
        if cache is not None:
            raise ValueError("the LTX-Video 0.9.0 decoder is not causal: it cannot decode as a stream")
        feats = {}
        x = self.conv_in(z)
        for resnet in self.mid_block.resnets:
            x = resnet(x)
        if "mid" in features:
            feats["mid"] = x
        for i, block in enumerate(self.up_blocks):
            x = block(x)
            if f"up{i}" in features:
                feats[f"up{i}"] = x
        x = self.conv_out(F.silu(self.norm_out(x)))
        return pixel_shuffle_frames(x, self.patch, self.patch), feats

    def stream(self) -> Stream:
        return Chain([self.conv_in.stream(), *(r.stream() for r in self.mid_block.resnets),
                      *(b.stream() for b in self.up_blocks), Frames(lambda x: F.silu(self.norm_out(x))),
                      self.conv_out.stream(), Frames(lambda x: pixel_shuffle_frames(x, self.patch, self.patch))])
