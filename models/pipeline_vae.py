"""``PipelineVAE``: a student decoder behind the interface a diffusers pipeline expects of ``pipe.vae``.

    from models.pipeline_vae import PipelineVAE
    pipe.vae = PipelineVAE.from_teacher(pipe.vae, student)     # any student of this project for that teacher
    video = pipe(...).frames                                   # Flux2Pipeline: image = pipe(...).images

One class serves the four diffusers video VAEs (LTX-Video, HunyuanVideo, CogVideoX, Wan 2.1) and FLUX.2's image
VAE (``AutoencoderKLFlux2``, for students of the TAEF2 teacher); ``FAMILIES``.
What the pipelines read from their VAE is there:
  * ``config``: the teacher's config (``scaling_factor``, ``latents_mean``/``latents_std``, ``z_dim``,
    ``block_out_channels``, ``temporal_compression_ratio``, ``scale_factor_spatial``, ``timestep_conditioning``,
    ``batch_norm_eps``, ...) plus this class's own settings; ``spatial_compression_ratio`` /
    ``temporal_compression_ratio``, LTX's ``latents_mean`` / ``latents_std`` buffers and FLUX.2's ``bn``
    (running mean and variance of the patchified latents);
  * ``decode(z, temb=None, return_dict=True)`` on the teacher's raw (un-normalised) latents (B, C, T', H', W'),
    returning ``DecoderOutput(sample=video)``, video (B, 3, T, H, W) in about [-1, 1] (Wan: clamped to
    [-1, 1] as its VAE does). The latents are normalised the way the diffusion model sees them
    (``models.teachers.latent_normalization``; FLUX.2: ``bn`` per channel and position in a 2x2 patch) and
    decoded by the student, in the student's dtype. FLUX.2's latents are images (B, 32, H', W'): decoded as
    one-frame videos, returned as images (B, 3, 8H', 8W') in about [-1, 1];
  * ``encode(video)`` through the teacher's own encoder when it was kept (``with_encoder``);
  * ``enable_tiling`` / ``disable_tiling`` (spatial tiles blended by ``models.tiling``: approximate, for frames
    too large for memory), ``enable_slicing`` / ``disable_slicing`` (one batch element at a time), and
    ``ModelMixin``'s ``to``, ``dtype``, ``device``.
The student decodes a clip as a stream of temporal chunks (``StudentDecoder.decode``), so memory stays
bounded in the clip length with the one-pass result.

FLUX.2 and TAEF2 (an assumption: this project has no FLUX.2 weights, so it is not checked here). TAEF2's
latents are taken to be FLUX.2's latents as its diffusion model sees them: the FLUX.2 VAE's raw latents z
normalised as ``Flux2Pipeline`` feeds its transformer, ``(patchify(z) - bn.running_mean) /
sqrt(bn.running_var + batch_norm_eps)``, unpatchified back to (B, 32, H/8, W/8). That is TAESD's convention
(latents at scale 1, the diffusion model's), TAEF2's author's own diffusers wrapper (madebyollin/taesd issue 35:
an identity ``bn``, so the pipeline hands TAEF2 the normalised latents) and ComfyUI's (TAEF2 decodes FLUX.2's
model latents unchanged). ``decode`` therefore undoes the pipeline's de-normalisation with the FLUX.2 VAE's
own ``bn`` statistics, so the student (of the taef2 / flash_taef2 configs) sees TAEF2's latents.

``save_pretrained`` / ``from_pretrained`` (strict) store the whole thing: config.json holds the teacher's
class and config, the student's class and config; the safetensors file the student's weights, the kept
encoder's and the latent statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers import ConfigMixin
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

from .config import student_classes, teacher_config_dict
from .student import StrictModelMixin, StudentDecoder
from .teachers import _compression, latent_normalization
from .tiling import tiled_decode


@dataclass(frozen=True)
class Family:
    normalization: dict       # how the pipeline normalises latents (``models.teachers.latent_normalization``;
                              # {"type": "batch_norm"}: FLUX.2's ``bn`` over 2x2 patches, ``batch_norm_stats``)
    derived_family: str       # the ``DerivedStudent`` family derived from this teacher
    clamp: bool               # the teacher's decode clamps its output to [-1, 1]
    timestep: bool            # the teacher's decode takes a timestep (``temb``)
    image: bool = False       # an image VAE: latents (B, C, H', W'), decoded as one-frame videos


FAMILIES: dict[str, Family] = {
    "AutoencoderKLLTXVideo": Family({"type": "mean_std", "stats": "buffers"}, "ltx", False, True),
    "AutoencoderKLHunyuanVideo": Family({"type": "scaling_factor"}, "", False, False),
    "AutoencoderKLCogVideoX": Family({"type": "scaling_factor"}, "", False, False),
    "AutoencoderKLWan": Family({"type": "mean_std", "stats": "config"}, "wan", True, False),
    "AutoencoderKLFlux2": Family({"type": "batch_norm"}, "taef2", False, False, image=True),  # TAEF2 students
}


def family_of(vae: nn.Module) -> str:
    """The teacher class name of ``vae`` if a ``PipelineVAE`` can stand in for it; ValueError otherwise."""
    name = type(vae).__name__
    if name not in FAMILIES:
        raise ValueError(f"no pipeline wrapper for a {name}: PipelineVAE stands in for {', '.join(FAMILIES)}")
    if name == "AutoencoderKLWan" and (vae.config.get("is_residual") or vae.config.get("patch_size")):
        raise ValueError("no pipeline wrapper for the Wan 2.2 VAE (is_residual / patch_size): PipelineVAE stands in "
                         "for the Wan 2.1 VAE")
    return name


def vae_class(name: str):
    """The diffusers VAE class ``name`` (a key of ``FAMILIES``)."""
    import diffusers
    return getattr(diffusers, name)


def teacher_compression(teacher_class: str, vae: nn.Module) -> tuple[int, int, int]:
    """(t, h, w) compression of the VAE's latent space; an image VAE's is (1, s, s), s = 2 ** (len(blocks) - 1)."""
    if FAMILIES[teacher_class].image:
        s = 2 ** (len(vae.config.block_out_channels) - 1)
        return (1, s, s)
    return _compression(vae)


def patch_shape(teacher_class: str, teacher_config: dict) -> tuple[int, int]:
    """(ph, pw) of the patches whose positions have their own latent statistics: FLUX.2's ``patch_size``, else 1x1."""
    if FAMILIES[teacher_class].normalization["type"] == "batch_norm":
        ph, pw = teacher_config.get("patch_size", (2, 2))
        return (int(ph), int(pw))
    return (1, 1)


def batch_norm_stats(bn: nn.BatchNorm2d, channels: int, patch: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale), float32 of shape (1, C, 1, ph, pw), from FLUX.2's ``bn`` over patchified latents
    (channel ``c * ph * pw + i * pw + j`` is channel c at row i, column j of a patch, as ``Flux2Pipeline`` patchifies):
    the diffusion model's latents are ``(z - mean) * scale`` at every patch position, scale = 1 / sqrt(var + eps)."""
    shape = (1, channels, 1) + tuple(patch)
    mean = bn.running_mean.detach().float().cpu().reshape(shape).clone()
    scale = (bn.running_var.detach().float().cpu() + bn.eps).rsqrt().reshape(shape)
    return mean, scale


def check_student(teacher_class: str, teacher_config: dict, compression: tuple[int, int, int],
                  student: StudentDecoder) -> None:
    """ValueError naming the mismatch if ``student`` does not decode this teacher's latent space."""
    channels = teacher_config.get("latent_channels", teacher_config.get("z_dim"))
    if student.config.latent_channels != channels or tuple(student.compression) != tuple(compression):
        raise ValueError(
            f"this {type(student).__name__} decodes {student.config.latent_channels}-channel latents with compression "
            f"{tuple(student.compression)}, but the {teacher_class} has {channels} channels and compression "
            f"{tuple(compression)}: a student of another teacher")
    if student.num_output_frames(2) != 1 + compression[0]:
        raise ValueError(f"this student decodes 2 latent frames to {student.num_output_frames(2)} frames, the "
                         f"{teacher_class} to {1 + compression[0]}: a student of another teacher")
    family = getattr(student.config, "family", None)
    if family is not None and family != FAMILIES[teacher_class].derived_family:
        raise ValueError(f"this DerivedStudent was derived from a {family} decoder, not from a {teacher_class}")


def _strip_decoder(vae: nn.Module) -> nn.Module:
    """The teacher VAE without what only decoding uses (decoder, post_quant_conv)."""
    vae.decoder = None
    if getattr(vae, "post_quant_conv", None) is not None:
        vae.post_quant_conv = None
    return vae


class PipelineVAE(StrictModelMixin, ConfigMixin):
    """A student decoder (and optionally the teacher's encoder) standing in for a diffusers VAE.

    Config:
      teacher_class: the teacher's diffusers class name (a key of ``FAMILIES``).
      teacher_config: the teacher's diffusers config; its fields are also this model's ``config`` fields.
      compression: (t, h, w) compression of the teacher's latent space ((1, 8, 8) for FLUX.2's image VAE).
      student_class / student_config: the student decoder ("TurboVAED" or "DerivedStudent") and its config.
      with_encoder: keep the teacher's encoder (``encode``); False for decode-only use.
    Buffers ``latent_mean`` / ``latent_scale`` (1, C, 1, ph, pw; 1x1 patches except FLUX.2's 2x2, tiled over the
    latent frame): the diffusion model's latents are ``(z - latent_mean) * latent_scale``; LTX also keeps its VAE's
    ``latents_mean`` / ``latents_std``, FLUX.2 its ``bn`` (the pipeline de-normalises with it).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, teacher_class: str = "AutoencoderKLLTXVideo", teacher_config: dict | None = None,
                 compression: tuple[int, int, int] = (8, 32, 32), student_class: str = "TurboVAED",
                 student_config: dict | None = None, with_encoder: bool = True):
        super().__init__()
        if teacher_class not in FAMILIES:
            raise ValueError(f"no pipeline wrapper for a {teacher_class}: PipelineVAE stands in for "
                             f"{', '.join(FAMILIES)}")
        classes = student_classes()
        if student_class not in classes:
            raise ValueError(f"unknown student class {student_class!r}; choose from {sorted(classes)}")
        teacher_config = dict(teacher_config or {})
        self.family = FAMILIES[teacher_class]
        self.student = classes[student_class].from_config(student_config or {})
        check_student(teacher_class, teacher_config, tuple(compression), self.student)
        c = self.student.config.latent_channels
        patch = patch_shape(teacher_class, teacher_config)
        if self.family.normalization.get("stats") == "buffers":  # LTX: the pipeline reads vae.latents_mean/std
            self.register_buffer("latents_mean", torch.zeros(c))
            self.register_buffer("latents_std", torch.ones(c))
        if self.family.normalization["type"] == "batch_norm":  # FLUX.2: the pipeline reads vae.bn's running stats
            self.bn = nn.BatchNorm2d(c * patch[0] * patch[1], eps=teacher_config.get("batch_norm_eps", 1e-4),
                                     affine=False)
        self.register_buffer("latent_mean", torch.zeros(1, c, 1, *patch))
        self.register_buffer("latent_scale", torch.ones(1, c, 1, *patch))
        self.encoder_vae = (_strip_decoder(vae_class(teacher_class).from_config(teacher_config))
                            if with_encoder else None)
        self.use_tiling = False
        self.use_slicing = False
        self.tile_sample_min_height = self.tile_sample_min_width = 512
        self.tile_sample_stride_height = self.tile_sample_stride_width = 448

    @classmethod
    def from_teacher(cls, vae: nn.Module, student: StudentDecoder, with_encoder: bool = True) -> "PipelineVAE":
        """Stand-in for the diffusers VAE ``vae`` (e.g. ``pipe.vae``), decoding with ``student`` (weights copied;
        neither argument is changed). ``with_encoder``: keep a copy of the teacher's encoder."""
        teacher_class = family_of(vae)
        if not isinstance(student, StudentDecoder):
            raise TypeError(f"student must be a student decoder of this project, got {type(student).__name__}")
        config = teacher_config_dict(vae.config)
        compression = teacher_compression(teacher_class, vae)
        check_student(teacher_class, config, compression, student)
        student_config = {k: v for k, v in student.config.items() if not k.startswith("_")}
        model = cls(teacher_class=teacher_class, teacher_config=config, compression=list(compression),
                    student_class=type(student).__name__, student_config=student_config, with_encoder=with_encoder)
        model.student.load_state_dict(student.state_dict())
        if model.family.normalization["type"] == "batch_norm":
            model.bn.load_state_dict(vae.bn.state_dict())
            mean, scale = batch_norm_stats(vae.bn, student.config.latent_channels, patch_shape(teacher_class, config))
        else:
            mean, scale = latent_normalization(vae, model.family.normalization)
        model.latent_mean.copy_(mean)
        model.latent_scale.copy_(scale)
        if hasattr(model, "latents_mean"):
            model.latents_mean.copy_(vae.latents_mean)
            model.latents_std.copy_(vae.latents_std)
        if with_encoder:
            state = {k: v for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv."))}
            model.encoder_vae.load_state_dict(state)
        model = model.to(student.device)
        return (model if student.dtype == torch.float32 else model.to(student.dtype)).eval()

    # ---- what pipelines read --------------------------------------------------------------------
    @property
    def config(self) -> FrozenDict:
        """The teacher's config fields, then this model's own (see the class docstring)."""
        own = self._internal_dict
        return FrozenDict({**own["teacher_config"], **own})

    @property
    def temporal_compression_ratio(self) -> int:
        return int(self._internal_dict["compression"][0])

    @property
    def spatial_compression_ratio(self) -> int:
        return int(self._internal_dict["compression"][1])

    # ---- switches ---------------------------------------------------------------------------------
    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_sample_stride_height: int | None = None, tile_sample_stride_width: int | None = None):
        """Decode frames larger than the tile in overlapping spatial tiles (pixels; blended, approximate); the
        kept encoder tiles as its own ``enable_tiling`` does."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_sample_stride_height = tile_sample_stride_height or self.tile_sample_stride_height
        self.tile_sample_stride_width = tile_sample_stride_width or self.tile_sample_stride_width
        if self.encoder_vae is not None:
            self.encoder_vae.enable_tiling()

    def disable_tiling(self):
        self.use_tiling = False
        if self.encoder_vae is not None:
            self.encoder_vae.disable_tiling()

    def enable_slicing(self):
        """Decode (and encode) one batch element at a time."""
        self.use_slicing = True
        if self.encoder_vae is not None:
            self.encoder_vae.enable_slicing()

    def disable_slicing(self):
        self.use_slicing = False
        if self.encoder_vae is not None:
            self.encoder_vae.disable_slicing()

    # ---- encode / decode --------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """The teacher's ``encode``: video (B, 3, T, H, W) (FLUX.2: images (B, 3, H, W)) in [-1, 1] -> its latent
        distribution (raw latents)."""
        if self.encoder_vae is None:
            raise RuntimeError("this PipelineVAE was built with with_encoder=False: it can only decode")
        return self.encoder_vae.encode(x, return_dict=return_dict)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, T', H', W') -> the latents the diffusion model (and the student) sees, in float32."""
        mean, scale = self.latent_mean.float(), self.latent_scale.float()
        ph, pw = mean.shape[-2:]
        if (ph, pw) != (1, 1):  # FLUX.2: statistics per position in a patch, the same in every patch
            tiles = (1, 1, 1, z.shape[-2] // ph, z.shape[-1] // pw)
            mean, scale = mean.repeat(tiles), scale.repeat(tiles)
        return (z.float() - mean) * scale

    def _decode_one(self, latents: torch.Tensor) -> torch.Tensor:
        _, _, _, h, w = latents.shape
        _, ch, cw = self.student.compression
        if not self.use_tiling or (h * ch <= self.tile_sample_min_height and w * cw <= self.tile_sample_min_width):
            return self.student.decode(latents)
        tile = (None, max(1, self.tile_sample_min_height // ch), max(1, self.tile_sample_min_width // cw))
        stride = (max(1, self.tile_sample_stride_height // ch), max(1, self.tile_sample_stride_width // cw))
        overlap = (0, max(0, tile[1] - stride[0]), max(0, tile[2] - stride[1]))
        return tiled_decode(self.student.decode, latents, self.student.compression, tile, overlap,
                            first_frame_alone=self.student.num_output_frames(1) == 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, temb: torch.Tensor | None = None, return_dict: bool = True):
        """Raw latents (B, C, T', H', W') -> ``DecoderOutput(sample=video)`` (or ``(video,)``), video
        (B, 3, T, H, W) in about [-1, 1] in the student's dtype; FLUX.2: latents (B, 32, H', W') -> images
        (B, 3, 8H', 8W'). ``temb``: LTX-Video 0.9.1+ pipelines pass the decode timestep; the student decodes as
        it was distilled (the config's ``decode_timestep``)."""
        if temb is not None and not self.family.timestep:
            raise ValueError(f"the {self.config.teacher_class} decoder takes no timestep (temb)")
        c, image = self.student.config.latent_channels, self.family.image
        if not isinstance(z, torch.Tensor) or z.ndim != (4 if image else 5) or z.shape[1] != c:
            raise ValueError(f"latents must be (B, {c}, {'' if image else 'T, '}H, W) for this "
                             f"{self.config.teacher_class}, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        ph, pw = self.latent_mean.shape[-2:]
        if z.shape[-2] % ph or z.shape[-1] % pw:
            raise ValueError(f"latent height and width must be multiples of {ph} and {pw} (the "
                             f"{self.config.teacher_class} normalises {ph}x{pw} patches), got {tuple(z.shape)}")
        latents = self.normalize(z.unsqueeze(2) if image else z).to(self.student.dtype)
        if self.use_slicing and latents.shape[0] > 1:
            video = torch.cat([self._decode_one(x) for x in latents.split(1)])
        else:
            video = self._decode_one(latents)
        if self.family.clamp:
            video = video.clamp(-1, 1)
        if image:
            video = video.squeeze(2)
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode with the teacher's encoder (posterior mode), decode with the student."""
        z = self.encode(sample).latent_dist.mode()
        return self.decode(z, return_dict=return_dict)
