"""``PipelineVAE`` inside the real diffusers pipelines (LTX-Video, HunyuanVideo, CogVideoX, Wan 2.1, and FLUX.2 with a
TAEF2 student), built from tiny randomly initialised components; prompt embeddings are passed directly, so no text
encoder is needed.

The diffusers pipeline modules import a few ``transformers`` classes at module level (for type hints and their
loaders' base classes) and diffusers hides them when ``transformers`` is not installed. ``pipeline_class``
imports the unmodified pipeline module with placeholder classes for those names when ``transformers`` is
missing (this project does not need it otherwise); the tests never build a text encoder.
"""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
from diffusers import (AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLFlux2, AutoencoderKLHunyuanVideo,
                       AutoencoderKLLTXVideo, AutoencoderKLWan, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel,
                       FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel, HunyuanVideoTransformer3DModel,
                       LTXVideoTransformer3DModel, WanTransformer3DModel)

from models.config import build_student, load_config, teacher_config_dict
from models.pipeline_vae import PipelineVAE
from models.student import CheckpointMismatchError, TurboVAED

TRANSFORMERS_NAMES = ("T5EncoderModel", "T5TokenizerFast", "T5Tokenizer", "CLIPTextModel", "CLIPTokenizer",
                      "LlamaModel", "LlamaTokenizerFast", "AutoTokenizer", "UMT5EncoderModel", "AutoProcessor",
                      "Mistral3ForConditionalGeneration")
LOADER_MIXINS = {"single_file": ("FromSingleFileMixin",),
                 "lora_pipeline": ("LTXVideoLoraLoaderMixin", "HunyuanVideoLoraLoaderMixin", "CogVideoXLoraLoaderMixin",
                                   "WanLoraLoaderMixin", "Flux2LoraLoaderMixin")}


def pipeline_class(module: str, name: str):
    """The diffusers pipeline class ``name`` from ``module``, importable without ``transformers`` (see above)."""
    try:
        import transformers  # noqa: F401
        return getattr(importlib.import_module(module), name)
    except ImportError:
        pass
    import diffusers.loaders
    import diffusers.pipelines.pipeline_utils  # noqa: F401 - diffusers checks for transformers before the stub
    for sub, names in LOADER_MIXINS.items():
        loaded = importlib.import_module(f"diffusers.loaders.{sub}")
        for n in names:
            setattr(diffusers.loaders, n, getattr(loaded, n))
    stub = types.ModuleType("transformers")
    for n in TRANSFORMERS_NAMES:
        setattr(stub, n, type(n, (), {}))
    sys.modules["transformers"] = stub
    try:
        return getattr(importlib.import_module(module), name)
    finally:
        del sys.modules["transformers"]


def tiny_student(latent_channels: int, temporal_last: int = 1, upsamplers_2d: int = 0, trim: bool = True) -> TurboVAED:
    """A Turbo-VAED student of the teacher's latent space with 16 channels per block; its output conv is scaled
    down so the random video stays mostly inside [-1, 1] (the pipelines clamp)."""
    torch.manual_seed(0)
    s = TurboVAED(latent_channels=latent_channels, block_out_channels=[16] * 5, layers_per_block=[1] * 5,
                  upsample_factors=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [temporal_last, 2, 2]],
                  num_upsamplers_2d=upsamplers_2d, depthwise_kernel_size=3, trim_first_frames=trim).eval()
    with torch.no_grad():
        s.last_layer_weight.mul_(0.3)
    return s


# ---- tiny pipelines: (pipeline, student, call kwargs, final latents -> (B, C, T', H', W')) -----------------------
def ltx():
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                                layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5)
    tr = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                                    cross_attention_dim=16, num_layers=1, caption_channels=16)
    cls = pipeline_class("diffusers.pipelines.ltx.pipeline_ltx", "LTXPipeline")
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 16), prompt_attention_mask=torch.ones(1, 8), height=32, width=64,
                  num_frames=9)
    return pipe, tiny_student(8, 2, 2), kwargs, lambda z: pipe._unpack_latents(z, 2, 1, 2, 1, 1)


def hunyuan():
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=4)
    tr = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                        patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    cls = pipeline_class("diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video", "HunyuanVideoPipeline")
    pipe = cls(text_encoder=None, tokenizer=None, transformer=tr, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
               text_encoder_2=None, tokenizer_2=None)
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 16), pooled_prompt_embeds=torch.randn(1, 8),
                  prompt_attention_mask=torch.ones(1, 8), height=16, width=32, num_frames=9)
    return pipe, tiny_student(4), kwargs, lambda z: z


def cogvideox():
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=2,
                                 down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4)
    tr = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                     time_embed_dim=2, text_embed_dim=16, num_layers=1, sample_width=2, sample_height=2,
                                     sample_frames=9, patch_size=2, max_text_seq_length=8)
    cls = pipeline_class("diffusers.pipelines.cogvideo.pipeline_cogvideox", "CogVideoXPipeline")
    pipe = cls(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=CogVideoXDDIMScheduler())
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 16), height=16, width=32, num_frames=9)
    return pipe, tiny_student(4), kwargs, lambda z: z.permute(0, 2, 1, 3, 4)


def wan():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                               out_channels=16, text_dim=16, freq_dim=32, ffn_dim=16, num_layers=1, cross_attn_norm=True,
                               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    cls = pipeline_class("diffusers.pipelines.wan.pipeline_wan", "WanPipeline")
    pipe = cls(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler())
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 16), height=16, width=32, num_frames=9)
    return pipe, tiny_student(16), kwargs, lambda z: z


PIPELINES = {"ltx": ltx, "hunyuan": hunyuan, "cogvideox": cogvideox, "wan": wan}


def two_steps(pipe, **kwargs):
    """(the pipeline's output, {"latents": its final latents}) of two denoising steps, tensors out, seeded."""
    final = {}

    def keep(p, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}

    out = pipe(**kwargs, num_inference_steps=2, guidance_scale=1.0, output_type="pt", callback_on_step_end=keep,
               generator=torch.Generator().manual_seed(0))
    return out, final


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_generates_with_the_student(name):
    """Two denoising steps; the video is the student's decode of the pipeline's final latents."""
    pipe, student, kwargs, unpack = PIPELINES[name]()
    pipe.vae = PipelineVAE.from_teacher(pipe.vae, student)
    out, final = two_steps(pipe, **kwargs)
    video = out.frames  # (B, T, 3, H, W) in [0, 1]
    assert video.shape == (1, kwargs["num_frames"], 3, kwargs["height"], kwargs["width"])
    with torch.no_grad():
        want = student.decode(unpack(final["latents"]).float())
    assert want.abs().le(1).float().mean() > 0.9  # mostly inside the range the pipeline keeps: a real check
    want = (want.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(video, want, atol=1e-4, rtol=0)


def test_config_and_properties_are_the_teachers():
    pipe, student, _, _ = ltx()
    vae = pipe.vae
    wrapped = PipelineVAE.from_teacher(vae, student)
    teacher = teacher_config_dict(vae.config)  # tuples as lists, as a saved config.json has them
    for key in ("scaling_factor", "timestep_conditioning", "latent_channels", "patch_size", "block_out_channels"):
        assert wrapped.config[key] == teacher[key]
        assert getattr(wrapped.config, key) == teacher[key]
    assert wrapped.spatial_compression_ratio == vae.spatial_compression_ratio == 32
    assert wrapped.temporal_compression_ratio == vae.temporal_compression_ratio == 8
    torch.testing.assert_close(wrapped.latents_mean, vae.latents_mean)
    torch.testing.assert_close(wrapped.latents_std, vae.latents_std)
    w = PipelineVAE.from_teacher(AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
                                 tiny_student(16), with_encoder=False)
    assert w.config.z_dim == 16 and w.config.scale_factor_spatial == 8 and w.config.scale_factor_temporal == 4
    assert list(w.config.latents_mean) == list(AutoencoderKLWan().config.latents_mean)


def test_decode_takes_raw_latents_and_encode_is_the_teachers():
    pipe, student, _, _ = ltx()
    vae = pipe.vae
    with torch.no_grad():
        vae.latents_mean.normal_()
        vae.latents_std.uniform_(0.5, 2)
    wrapped = PipelineVAE.from_teacher(vae, student)
    normalised = torch.randn(1, 8, 2, 1, 2)
    raw = normalised * vae.latents_std.view(1, -1, 1, 1, 1) / vae.config.scaling_factor + vae.latents_mean.view(1, -1, 1, 1, 1)
    out = wrapped.decode(raw)
    assert type(out).__name__ == "DecoderOutput"
    torch.testing.assert_close(out.sample, student.decode(normalised), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(wrapped.decode(raw, return_dict=False)[0], out.sample)
    video = torch.rand(1, 3, 9, 32, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wrapped.encode(video).latent_dist.mode(), vae.encode(video).latent_dist.mode())
    decoder_only = PipelineVAE.from_teacher(vae, student, with_encoder=False)
    assert not any(k.startswith("encoder_vae.") for k in decoder_only.state_dict())
    with pytest.raises(RuntimeError, match="with_encoder=False"):
        decoder_only.encode(video)


def test_save_and_load_round_trip(tmp_path):
    pipe, student, _, _ = wan()
    wrapped = PipelineVAE.from_teacher(pipe.vae, student)
    wrapped.save_pretrained(tmp_path / "vae")
    loaded = PipelineVAE.from_pretrained(tmp_path / "vae")
    z = torch.randn(2, 16, 2, 2, 3)
    torch.testing.assert_close(loaded.decode(z).sample, wrapped.decode(z).sample, atol=0, rtol=0)
    assert loaded.config.z_dim == 16 and loaded.config.student_class == "TurboVAED"
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(video).latent_dist.mode(), wrapped.encode(video).latent_dist.mode())
    state = loaded.state_dict()
    state.pop("latent_scale")
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="latent_scale"):
        PipelineVAE.from_pretrained(tmp_path / "vae")


def test_derived_student_round_trip(tmp_path):
    vae = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    cfg = load_config("flash_wan")
    student = build_student(cfg, teacher_config=teacher_config_dict(vae.config)).eval()
    wrapped = PipelineVAE.from_teacher(vae, student, with_encoder=False)
    wrapped.save_pretrained(tmp_path)
    loaded = PipelineVAE.from_pretrained(tmp_path)
    assert loaded.config.student_class == "DerivedStudent"
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(loaded.decode(z).sample, wrapped.decode(z).sample, atol=0, rtol=0)


def test_slicing_and_tiling():
    pipe, student, _, _ = hunyuan()
    wrapped = PipelineVAE.from_teacher(pipe.vae, student)
    z = torch.randn(2, 4, 2, 4, 6)
    full = wrapped.decode(z).sample
    wrapped.enable_slicing()
    torch.testing.assert_close(wrapped.decode(z).sample, full, atol=1e-5, rtol=1e-5)
    wrapped.disable_slicing()
    wrapped.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                          tile_sample_stride_width=8)
    tiled = wrapped.decode(z).sample  # blended tiles (models/tiling.py): the shape of a full decode, not its values
    assert tiled.shape == full.shape == (2, 3, 5, 32, 48) and torch.isfinite(tiled).all()
    wrapped.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=48)  # frames fit one tile
    torch.testing.assert_close(wrapped.decode(z).sample, full)
    wrapped.disable_tiling()
    torch.testing.assert_close(wrapped.decode(z).sample, full)


def test_dtype_and_device_moves():
    pipe, student, _, _ = cogvideox()
    wrapped = PipelineVAE.from_teacher(pipe.vae, student).to(torch.bfloat16)
    assert wrapped.dtype == torch.bfloat16 and wrapped.device.type == "cpu"
    z = torch.randn(1, 4, 2, 2, 2)
    video = wrapped.decode(z.to(torch.bfloat16)).sample
    assert video.dtype == torch.bfloat16 and torch.isfinite(video).all()
    ref = PipelineVAE.from_teacher(pipe.vae, student).decode(z).sample
    assert (video.float() - ref).abs().max() < 0.1


def test_clear_errors():
    pipe, student, _, _ = hunyuan()
    wrapped = PipelineVAE.from_teacher(pipe.vae, student)
    with pytest.raises(ValueError, match=r"latents must be \(B, 4, T, H, W\).*\(1, 8, 2, 2, 2\)"):
        wrapped.decode(torch.randn(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match=r"latents must be \(B, 4, T, H, W\).*\(1, 4, 2, 2\)"):
        wrapped.decode(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="takes no timestep"):
        wrapped.decode(torch.randn(1, 4, 2, 2, 2), torch.zeros(1))
    ltx_pipe, ltx_student, _, _ = ltx()
    with pytest.raises(ValueError, match="a student of another teacher"):
        PipelineVAE.from_teacher(pipe.vae, ltx_student)
    with pytest.raises(ValueError, match="a student of another teacher"):  # same channels, no frame trimming
        PipelineVAE.from_teacher(pipe.vae, tiny_student(4, trim=False))
    hunyuan16 = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(8,) * 4, layers_per_block=1,
                                          norm_num_groups=4)
    flash_wan = build_student(load_config("flash_wan"))  # same latent space as HunyuanVideo's, another decoder
    with pytest.raises(ValueError, match="derived from a wan decoder, not from a AutoencoderKLHunyuanVideo"):
        PipelineVAE.from_teacher(hunyuan16, flash_wan)
    with pytest.raises(ValueError, match="no pipeline wrapper for a AutoencoderKL:"):
        PipelineVAE.from_teacher(AutoencoderKL(block_out_channels=(8,), norm_num_groups=8), student)


# ---- FLUX.2 (Flux2Pipeline) with a student of the TAEF2 teacher ---------------------------------------------------
def flux2():
    """A tiny ``Flux2Pipeline`` (its VAE's latent statistics ``bn`` made non-trivial, so the tests see the
    normalisation) and the taef2 config's own student."""
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=4,
                             mid_block_add_attention=False)
    with torch.no_grad():
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2)
    tr = Flux2Transformer2DModel(in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=32,
                                 axes_dims_rope=(4, 4, 4, 4))
    cls = pipeline_class("diffusers.pipelines.flux2.pipeline_flux2", "Flux2Pipeline")
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
    return pipe, build_student(load_config("taef2")).eval()


def flux2_raw(pipe, normalised: torch.Tensor) -> torch.Tensor:
    """TAEF2-space latents (B, 32, H', W') -> the raw latents ``Flux2Pipeline`` hands its VAE (patchify,
    de-normalise with ``vae.bn``, unpatchify, as in its ``__call__``)."""
    bn, eps = pipe.vae.bn, pipe.vae.config.batch_norm_eps
    p = pipe._patchify_latents(normalised)
    return pipe._unpatchify_latents(p * (bn.running_var.view(1, -1, 1, 1) + eps).sqrt() + bn.running_mean.view(1, -1, 1, 1))


def test_flux2_pipeline_generates_with_the_taef2_student():
    """Two denoising steps; the image is the student's decode of the final latents as the transformer made them
    (unpacked and unpatchified: TAEF2's latent space), i.e. the wrapper undoes the pipeline's de-normalisation."""
    pipe, student = flux2()
    pipe.vae = PipelineVAE.from_teacher(pipe.vae, student)
    out, final = two_steps(pipe, prompt_embeds=torch.randn(1, 8, 16), height=32, width=64)
    image = out.images  # (B, 3, H, W) in [0, 1]
    assert image.shape == (1, 3, 32, 64)
    ids = pipe._prepare_latent_ids(torch.zeros(1, 128, 2, 4))
    z = pipe._unpatchify_latents(pipe._unpack_latents_with_ids(final["latents"], ids))  # (1, 32, 4, 8)
    with torch.no_grad():
        want = student.decode(z.float().unsqueeze(2)).squeeze(2)
    assert want.abs().le(1).float().mean() > 0.9  # mostly inside the range the pipeline keeps: a real check
    torch.testing.assert_close(image, want.clamp(-1, 1) / 2 + 0.5, atol=1e-4, rtol=0)
    assert image.min() >= 0 and image.max() <= 1


def test_flux2_config_decode_and_encode():
    pipe, student = flux2()
    vae = pipe.vae
    wrapped = PipelineVAE.from_teacher(vae, student)
    assert wrapped.config.batch_norm_eps == vae.config.batch_norm_eps
    assert wrapped.config.block_out_channels == [8] * 4 and wrapped.config.latent_channels == 32
    assert wrapped.spatial_compression_ratio == 8 and wrapped.temporal_compression_ratio == 1
    torch.testing.assert_close(wrapped.bn.running_mean, vae.bn.running_mean, atol=0, rtol=0)
    torch.testing.assert_close(wrapped.bn.running_var, vae.bn.running_var, atol=0, rtol=0)
    normalised = torch.randn(2, 32, 4, 6)
    out = wrapped.decode(flux2_raw(pipe, normalised))
    assert type(out).__name__ == "DecoderOutput" and out.sample.shape == (2, 3, 32, 48)
    with torch.no_grad():
        want = student.decode(normalised.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(out.sample, want, atol=1e-4, rtol=1e-4)
    wrapped.enable_slicing()
    torch.testing.assert_close(wrapped.decode(flux2_raw(pipe, normalised), return_dict=False)[0], out.sample,
                               atol=1e-5, rtol=1e-5)
    image = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wrapped.encode(image).latent_dist.mode(), vae.encode(image).latent_dist.mode())


def test_flux2_save_and_load_round_trip(tmp_path):
    pipe, _ = flux2()
    student = build_student(load_config("flash_taef2")).eval()  # a DerivedStudent of the taef2 family
    wrapped = PipelineVAE.from_teacher(pipe.vae, student)
    wrapped.save_pretrained(tmp_path / "vae")
    loaded = PipelineVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config.teacher_class == "AutoencoderKLFlux2" and loaded.config.student_class == "DerivedStudent"
    torch.testing.assert_close(loaded.bn.running_var, pipe.vae.bn.running_var, atol=0, rtol=0)
    z = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(loaded.decode(z).sample, wrapped.decode(z).sample, atol=0, rtol=0)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(image).latent_dist.mode(), wrapped.encode(image).latent_dist.mode())


def test_flux2_clear_errors():
    pipe, student = flux2()
    wrapped = PipelineVAE.from_teacher(pipe.vae, student, with_encoder=False)
    with pytest.raises(ValueError, match=r"latents must be \(B, 32, H, W\).*\(1, 32, 1, 4, 4\)"):
        wrapped.decode(torch.randn(1, 32, 1, 4, 4))  # a video latent: FLUX.2 decodes images
    with pytest.raises(ValueError, match=r"latents must be \(B, 32, H, W\).*\(1, 16, 4, 4\)"):
        wrapped.decode(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="multiples of 2 and 2"):
        wrapped.decode(torch.randn(1, 32, 3, 4))
    with pytest.raises(ValueError, match="takes no timestep"):
        wrapped.decode(torch.randn(1, 32, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="a student of another teacher"):
        PipelineVAE.from_teacher(pipe.vae, tiny_student(16))
    with pytest.raises(ValueError, match="a student of another teacher"):  # and a TAEF2 student for a video VAE
        PipelineVAE.from_teacher(wan()[0].vae, student)
