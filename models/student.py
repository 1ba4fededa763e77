"""The Turbo-VAED student decoder: a drop-in replacement for a teacher VAE's ``decode``.

Layout (paper Sec. 3, DESIGN.md section 2): conv_in -> mid -> up0..up3 -> [2D upsamplers] -> RMSNorm,
SiLU, conv_out. Depthwise-separable 3D convs in the low-resolution blocks (``depthwise_blocks``), the
decoupled 3D pixel shuffle in every upsampler.
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .blocks import SHUFFLES, Conv3d, MidBlock3d, RMSNorm, UpBlock3d, Upsampler2d, rms_silu
from .files import CheckpointMismatchError
from .frames import FrameRule
from .streaming import Chain, Frames, StudentStream

BLOCK_NAMES = ("mid", "up0", "up1", "up2", "up3")


class StrictModelMixin(ModelMixin):
    """``ModelMixin`` whose ``from_pretrained`` is strict (students here, ``models.pipeline_vae.PipelineVAE``)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As ``ModelMixin.from_pretrained``, but any missing, unexpected or mis-shaped tensor, or a config
        setting the class does not take, raises ``CheckpointMismatchError`` naming expected and got, instead
        of a warning."""
        want_info = kwargs.pop("output_loading_info", False)
        config_kwargs = {k: kwargs[k] for k in ("subfolder", "cache_dir", "revision", "local_files_only", "token")
                         if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, **config_kwargs)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted)
        if unknown:  # diffusers would warn and build the default instead, silently another model
            raise CheckpointMismatchError(f"config of {pretrained_model_name_or_path} has settings this {cls.__name__} "
                                          f"does not take: {unknown} (accepted: {sorted(accepted)})")
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError) as e:
            if "size mismatch" in str(e) or "missing" in str(e).lower() or "shape" in str(e).lower():
                raise CheckpointMismatchError(f"checkpoint at {pretrained_model_name_or_path} does not match "
                                              f"its config: {e}") from e
            raise
        problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint at {pretrained_model_name_or_path} does not match the model built from its config: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()))
        return (model, info) if want_info else model


class StudentDecoder(StrictModelMixin, ConfigMixin):
    """What every student decoder of this project offers (``TurboVAED``, ``models.derived.DerivedStudent``):
    ``forward(latents, return_features=())``, ``decode``, the geometry below (from ``compression`` and
    ``num_output_frames``), input checks, and strict ``from_pretrained``."""

    @property
    def compression(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def num_output_frames(self, latent_frames: int) -> int:
        raise NotImplementedError

    def output_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int, int, int]:
        b, _, t, h, w = latent_shape
        _, ch, cw = self.compression
        return (b, self.config.out_channels, self.num_output_frames(t), h * ch, w * cw)

    def latent_shape_for(self, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        """Latent shape that decodes to a video of ``frames`` x ``height`` x ``width``; ValueError if none."""
        ct, ch, cw = self.compression
        if height % ch or width % cw or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {ch} and {cw} for this student "
                             f"(compression {ct}x{ch}x{cw}), got {height}x{width}")
        t = 1
        while self.num_output_frames(t) < frames:
            t += 1
        if self.num_output_frames(t) != frames:
            valid = ", ".join(str(self.num_output_frames(k)) for k in range(1, 6))
            raise ValueError(f"this student cannot produce {frames} frames; valid frame counts are "
                             f"{valid}, ... (temporal compression {ct})")
        return (batch, self.config.latent_channels, t, height // ch, width // cw)

    def check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents.ndim != 5:
            raise ValueError(f"latents must have rank 5 (B, C, T, H, W), got shape {tuple(latents.shape)}")
        if latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected {self.config.latent_channels} latent channels, got {latents.shape[1]} "
                             f"(shape {tuple(latents.shape)})")
        if min(latents.shape[2:]) < 1:
            raise ValueError(f"latents have an empty dimension: shape {tuple(latents.shape)}")

    def stream(self) -> StudentStream:
        """A fresh decode state for one clip (``models.streaming``)."""
        raise NotImplementedError

    @property
    def default_chunk(self) -> int:
        """Latent frames per step of ``decode`` / ``decode_stream``: about 16 output frames."""
        return max(1, 16 // self.compression[0])

    def decode_stream(self, latents: torch.Tensor, chunk: int | None = None):
        """Yield the video (B, 3, n, H, W) a few frames at a time (n <= ``streaming.MAX_FRAMES``) as they are decoded,
        feeding ``chunk`` latent frames per step (default ``default_chunk``); concatenated along T they equal
        ``forward(latents)``, the one-pass decode (to float rounding). Memory: one piece per layer plus a few
        frames per temporal conv, the same for any clip length (write the frames out as they come)."""
        self.check_latents(latents)
        chunk = chunk or self.default_chunk
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 latent frame, got {chunk}")
        state, t = self.stream(), latents.shape[2]
        for start in range(0, t, chunk):
            yield from state.pieces(latents[:, :, start:start + chunk], last=start + chunk >= t)

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B, C, T', H', W') latents -> (B, 3, T, H, W) video in about [-1, 1], decoded as a stream of ``chunk``
        latent frames (``decode_stream``) whose pieces are written straight into the returned video: the one-pass
        result, in the video's memory plus activations bounded in the clip length."""
        out, t = None, 0
        for part in self.decode_stream(latents, chunk):
            if out is None:
                out = part.new_empty(self.output_shape(latents.shape))
            out[:, :, t:t + part.shape[2]] = part
            t += part.shape[2]
        return out


class TurboVAED(StudentDecoder):
    """Student video decoder.

    Input ``latents``: (B, latent_channels, T', H', W'), normalised as the teacher's diffusion model
    sees them. Output: video (B, out_channels, T, H, W) in about [-1, 1] (not clamped, like the
    teachers' ``decode``), with T = r_t*(T'-1)+1 per temporal upsampler when ``trim_first_frames``
    (causal teachers) else r_t*T', and H = H' * spatial compression.

    Config (one entry per block for the lists; blocks are mid, up0, up1, up2, up3):
      block_out_channels: channel width of each block.
      layers_per_block: residual blocks in each block (up blocks add one for a channel change).
      upsample_factors: (r_t, r_h, r_w) for up0..up3; (1, 1, 1) means no upsampling.
      depthwise_blocks: which blocks use depthwise-separable convs (paper: mid and up0).
      depthwise_kernel_size: kernel of those depthwise convs (paper: 5).
      num_upsamplers_2d: 2D pixel-shuffle x2 upsamplers after the 3D blocks (2 for 32x teachers).
      causal: causal temporal padding (first frame replicated in front only).
      trim_first_frames: drop r_t - 1 frames after each temporal upsampling (1 + r_t*k frame videos).
      pixel_shuffle: "decoupled" (paper, rank <= 5) or "classic" (rank-8 3D shuffle, for ablation).
      output_norm: RMSNorm before the final SiLU + conv (as LTX's decoder). An affine-free RMSNorm keeps only
        the direction of each pixel's feature vector, which loses accuracy when there are few output channels
        (the CPU demo's 12; figure in RESULTS.md, "Figures moved here"), so configs/taef2.yaml turns it off;
        with 64+ channels it is harmless.

    Plain PyTorch ops in the caller's memory layout; ``models.cpu_fast.cpu_fast(student)`` swaps in the CPU
    fast paths (oneDNN convolutions, fused norms, reused buffers) with the same state dict and outputs.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (512, 512, 256, 32, 16),
        layers_per_block: Sequence[int] = (5, 4, 4, 4, 5),
        upsample_factors: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        depthwise_blocks: Sequence[bool] = (True, True, False, False, False),
        depthwise_kernel_size: int = 5,
        num_upsamplers_2d: int = 0,
        causal: bool = False,
        trim_first_frames: bool = True,
        pixel_shuffle: str = "decoupled",
        output_norm: bool = True,
    ):
        super().__init__()
        n = len(BLOCK_NAMES)
        for name, value in (("block_out_channels", block_out_channels), ("layers_per_block", layers_per_block),
                            ("depthwise_blocks", depthwise_blocks)):
            if len(value) != n:
                raise ValueError(f"{name} needs {n} entries ({', '.join(BLOCK_NAMES)}), got {len(value)}")
        if len(upsample_factors) != n - 1 or any(len(f) != 3 for f in upsample_factors):
            raise ValueError(f"upsample_factors needs {n - 1} (r_t, r_h, r_w) triples, got {upsample_factors}")
        if pixel_shuffle not in SHUFFLES:
            raise ValueError(f"pixel_shuffle must be one of {sorted(SHUFFLES)}, got '{pixel_shuffle}'")
        ch = list(block_out_channels)
        self.conv_in = Conv3d(latent_channels, ch[0], 3, causal=causal)
        self.mid = MidBlock3d(ch[0], layers_per_block[0], depthwise_blocks[0], depthwise_kernel_size, causal)
        self.up_blocks = nn.ModuleList(
            UpBlock3d(ch[i], ch[i + 1], layers_per_block[i + 1], tuple(upsample_factors[i]), depthwise_blocks[i + 1],
                      depthwise_kernel_size, causal, trim_first_frames, pixel_shuffle)
            for i in range(n - 1)
        )
        c = ch[-1]
        upsamplers_2d = []
        for _ in range(num_upsamplers_2d):
            upsamplers_2d.append(Upsampler2d(c))
            c //= 4
        self.upsamplers_2d = nn.ModuleList(upsamplers_2d)
        self.norm_out = RMSNorm() if output_norm else None
        self.conv_out = Conv3d(c, out_channels, 3, causal=causal)

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def temporal_factors(self) -> list[int]:
        return [f[0] for f in self.config.upsample_factors if f[0] > 1]

    @property
    def compression(self) -> tuple[int, int, int]:
        """(t, h, w) compression factors of the latent space this student decodes."""
        f = self.config.upsample_factors
        s2d = 2 ** self.config.num_upsamplers_2d
        return (math.prod(x[0] for x in f), math.prod(x[1] for x in f) * s2d, math.prod(x[2] for x in f) * s2d)

    def num_output_frames(self, latent_frames: int) -> int:
        t = latent_frames
        for r in self.temporal_factors:  # each temporal upsampler: the video frame rule with factor r
            t = FrameRule(r, self.config.trim_first_frames).frames(t)
        return t

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, return_features: Sequence[str] = ()):
        """Decode ``latents``; with ``return_features`` also return {block name: block output}."""
        self.check_latents(latents)
        unknown = set(return_features) - set(BLOCK_NAMES)
        if unknown:
            raise ValueError(f"unknown feature blocks {sorted(unknown)}; choose from {BLOCK_NAMES}")
        feats = {}
        x = self.mid(self.conv_in(latents))
        if "mid" in return_features:
            feats["mid"] = x
        for name, block in zip(BLOCK_NAMES[1:], self.up_blocks):
            x = block(x)
            if name in return_features:
                feats[name] = x
        for up in self.upsamplers_2d:
            x = up(x)
        video = self.conv_out(rms_silu(self.norm_out, x, self.conv_out.time_pad), padded=True)
        return (video, feats) if return_features else video

    def stream(self) -> StudentStream:
        """A fresh decode state for one clip: every temporal conv keeps its last input frames between chunks
        (``models.streaming``)."""
        stages = [self.conv_in.stream(), self.mid.stream(), *(b.stream() for b in self.up_blocks),
                  *(Frames(up) for up in self.upsamplers_2d), Frames(lambda x: rms_silu(self.norm_out, x)),
                  self.conv_out.stream()]

        def prepare(latents):
            self.check_latents(latents)
            return latents

        return StudentStream(Chain(stages), prepare)

    @property
    def last_layer_weight(self) -> torch.nn.Parameter:
        """The output conv's weight (VQGAN's adaptive GAN weight compares gradients there)."""
        return self.conv_out.conv.weight

    def block_channels(self, name: str) -> int:
        return self.config.block_out_channels[BLOCK_NAMES.index(name)]
