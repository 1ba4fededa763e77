"""The one weight-file helper: explicit path, TURBO_VAED_ASSETS, the cache's assets folder, a fetch with sha256."""
import hashlib

import pytest

from models import weights
from models.assets import Asset, Source
from models.weights import WeightHashError, WeightNotFoundError, resolve_weight


def test_resolves_from_assets(assets_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TURBO_VAED_CACHE", str(tmp_path / "cache"))
    p = resolve_weight("lpips_alex")
    assert p == assets_dir / "weights" / "lpips" / "lpips_v0.1_alex_linear.pth"


def test_explicit_path_wins_and_missing_path_is_named(tmp_path):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert resolve_weight("vgg16", f) == f
    with pytest.raises(WeightNotFoundError, match="nope.pth"):
        resolve_weight("vgg16", tmp_path / "nope.pth")
    with pytest.raises(KeyError, match="unknown weight file"):
        resolve_weight("resnet")


def test_offline_missing_file_names_file_places_and_fetch_command(monkeypatch, tmp_path):
    monkeypatch.delenv("TURBO_VAED_ASSETS", raising=False)
    monkeypatch.setenv("TURBO_VAED_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightNotFoundError) as e:
        resolve_weight("taef2_decoder")
    msg = str(e.value)
    assert "weights/taef2/taef2_decoder.pth" in msg and str(tmp_path / "assets") in msg and "offline" in msg
    assert "`python scripts/fetch_assets.py`" in msg  # the default folder: no argument needed
    # with TURBO_VAED_ASSETS set, the command builds that folder
    monkeypatch.setenv("TURBO_VAED_ASSETS", str(tmp_path / "elsewhere"))
    with pytest.raises(WeightNotFoundError, match=f"python scripts/fetch_assets.py {tmp_path / 'elsewhere'}"):
        resolve_weight("i3d_kinetics400")


def test_corrupt_cached_file_is_rejected(monkeypatch, tmp_path):
    monkeypatch.delenv("TURBO_VAED_ASSETS", raising=False)
    monkeypatch.setenv("TURBO_VAED_CACHE", str(tmp_path))
    bad = tmp_path / "assets" / "weights" / "lpips" / "lpips_v0.1_vgg_linear.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightHashError, match="is not the expected a78928a0af1e5f0f"):
        resolve_weight("lpips_vgg")


def test_fetch_checks_hash_and_lands_atomically(monkeypatch, tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"pretend weights")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setitem(weights.REGISTRY, "fake", Asset("weights/x/remote.bin", digest, "MIT", Source(src.as_uri(), "test")))
    monkeypatch.delenv("TURBO_VAED_ASSETS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TURBO_VAED_CACHE", str(tmp_path / "cache"))
    p = resolve_weight("fake")
    assert p == tmp_path / "cache" / "assets" / "weights" / "x" / "remote.bin" and p.read_bytes() == b"pretend weights"
    # a download whose hash does not match leaves nothing behind
    monkeypatch.setitem(weights.REGISTRY, "fake2", Asset("weights/x/other.bin", "0" * 64, "MIT", Source(src.as_uri(), "test")))
    with pytest.raises(WeightNotFoundError, match="could not fetch 'weights/x/other.bin'.*expected 0000000000000000"):
        resolve_weight("fake2")
    assert [p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [
        "assets/weights/x/remote.bin"]
