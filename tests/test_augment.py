"""Colour augmentation of training clips (train_vae/augment.py) and its use by the trainer."""
import math

import pytest
import torch

from tests.test_train import settings
from train_vae import train as train_mod
from train_vae.augment import LUMA, ColourJitter, hue_rotation


def test_hue_rotation_keeps_greys_and_cycles_the_primaries():
    rot = hue_rotation(2 * math.pi / 3)
    grey = torch.tensor([0.3, 0.3, 0.3])
    assert torch.allclose(rot @ grey, grey, atol=1e-6)
    red, green, blue = torch.eye(3)
    assert torch.allclose(rot @ red, green, atol=1e-6) and torch.allclose(rot @ green, blue, atol=1e-6)
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-6)


def test_jitter_keeps_layout_and_range_and_is_seeded():
    video = torch.rand(6, 3, 2, 8, 8) * 2 - 1
    jitter = ColourJitter(1.0)
    a = jitter(video, torch.Generator().manual_seed(3))
    b = jitter(video, torch.Generator().manual_seed(3))
    assert a.shape == video.shape and a.dtype == video.dtype
    assert torch.equal(a, b) and not torch.equal(a, video)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(ColourJitter(0.0)(video), video)


def test_grey_clips_have_equal_channels():
    video = torch.rand(4, 3, 2, 8, 8) * 2 - 1
    out = ColourJitter(1.0, grey=1.0)(video, torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
    assert abs(sum(LUMA) - 1) < 1e-9


def test_bad_jitter_settings_are_clear():
    with pytest.raises(ValueError, match="p must be a probability"):
        ColourJitter(1.2)
    with pytest.raises(ValueError, match=r"needs video \(B, 3, T, H, W\)"):
        ColourJitter(0.5)(torch.zeros(3, 2, 8, 8))


def test_trainer_encodes_the_transformed_clip(clips, tmp_path):
    t = train_mod.Trainer(settings(clips, tmp_path / "a", train_crop=16, colour_augment=1.0))
    torch.manual_seed(0)
    latents, video = t.latents_and_video(next(t.batches(0)))
    with torch.no_grad():
        assert torch.equal(latents, t.teacher.encode(video))
    torch.manual_seed(0)
    plain = train_mod.Trainer(settings(clips, tmp_path / "b", train_crop=16))
    _, video_plain = plain.latents_and_video(next(plain.batches(0)))
    assert video.shape == video_plain.shape and not torch.allclose(video, video_plain)
