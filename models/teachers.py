"""Frozen teacher VAEs behind one interface.

Every teacher offers, on videos (B, 3, T, H, W) in [-1, 1] and latents (B, C, T', H', W'):
  encode(video) -> latents, normalised as the diffusion model sees them (posterior mode);
  decode(latents) -> video in about [-1, 1];
  features(latents, blocks) -> {block: tensor}, outputs of the named decoder blocks ("mid", "up0",
    ...), running the decoder only as far as the deepest requested block; "video" names the decoded
    video itself (what ``decode`` returns), from the same pass.

Diffusers teachers are the unmodified diffusers classes. Their features come from forward hooks;
a forward pre-hook on the module after the deepest requested block shrinks its input to 1x1 pixels,
so the rest of the decoder costs next to nothing, while chunked decoders (CogVideoX: latent frames
3, then 2 at a time with a conv cache; Wan: one latent frame at a time with a feature cache) keep
their chunking and caches intact. A hook fires once per chunk; chunks are concatenated along time.
HunyuanVideo's framewise temporal tiling and all spatial tiling are switched off while features
are taken, so hooks see one pass.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Sequence

import torch
import torch.nn as nn

from .frames import FrameRule
from .taef2 import DECODER_STAGES, LATENT_CHANNELS, load_taef2

DIFFUSERS_CLASSES = ("AutoencoderKLLTXVideo", "AutoencoderKLHunyuanVideo", "AutoencoderKLCogVideoX",
                     "AutoencoderKLWan")
BLOCKS = ("mid", "up0", "up1", "up2", "up3")


class TeacherLoadError(OSError):
    """A teacher's weights could not be loaded (offline hub id, wrong path, ...)."""


class Teacher(nn.Module):
    """Common interface. Subclasses set ``latent_channels``, ``compression`` (t, h, w), ``first_frame_alone``
    (True when videos have 1 + t*k frames, see ``frame_rule``) and implement the three methods."""

    latent_channels: int
    compression: tuple[int, int, int]
    first_frame_alone: bool
    block_names: tuple[str, ...]

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    def check_blocks(self, blocks: Sequence[str]) -> None:
        unknown = [b for b in blocks if b not in self.block_names + ("video",)]
        if unknown or not blocks:
            raise ValueError(f"unknown or no teacher blocks {list(blocks)}; choose from {self.block_names + ('video',)}")

    def check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"teacher expects latents (B, {self.latent_channels}, T, H, W), got {tuple(z.shape)}")

    def check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"teacher expects video (B, 3, T, H, W) in [-1, 1], got {tuple(video.shape)}")
        _, ch, cw = self.compression
        t = video.shape[2]
        if not self.frame_rule.fits(t) or video.shape[3] % ch or video.shape[4] % cw:
            need = self.frame_rule.describe()
            raise ValueError(f"video of {t} frames at {video.shape[3]}x{video.shape[4]} does not fit this teacher: "
                             f"frames must be {need}, height and width multiples of {ch} and {cw}")

    @property
    def frame_rule(self) -> FrameRule:
        return FrameRule(self.compression[0], self.first_frame_alone)

    def decoder_parameters(self) -> int:
        raise NotImplementedError


# ---- diffusers teachers ---------------------------------------------------------------------------
class DiffusersTeacher(Teacher):
    """Wraps an unmodified diffusers video VAE. ``normalization`` (see configs/*.yaml):
    {"type": "scaling_factor"}: z' = z * scaling_factor;
    {"type": "mean_std", "stats": "buffers" | "config"}: z' = (z - mean) * scaling_factor / std,
    with mean/std from the VAE's ``latents_mean``/``latents_std`` buffers (LTX) or config lists (Wan).
    """

    def __init__(self, vae: nn.Module, normalization: dict, decode_timestep: float | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.kind = type(vae).__name__
        self.latent_channels = cfg.get("latent_channels", cfg.get("z_dim"))
        self.compression = _compression(vae)
        self.first_frame_alone = True  # all four diffusers video VAEs decode 1 + t*k frames
        self.block_names = ("mid",) + tuple(f"up{i}" for i in range(len(vae.decoder.up_blocks)))
        self.decode_timestep = decode_timestep
        mean, scale = latent_normalization(vae, normalization)
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_scale", scale, persistent=False)

    def _module(self, name: str) -> nn.Module:
        dec = self.vae.decoder
        return dec.mid_block if name == "mid" else dec.up_blocks[int(name[2:])]

    def _decode_kwargs(self, z: torch.Tensor) -> dict:
        if self.decode_timestep is None or not self.vae.config.get("timestep_conditioning", False):
            return {}
        return {"temb": torch.full((z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype)}

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        z = self.vae.encode(video).latent_dist.mode()
        return (z - self.latent_mean) * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        z = latents / self.latent_scale + self.latent_mean
        return self.vae.decode(z, return_dict=False, **self._decode_kwargs(z))[0]

    @contextlib.contextmanager
    def _single_pass(self):
        """Switch off temporal (framewise) and spatial tiling while taking features."""
        saved = {k: getattr(self.vae, k) for k in ("use_framewise_decoding", "use_tiling") if hasattr(self.vae, k)}
        for k in saved:
            setattr(self.vae, k, False)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(self.vae, k, v)

    @torch.no_grad()
    def features(self, latents: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        self.check_latents(latents)
        self.check_blocks(blocks)
        layers = [b for b in blocks if b != "video"]
        chunks: dict[str, list[torch.Tensor]] = {b: [] for b in layers}
        handles = []
        for b in layers:
            def keep(module, args, output, b=b):
                chunks[b].append((output[0] if isinstance(output, tuple) else output).detach())
            handles.append(self._module(b).register_forward_hook(keep))
        deepest = len(self.block_names) if "video" in blocks else max(self.block_names.index(b) for b in layers)
        if deepest + 1 < len(self.block_names):  # shrink what follows the deepest block to 1x1 pixels
            def shrink(module, args):
                return (args[0][..., :1, :1].contiguous(),) + tuple(args[1:])
            handles.append(self._module(self.block_names[deepest + 1]).register_forward_pre_hook(shrink))
        try:
            with self._single_pass():
                z = latents / self.latent_scale + self.latent_mean
                video = self.vae.decode(z, return_dict=False, **self._decode_kwargs(z))[0]
        finally:
            for h in handles:
                h.remove()
        out = {b: torch.cat(c, dim=2) for b, c in chunks.items()}
        return {**out, "video": video} if "video" in blocks else out

    def decoder_parameters(self) -> int:
        return sum(p.numel() for p in self.vae.decoder.parameters())


def latent_normalization(vae: nn.Module, normalization: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale), float32 of shape (1, C, 1, 1, 1), such that the diffusion model's latents are
    ``(z - mean) * scale`` for the VAE's raw latents ``z``. ``normalization`` as in ``DiffusersTeacher``;
    ``vae`` is the teacher or anything with its ``config`` (and LTX's ``latents_mean``/``latents_std`` buffers)."""
    cfg = vae.config
    c = cfg.get("latent_channels", cfg.get("z_dim"))
    sf = float(cfg.get("scaling_factor", 1.0) or 1.0)
    kind = normalization.get("type")
    if kind == "scaling_factor":
        mean, std = torch.zeros(c), torch.ones(c)
    elif kind == "mean_std" and normalization.get("stats") == "buffers":
        mean, std = vae.latents_mean.detach().float().cpu(), vae.latents_std.detach().float().cpu()
    elif kind == "mean_std" and normalization.get("stats") == "config":
        mean, std = torch.tensor(cfg["latents_mean"], dtype=torch.float32), torch.tensor(cfg["latents_std"],
                                                                                      dtype=torch.float32)
    else:
        raise ValueError(f"unknown latent normalization {normalization}")
    return mean.reshape(1, c, 1, 1, 1).clone(), (sf / std).reshape(1, c, 1, 1, 1)


def _compression(vae: nn.Module) -> tuple[int, int, int]:
    """(t, h, w) compression of a diffusers video VAE, from the fields each class defines."""
    cfg = vae.config
    if "scale_factor_temporal" in cfg:  # Wan
        t, s = cfg.scale_factor_temporal, cfg.scale_factor_spatial
    elif "temporal_compression_ratio" in cfg and not hasattr(vae, "spatial_compression_ratio"):  # CogVideoX
        t, s = int(cfg.temporal_compression_ratio), 2 ** (len(cfg.block_out_channels) - 1)
    else:  # LTX-Video, HunyuanVideo
        t, s = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    return (int(t), int(s), int(s))


def diffusers_class(name: str):
    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"unknown teacher class '{name}'; supported: {DIFFUSERS_CLASSES}")
    import diffusers
    return getattr(diffusers, name)


def load_diffusers_vae(class_name: str, source: str | None, subfolder: str | None = None,
                       init_config: dict | None = None, torch_dtype=torch.float32) -> nn.Module:
    """From a local directory or hub id; with ``source=None``, random weights from the class's default
    config updated by ``init_config`` (for speed benchmarks and tests)."""
    cls = diffusers_class(class_name)
    if source is None:
        return cls(**(init_config or {})).to(torch_dtype)
    kwargs = {"torch_dtype": torch_dtype}
    if subfolder and not os.path.isdir(os.path.join(source, subfolder)) and os.path.isdir(source):
        subfolder = None  # a local folder that is the VAE itself
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise TeacherLoadError(
            f"could not load {class_name} from '{source}'{' (subfolder ' + subfolder + ')' if subfolder else ''}: {e}\n"
            + ("HF_HUB_OFFLINE is set, so hub ids only resolve from the local cache. " if offline else "")
            + "Download the VAE (e.g. `huggingface-cli download <repo> --include 'vae/*'`) and set "
              "teacher.source in the config to that local directory."
        ) from e


# ---- TAEF2 --------------------------------------------------------------------------------------
class TAEF2Teacher(Teacher):
    """TAEF2 applied frame by frame: video (B, 3, T, H, W) in [-1, 1] <-> latents (B, 32, T, H/8, W/8).
    Latents are TAEF2's own (no extra normalisation). Blocks: mid (H/8), up0 (H/4), up1 (H/2), up2 (H)."""

    latent_channels = LATENT_CHANNELS
    compression = (1, 8, 8)
    first_frame_alone = False
    block_names = tuple(DECODER_STAGES)

    def __init__(self, encoder_path=None, decoder_path=None):
        super().__init__()
        self.encoder, self.decoder = load_taef2(encoder_path, decoder_path)

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)

    @staticmethod
    def _video(x: torch.Tensor, b: int) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(b, n // b, c, h, w).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        return self._video(self.encoder(self._frames((video + 1) / 2)), video.shape[0])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        return self._video(self.decoder(self._frames(latents)) * 2 - 1, latents.shape[0])

    @torch.no_grad()
    def features(self, latents: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        self.check_latents(latents)
        self.check_blocks(blocks)
        want = {DECODER_STAGES[b]: b for b in blocks if b != "video"}
        if "video" in blocks:
            want[len(self.decoder) - 1] = "video"
        out, x = {}, self._frames(latents)
        for i, layer in enumerate(self.decoder[: max(want) + 1]):
            x = layer(x)
            if i in want:
                out[want[i]] = self._video(x, latents.shape[0])
        if "video" in out:
            out["video"] = out["video"] * 2 - 1
        return out

    def decoder_parameters(self) -> int:
        return sum(p.numel() for p in self.decoder.parameters())


def build_teacher(teacher_cfg: dict, init_config: dict | None = None, random_init: bool = False) -> Teacher:
    """Teacher from the ``teacher:`` section of a config. ``random_init`` builds diffusers teachers
    from their default config (+ ``init_config``) with random weights instead of loading ``source``."""
    kind = teacher_cfg["class"]
    if kind == "TAEF2":
        return TAEF2Teacher(teacher_cfg.get("encoder_path"), teacher_cfg.get("decoder_path"))
    if kind == "none":
        raise ValueError(f"config has no public teacher ({teacher_cfg.get('note', 'teacher class: none')})")
    vae = load_diffusers_vae(kind, None if random_init else teacher_cfg["source"], teacher_cfg.get("subfolder"),
                             init_config)
    return DiffusersTeacher(vae, teacher_cfg["normalization"], teacher_cfg.get("decode_timestep"))


def weights_sha256(teacher: nn.Module) -> str:
    """sha256 of a teacher's weights (every state-dict entry's name, dtype, shape and bytes, in name order): what
    a latent cache records of the teacher that made it, whatever file or hub revision the weights came from."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
