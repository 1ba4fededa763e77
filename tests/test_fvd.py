"""I3D (Kinetics-400) and FVD against published reference values (see ../shared/README.md).

I3D runs on CPU here (about 2-3 s per 30-frame 224x224 video on 2 cores), so the heavy tests share
one extractor and keep the number of forward passes small.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from train_vae.fvd import frechet_distance, frechet_distance_from_stats, fvd
from train_vae.i3d import I3DFeatureExtractor, InceptionI3d, is_torchscript_file, load_i3d, load_i3d_labels

# FVD of 8 all-0 vs 8 all-1 videos (30 frames, 64x64, pixel range [0, 1]) with the TF reference.
FVD_CONSTANT_REFERENCE = 151.39244


@pytest.fixture(scope="module")
def extractor(assets_dir: Path) -> I3DFeatureExtractor:
    return I3DFeatureExtractor(batch_size=4)


@pytest.fixture(scope="module")
def cricket_video(asset) -> torch.Tensor:
    """The DeepMind I3D sample clip as (1, 3, 79, 224, 224) in [-1, 1]."""
    with Image.open(asset("refimgs/v_CricketShot_g04_c01_rgb.gif")) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 79 and frames[0].shape == (224, 224, 3)
    v = torch.from_numpy(np.stack(frames)).float().div(255.0).mul(2.0).sub(1.0)
    return v.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def test_fvd_constant_videos_reference(extractor):
    # All videos within a set are identical, so their features are too: run 2 per set (checking that
    # they agree) and tile to the reference's 8 per set instead of paying for 16 CPU forward passes.
    pixels = torch.cat([torch.zeros(2, 3, 30, 64, 64), torch.ones(2, 3, 30, 64, 64)])
    with torch.inference_mode():
        feats = extractor(pixels * 2.0 - 1.0)
    assert feats.shape == (4, 400) and feats.dtype == torch.float64
    torch.testing.assert_close(feats[0], feats[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(feats[2], feats[3], rtol=0, atol=1e-5)
    zeros, ones = feats[:1].repeat(8, 1), feats[2:3].repeat(8, 1)
    value = frechet_distance(zeros, ones)
    assert abs(value - FVD_CONSTANT_REFERENCE) < 0.05, value
    # zero covariances: the distance is the squared mean difference
    assert value == pytest.approx(float(((feats[0] - feats[2]) ** 2).sum()), abs=1e-6)


def test_i3d_classifies_cricket(extractor, cricket_video):
    labels = load_i3d_labels()
    assert len(labels) == 400 and labels[0] == "abseiling"
    with torch.inference_mode():
        logits = extractor(cricket_video[:, :, :64])[0]  # already 224x224: no resize
    top5 = [labels[i] for i in logits.topk(5).indices.tolist()]
    assert top5[0] == "playing cricket", top5
    assert torch.softmax(logits, 0)[labels.index("playing cricket")] > 0.9


def test_fvd_self_is_zero_on_i3d_features(extractor, cricket_video):
    # four short windows of a real clip, downscaled to 64x64 (the extractor resizes back to 224)
    clips = torch.cat([cricket_video[:, :, s:s + 12] for s in (0, 20, 40, 60)])
    small = torch.nn.functional.interpolate(
        clips.permute(0, 2, 1, 3, 4).reshape(-1, 3, 224, 224), size=(64, 64), mode="bilinear",
        align_corners=False, antialias=True,
    ).reshape(4, 12, 3, 64, 64).permute(0, 2, 1, 3, 4)
    with torch.inference_mode():
        feats = extractor(small)
    assert torch.isfinite(feats).all() and feats.std(0).max() > 0  # windows differ
    assert abs(frechet_distance(feats, feats)) < 1e-3
    assert frechet_distance(feats[:2], feats[2:]) > 1.0


@pytest.mark.parametrize("n, d", [(16, 400), (128, 400), (500, 16)])
def test_frechet_distance_self_is_zero_random(n, d):
    x = np.random.default_rng(n + d).normal(size=(n, d))
    assert abs(frechet_distance(x, x)) < 1e-3
    assert abs(frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(x).float())) < 1e-3


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    # diagonal covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    var_a, var_b = rng.uniform(0.1, 2.0, 8), rng.uniform(0.1, 2.0, 8)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-10)
    # samples: agrees with a large-sample estimate of the same Gaussians, symmetric
    a = rng.normal(size=(4000, 4)) * np.sqrt(var_a[:4]) + mu_a[:4]
    b = rng.normal(size=(4000, 4)) * np.sqrt(var_b[:4]) + mu_b[:4]
    exp4 = ((mu_a[:4] - mu_b[:4]) ** 2).sum() + ((np.sqrt(var_a[:4]) - np.sqrt(var_b[:4])) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(exp4, abs=0.1)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    # constant sets (zero, singular covariances) give exactly the squared mean difference
    ca, cb = np.tile(mu_a, (8, 1)), np.tile(mu_b, (8, 1))
    assert frechet_distance(ca, cb) == pytest.approx(((mu_a - mu_b) ** 2).sum(), abs=1e-9)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b[:1])


def test_missing_key_raises_clear_error(asset, tmp_path):
    sd = torch.load(asset("weights/i3d/i3d_kinetics400_tfhub_piergiaj_layout.pt"), map_location="cpu",
                    weights_only=True)
    del sd["Mixed_4c.b1b.bn.running_var"]
    with pytest.raises(RuntimeError, match=r"missing key.*Mixed_4c\.b1b\.bn\.running_var"):
        InceptionI3d().load_state_dict(sd)
    bad = tmp_path / "i3d_missing_key.pt"
    torch.save(sd, bad)
    assert not is_torchscript_file(bad)
    with pytest.raises(RuntimeError, match=r"Mixed_4c\.b1b\.bn\.running_var"):
        load_i3d(bad)
    with pytest.raises(RuntimeError, match="missing key"):
        I3DFeatureExtractor(weights=bad)
    sd["Mixed_4c.b1b.bn.running_var"] = torch.ones(7)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        InceptionI3d().load_state_dict(sd)


class _FakeTorchScriptI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: same call signature, 400-d output."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        assert x.shape[-1] == 224 and x.shape[-2] == 224
        return self.proj(x.mean(dim=(2, 3, 4)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_weights_are_detected_and_called(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_FakeTorchScriptI3D()), str(path))
    assert is_torchscript_file(path)
    ext = I3DFeatureExtractor(weights=path)
    assert ext.is_torchscript
    videos = torch.rand(3, 3, 10, 32, 48) * 2 - 1
    feats = ext(videos)
    assert feats.shape == (3, 400) and feats.dtype == torch.float64
    assert abs(fvd(videos, videos, extractor=ext)) < 1e-3


def test_i3d_weights_of_another_model_are_a_checkpoint_mismatch(tmp_path):
    """The one checkpoint-mismatch error (models/files.py) for I3D weights too, naming the file."""
    from models.files import CheckpointMismatchError

    bad = tmp_path / "i3d.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointMismatchError, match="is not an InceptionI3d state dict"):
        load_i3d(bad)
    torch.save([1, 2], bad)
    with pytest.raises(CheckpointMismatchError, match="expected a state dict, got list"):
        load_i3d(bad)
