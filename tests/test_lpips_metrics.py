"""LPIPS (train_vae/lpips.py) and PSNR/SSIM (train_vae/metrics.py) against published/reference values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity as sk_ssim

from train_vae.lpips import LPIPS, CheckpointMismatchError
from train_vae.metrics import PSNR_MAX_DB, psnr, ssim, to_unit


# ---------------------------------------------------------------- helpers / fixtures
def _png_unit(path: Path) -> np.ndarray:
    """PNG -> float64 HxWx3 array in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _to_tensor(img_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img_hwc.transpose(2, 0, 1)))[None].float()


def _sk(a_hwc: np.ndarray, b_hwc: np.ndarray) -> float:
    return sk_ssim(a_hwc, b_hwc, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                   data_range=1.0, channel_axis=-1)


@pytest.fixture(scope="module")
def refimgs(asset) -> dict[str, np.ndarray]:
    return {n: _png_unit(asset(f"refimgs/ex_{n}.png")) for n in ("ref", "p0", "p1")}


@pytest.fixture(scope="module")
def lpips_alex(assets_dir: Path) -> LPIPS:
    return LPIPS("alex")


@pytest.fixture(scope="module")
def alex_features_sd(asset) -> dict[str, torch.Tensor]:
    return torch.load(asset("weights/lpips/alexnet_features_imagenet.pth"), map_location="cpu")


# ---------------------------------------------------------------- LPIPS
def test_lpips_alex_published_values(lpips_alex, refimgs):
    ref, p0, p1 = (_to_tensor(refimgs[n]) * 2 - 1 for n in ("ref", "p0", "p1"))
    d = lpips_alex(torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert d.shape == (2,)
    assert abs(d[0].item() - 0.722) <= 1e-3, d
    assert abs(d[1].item() - 0.138) <= 1e-3, d


def test_lpips_frozen_eval(lpips_alex):
    assert all(not p.requires_grad for p in lpips_alex.parameters())
    lpips_alex.train()
    assert not lpips_alex.training and not any(m.training for m in lpips_alex.modules())


def test_lpips_video_is_mean_of_frames(lpips_alex):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    dv = lpips_alex(x, y)
    assert dv.shape == (2,)
    per_frame = torch.stack([lpips_alex(x[:, :, t], y[:, :, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(dv, per_frame.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_lpips_bad_inputs(lpips_alex):
    with pytest.raises(ValueError):
        lpips_alex(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError):
        lpips_alex(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))
    with pytest.raises(ValueError):
        lpips_alex(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError):
        LPIPS("squeeze")


def test_lpips_vgg_zero_on_identical_and_gradients(assets_dir):
    m = LPIPS("vgg")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    assert torch.all(m(x, x).abs() < 1e-6)
    x.requires_grad_(True)
    y = (x.detach() + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    d = m(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())


def test_full_torchvision_checkpoint_loads(tmp_path, lpips_alex, alex_features_sd, refimgs):
    full = dict(alex_features_sd)
    # fake (small) classifier tensors: they must be dropped, whatever their shapes
    full["classifier.1.weight"] = torch.zeros(8, 16)
    full["classifier.1.bias"] = torch.zeros(8)
    full["classifier.6.weight"] = torch.zeros(4, 8)
    full["classifier.6.bias"] = torch.zeros(4)
    path = tmp_path / "alexnet-full.pth"
    torch.save(full, path)
    m = LPIPS("alex", backbone_path=path)
    x = _to_tensor(refimgs["ref"]) * 2 - 1
    y = _to_tensor(refimgs["p1"]) * 2 - 1
    torch.testing.assert_close(m(x, y), lpips_alex(x, y))


def test_checkpoint_missing_or_unexpected_key_raises(tmp_path, alex_features_sd):
    broken = {k: v for k, v in alex_features_sd.items() if k != "features.3.weight"}
    path = tmp_path / "missing.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointMismatchError, match=r"features\.3\.weight"):
        LPIPS("alex", backbone_path=path)

    extra = dict(alex_features_sd)
    extra["features.13.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(extra, path)
    with pytest.raises(CheckpointMismatchError, match=r"features\.13\.weight"):
        LPIPS("alex", backbone_path=path)


def test_linear_heads_missing_key_raises(tmp_path, asset):
    sd = torch.load(asset("weights/lpips/lpips_v0.1_alex_linear.pth"), map_location="cpu")
    del sd["lin4.model.1.weight"]
    path = tmp_path / "lin.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match=r"lin4\.model\.1\.weight"):
        LPIPS("alex", linear_path=path)


# ---------------------------------------------------------------- SSIM / PSNR
def test_ssim_matches_skimage_random():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 3, 40, 52))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert ours.shape == (2,)
    ref = [np.mean([_sk(a[i, :, t].transpose(1, 2, 0), b[i, :, t].transpose(1, 2, 0)) for t in range(3)])
           for i in range(2)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


def test_ssim_matches_skimage_real_frames(refimgs, asset):
    rng = np.random.default_rng(1)
    ref = refimgs["ref"]
    blurred = np.stack([gaussian_filter(ref[..., c], 1.2) for c in range(3)], axis=-1)
    noised = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    gif = Image.open(asset("refimgs/v_CricketShot_g04_c01_rgb.gif"))
    frames = []
    for k in (0, 10):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64) / 255.0)
    pairs = [(ref, refimgs["p0"]), (ref, refimgs["p1"]), (ref, blurred), (ref, noised), (frames[0], frames[1])]
    for a, b in pairs:
        ours = ssim(_to_tensor(a), _to_tensor(b)).item()
        assert abs(ours - _sk(a, b)) < 1e-4, (ours, _sk(a, b))


def test_ssim_identical_is_one_and_psnr_capped():
    x = torch.rand(2, 3, 2, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(psnr(x, x), torch.full((2,), PSNR_MAX_DB), atol=1e-4, rtol=0)


def test_psnr_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.random((2, 3, 4, 20, 24))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    mse = ((a - b) ** 2).mean(axis=(1, 3, 4))  # (B, T): per frame
    ref = (10 * np.log10(1.0 / mse)).mean(axis=1)
    ours = psnr(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-8)
    # 4D input = one frame per clip
    np.testing.assert_allclose(psnr(torch.tensor(a[:, :, 0]), torch.tensor(b[:, :, 0])).numpy(),
                               10 * np.log10(1.0 / mse[:, 0]), atol=1e-8)


def test_out_of_range_inputs_are_clamped_not_rescaled():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 2, 24, 24, generator=g)
    y = torch.rand(1, 3, 2, 24, 24, generator=g)
    x2 = x * 2  # values in [0, 2]
    torch.testing.assert_close(ssim(x2, y), ssim(x2.clamp(0, 1), y))
    torch.testing.assert_close(psnr(x2, y), psnr(x2.clamp(0, 1), y))
    # min-max rescaling would map x*2 back to x; clamping must not
    assert not torch.allclose(ssim(x2, y), ssim(x, y))
    assert not torch.allclose(psnr(x2, y), psnr(x, y))


def test_to_unit_and_shape_errors():
    v = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    torch.testing.assert_close(to_unit(v), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))  # smaller than the 11x11 window
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))
