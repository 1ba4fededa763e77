"""TAEF2: the tiny FLUX.2-latent image autoencoder of madebyollin/taesd (MIT), written from its
state-dict layout (see ../shared/README.md) so its released ``taef2_{encoder,decoder}.pth`` load with
``strict=True``.

Both networks are ``nn.Sequential`` stacks on images (N, C, H, W). Encoder: RGB in [0, 1] ->
latents (N, 32, H/8, W/8). Decoder: latents -> RGB in about [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .files import load_strict, read_state_dict
from .weights import resolve_weight

LATENT_CHANNELS = 32
WIDTH = 64


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3): tanh(x / 3) * 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block: ReLU(conv(x) + skip(x)), conv = conv, ReLU, conv, ReLU, conv.

    With ``pooled``, a branch (1x1 conv to 4C, GroupNorm(4), ReLU, 1x1 conv back) is first added to x.
    """

    def __init__(self, n_in: int, n_out: int, pooled: bool = False):
        super().__init__()
        self.pool = (nn.Sequential(nn.Conv2d(n_in, 4 * n_in, 1, bias=False), nn.GroupNorm(4, 4 * n_in), nn.ReLU(),
                                   nn.Conv2d(4 * n_in, n_in, 1, bias=False)) if pooled else None)
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taef2_encoder() -> nn.Sequential:
    c = WIDTH
    return nn.Sequential(
        _conv(3, c), Block(c, c),
        _conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
        _conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
        _conv(c, c, stride=2, bias=False), Block(c, c, True), Block(c, c, True), Block(c, c, True),
        _conv(c, LATENT_CHANNELS),
    )


# Decoder stages by Sequential index: the output of each is a feature the student can align to.
DECODER_STAGES = {"mid": 5, "up0": 10, "up1": 15, "up2": 18}


def taef2_decoder() -> nn.Sequential:
    c = WIDTH
    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, c), nn.ReLU(),
        Block(c, c, True), Block(c, c, True), Block(c, c, True),  # 3..5: "mid", H/8
        nn.Upsample(scale_factor=2), _conv(c, c, bias=False), Block(c, c), Block(c, c), Block(c, c),  # ..10: H/4
        nn.Upsample(scale_factor=2), _conv(c, c, bias=False), Block(c, c), Block(c, c), Block(c, c),  # ..15: H/2
        nn.Upsample(scale_factor=2), _conv(c, c, bias=False), Block(c, c),  # ..18: H
        _conv(c, 3),
    )


def load_taef2(encoder_path=None, decoder_path=None) -> tuple[nn.Sequential, nn.Sequential]:
    """Build both networks and load the released fp16 weights (as fp32), strictly."""
    nets = []
    for name, build, path in (("taef2_encoder", taef2_encoder, encoder_path),
                              ("taef2_decoder", taef2_decoder, decoder_path)):
        net = build()
        file = resolve_weight(name, path)
        state = read_state_dict(file)
        load_strict(net, {k: v.float() for k, v in state.items()}, f"{file} is not a {name} state dict")
        nets.append(net.eval().requires_grad_(False))
    return nets[0], nets[1]
