"""Pre-computed latents: generate_latents.py writes them, LatentDataset pairs them with exactly the
pixels they were computed from (no random crop of its own), resume/atomic writes, errors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.cli import run
from models.config import load_config, load_teacher
from train_vae.data import VideoDataset, make_procedural_clips, read_video_frames, resize_crop_frames
from train_vae.generate_latents import SettingsMismatchError, generate_latents, main, read_files_list
from train_vae.latent_dataset import FORMAT_VERSION, LatentDataset, collate_latents, dequantize_frames

NUM_FRAMES, RES, CLIPS = 9, 64, 2
Q = 0.5 / 127.5  # largest error of uint8 quantisation round((v + 1) * 127.5)


class CountingTeacher:
    """Delegates to the real teacher and counts encode calls (optionally failing on call n)."""

    def __init__(self, teacher, fail_on: int | None = None):
        self.teacher, self.calls, self.fail_on = teacher, 0, fail_on

    def encode(self, video):
        self.calls += 1
        if self.fail_on is not None and self.calls >= self.fail_on:
            raise RuntimeError("simulated crash")
        return self.teacher.encode(video)

    def __getattr__(self, name):  # compression, first_frame_alone, latent_channels
        return getattr(self.teacher, name)


@pytest.fixture(scope="module")
def cfg():
    return load_config("taef2")


@pytest.fixture(scope="module")
def teacher(cfg):
    return load_teacher(cfg)  # TAEF2 weights via $TURBO_VAED_ASSETS


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("latents")
    # 96x128 frames: resized to 64x85, so windows, horizontal crops and flips all vary
    make_procedural_clips(root / "data", num_clips=3, num_frames=24, size=(96, 128), seed=5)
    return root


@pytest.fixture(scope="module")
def generated(work, cfg, teacher):
    counter = CountingTeacher(teacher)
    out = generate_latents(cfg, work / "data", work / "lat", num_frames=NUM_FRAMES, resolution=RES,
                           clips_per_video=CLIPS, seed=0, store_frames=True, teacher=counter, progress=False,
                           cache_dir=work / "cache")
    return out, counter.calls


def _kwargs(work, **over):
    kw = dict(num_frames=NUM_FRAMES, resolution=RES, clips_per_video=CLIPS, seed=0, store_frames=True,
              progress=False, cache_dir=work / "cache")
    kw.update(over)
    return kw


def _source_video(data_dir: Path, item: dict) -> torch.Tensor:
    """The float clip rebuilt independently from the recorded window / resize / crop / flip."""
    frames = read_video_frames(data_dir / item["path"], item["frame_indices"])
    video = resize_crop_frames(frames, item["scale_size"], item["crop"])
    if item["flip"]:
        video = torch.flip(video, dims=[-1])
    return video.permute(1, 0, 2, 3)


def test_layout_and_records_match_dataset(work, generated):
    out, calls = generated
    assert calls == 3 * CLIPS  # the encoder runs once per sample
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == 3 * CLIPS
    assert manifest["latent_shape"] == [32, NUM_FRAMES, RES // 8, RES // 8]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    lds = LatentDataset(out)
    assert len(lds) == 3 * CLIPS
    ds = VideoDataset(work / "data", num_frames=NUM_FRAMES, resolution=RES, seed=0, train=True,
                      cache_dir=work / "cache")
    for item in lds:
        ds.set_epoch(item["clip"])
        ref = ds[item["index"]]
        assert item["path"] == ref["path"]
        assert item["frame_indices"] == ref["frame_indices"]
        assert tuple(item["crop"]) == tuple(ref["crop"])
        assert tuple(item["scale_size"]) == tuple(ref["scale_size"])
        assert item["flip"] == ref["flip"]
        assert item["latents"].dtype == torch.float32 and item["latents"].shape == (32, NUM_FRAMES, 8, 8)
        assert item["video"].shape == (3, NUM_FRAMES, RES, RES)
        # stored uint8 pixels are the encoder's float pixels up to rounding
        assert (item["video"] - ref["video"]).abs().max() <= Q + 1e-6
        with safe_open(str(out / item["file"]), "pt") as f:
            meta = f.metadata()
            assert f.get_tensor("frames").dtype == torch.uint8
            assert f.get_tensor("flip").dtype == torch.uint8
        assert meta["source"] == item["path"] and meta["config"] == "taef2" and meta["teacher_class"] == "TAEF2"
        assert meta["num_frames"] == str(NUM_FRAMES) and meta["resolution"] == f"{RES}x{RES}"
    batch = collate_latents([lds[0], lds[1]])
    assert batch["latents"].shape == (2, 32, NUM_FRAMES, 8, 8) and batch["video"].shape == (2, 3, NUM_FRAMES, RES, RES)


def test_latents_are_encode_of_the_recorded_pixels(work, generated, teacher):
    out, _ = generated
    stored = LatentDataset(out)  # video from stored uint8 frames
    source = LatentDataset(out, data_dir=work / "data", video_source="source")  # re-read, exact floats
    encoded = 0
    for a, b in zip(stored, source):
        exact = _source_video(work / "data", a)
        assert torch.equal(b["video"], exact)
        # frames from the stored uint8 and from re-reading data_dir agree within the quantisation step
        assert (a["video"] - b["video"]).abs().max() <= Q + 1e-6
        assert (a["video"] - b["video"]).abs().max() <= 1 / 127.5
        if a["index"] != a["clip"]:  # the encoder on one sample of each clip epoch (speed)
            continue
        encoded += 1
        z = teacher.encode(exact[None])[0]
        torch.testing.assert_close(a["latents"], z, atol=1e-5, rtol=1e-5)
    assert encoded == CLIPS
    # the quantised pixels still encode to nearly the same latents (TAEF2 latents span about +-5)
    zq = teacher.encode(stored[0]["video"][None])[0]
    assert (zq - stored[0]["latents"]).abs().max() < 0.2


def test_clip_epochs_give_different_windows(generated):
    lds = LatentDataset(generated[0])
    by = {(it["path"], it["clip"]): (tuple(it["frame_indices"]), tuple(it["crop"]), it["flip"]) for it in lds}
    paths = sorted({p for p, _ in by})
    assert len(paths) == 3
    assert any(by[(p, 0)] != by[(p, 1)] for p in paths)
    assert any(by[(p, 0)][0] != by[(p, 1)][0] for p in paths)  # temporal windows themselves differ
    assert len({by[(p, 0)][1] for p in paths} | {by[(p, 1)][1] for p in paths}) > 1  # crops vary


def test_resume_skips_existing_and_survives_a_crash(work, generated, cfg, teacher, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(generated[0], out)
    before = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}

    counter = CountingTeacher(teacher)
    generate_latents(cfg, work / "data", out, teacher=counter, **_kwargs(work))
    assert counter.calls == 0  # everything already there

    # a crash: leftovers of a dead writer, two samples lost, the encoder fails on its 2nd call
    (out / "junk.safetensors.tmp").write_bytes(b"partial")
    (out / ".procedural_000-0000-c000.safetensors.999999999.tmp").write_bytes(b"partial")
    lost = sorted(before)[:2]
    for name in lost:
        (out / name).unlink()
    crashing = CountingTeacher(teacher, fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_latents(cfg, work / "data", out, teacher=crashing, **_kwargs(work))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # stale tmp cleaned, none left
    present = {p.name for p in out.glob("*.safetensors")}
    assert len(present) == len(before) - 1  # exactly one of the lost samples was rewritten, whole
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["num_samples"] == len(before) - 1
    with pytest.raises(ValueError, match="incomplete: generation stopped after"):  # never trained on silently
        LatentDataset(out)

    (out / "junk.safetensors.tmp").write_bytes(b"partial")  # ignored by readers
    counter = CountingTeacher(teacher)
    generate_latents(cfg, work / "data", out, teacher=counter, **_kwargs(work))
    assert counter.calls == 1
    assert not (out / "junk.safetensors.tmp").exists()
    after = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    assert after.keys() == before.keys()
    for name in before:  # deterministic: a regenerated sample records the same clip as before
        if name not in lost:
            assert after[name] == before[name]
    lds = LatentDataset(out)
    assert len(lds) == len(before)
    ref = {it["file"]: it for it in LatentDataset(generated[0])}
    for it in lds:
        assert it["frame_indices"] == ref[it["file"]]["frame_indices"]
        torch.testing.assert_close(it["latents"], ref[it["file"]]["latents"], atol=1e-5, rtol=1e-5)


def test_settings_mismatch_and_overwrite(work, generated, cfg, teacher, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(generated[0], out)
    counter = CountingTeacher(teacher)
    with pytest.raises(SettingsMismatchError, match="resolution"):
        generate_latents(cfg, work / "data", out, teacher=counter, **_kwargs(work, resolution=32))
    assert counter.calls == 0
    one = ["procedural_001.mp4"]
    generate_latents(cfg, work / "data", out, teacher=counter, files=one, overwrite=True,
                     **_kwargs(work, clips_per_video=1))
    assert counter.calls == 1  # the existing sample was regenerated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["written"] == 1 and manifest["last_run"]["skipped"] == 0
    lds = LatentDataset(out)
    assert len(lds) == 1 and lds[0]["path"] == one[0]  # the manifest lists exactly the requested samples


def test_without_stored_frames_needs_data_dir_fp16(work, cfg, teacher, tmp_path):
    out = tmp_path / "lat"
    (tmp_path / "list.txt").write_text("# one video\nprocedural_002.mp4\n\n")
    files = read_files_list(tmp_path / "list.txt")
    assert files == ["procedural_002.mp4"]
    generate_latents(cfg, work / "data", out, teacher=teacher, files=files,
                     fp16=True, **_kwargs(work, clips_per_video=1, store_frames=False))
    with pytest.raises(ValueError, match=str(out.name)) as exc:
        LatentDataset(out)
    assert "data_dir" in str(exc.value) and "--store_frames" in str(exc.value)
    with pytest.raises(ValueError, match="no stored frames"):
        LatentDataset(out, data_dir=work / "data", video_source="frames")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentDataset(out, data_dir=tmp_path / "nowhere")
    lds = LatentDataset(out, data_dir=work / "data")
    item = lds[0]
    with safe_open(str(out / item["file"]), "pt") as f:
        assert "frames" not in f.keys()
        assert f.get_tensor("latents").dtype == torch.float16
    assert item["latents"].dtype == torch.float32
    ds = VideoDataset(work / "data", num_frames=NUM_FRAMES, resolution=RES, seed=0, files=["procedural_002.mp4"],
                      cache_dir=work / "cache")
    ref = ds[0]
    assert item["frame_indices"] == ref["frame_indices"] and tuple(item["crop"]) == tuple(ref["crop"])
    assert torch.equal(item["video"], ref["video"])  # re-read: bit-identical to what was encoded
    z = teacher.encode(ref["video"][None])[0]
    torch.testing.assert_close(item["latents"], z, atol=1e-2, rtol=1e-2)  # float16 rounding only


def test_stored_frames_are_exact_without_resize(cfg, teacher, tmp_path):
    # short side == resolution: no resize, so uint8 frames round-trip exactly and so do the latents
    make_procedural_clips(tmp_path / "data", num_clips=1, num_frames=12, size=(64, 96), seed=9)
    out = generate_latents(cfg, tmp_path / "data", tmp_path / "lat", num_frames=NUM_FRAMES, resolution=RES,
                           clips_per_video=1, store_frames=True, teacher=teacher, progress=False,
                           cache_dir=tmp_path / "cache")
    item = LatentDataset(out)[0]
    assert tuple(item["scale_size"]) == (64, 96)
    exact = _source_video(tmp_path / "data", item)
    assert torch.equal(item["video"], exact)
    with safe_open(str(out / item["file"]), "pt") as f:
        assert torch.equal(dequantize_frames(f.get_tensor("frames")), exact)
    torch.testing.assert_close(item["latents"], teacher.encode(item["video"][None])[0], atol=1e-5, rtol=1e-5)


def test_errors(tmp_path, work, monkeypatch):
    monkeypatch.setenv("TURBO_VAED_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        LatentDataset(tmp_path / "missing_dir")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        LatentDataset(tmp_path / "empty_dir")
    (tmp_path / "empty_dir" / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "samples": []}))
    with pytest.raises(ValueError, match="empty_dir.*no samples"):
        LatentDataset(tmp_path / "empty_dir")
    # a config without a public teacher
    with pytest.raises(ValueError, match="no public teacher"):
        generate_latents(load_config("dcae"), work / "data", tmp_path / "x", progress=False)
    # an empty data folder (VideoDataset's own error), reported by the CLI as an error, exit code 2
    (tmp_path / "no_videos").mkdir()
    rc = run(main, ["--config", "taef2", "--data_dir", str(tmp_path / "no_videos"), "--output_dir", str(tmp_path / "y"),
                    "--quiet"])
    assert rc == 2


# ---------------------------------------------------------------------------------------------
# the cache records what it was made from: used as it is, finished or rebuilt, with one line saying which
# ---------------------------------------------------------------------------------------------

class OtherWeightsTeacher(CountingTeacher):
    """The same teacher with one more (irrelevant) tensor in its state: other weights as far as a cache knows."""

    def state_dict(self):
        return {**self.teacher.state_dict(), "extra": torch.ones(1)}


def _cached(work, out, teacher, **over):
    lines = []
    generate_latents(load_config("taef2"), over.pop("data", work / "data"), out, teacher=teacher, rebuild_stale=True,
                     log=lines.append, **_kwargs(work, **over))
    assert len(lines) == 1, lines
    return lines[0]


def test_cache_is_used_only_when_everything_matches(work, generated, teacher, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(generated[0], out)
    n = 3 * CLIPS
    counter = CountingTeacher(teacher)
    assert f"using its {n} samples" in _cached(work, out, counter) and counter.calls == 0

    # other settings, other teacher weights: stale, rebuilt from scratch, old samples gone
    counter = CountingTeacher(teacher)
    line = _cached(work, out, counter, resolution=32)
    assert f"rebuilding all {n} samples" in line and "resolution 64x64 -> 32x32" in line and counter.calls == n
    assert json.loads((out / "manifest.json").read_text())["identity"]["resolution"] == "32x32"
    assert len(list(out.glob("*.safetensors"))) == n
    counter = OtherWeightsTeacher(teacher)
    line = _cached(work, out, counter, resolution=32)
    assert "rebuilding" in line and "teacher_sha256" in line and counter.calls == n


def test_cache_of_another_data_folder_is_rebuilt(work, generated, teacher, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(generated[0], out)
    shutil.copytree(work / "data", tmp_path / "mine")  # same file names, another folder
    counter = CountingTeacher(teacher)
    line = _cached(work, out, counter, data=tmp_path / "mine")
    assert "rebuilding" in line and f"data_dir {work / 'data'} -> {tmp_path / 'mine'}" in line
    assert LatentDataset(out).manifest["data_dir"] == str(tmp_path / "mine")


def test_changed_source_files_and_partial_caches_are_finished(work, generated, teacher, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(generated[0], out)
    shutil.copytree(work / "data", tmp_path / "data")
    generate_latents(load_config("taef2"), tmp_path / "data", out, teacher=teacher, rebuild_stale=True,
                     log=lambda m: None, **_kwargs(work))  # a cache of this folder
    os.utime(tmp_path / "data" / "procedural_001.mp4", ns=(1, 1))  # the file changed since
    counter = CountingTeacher(teacher)
    line = _cached(work, out, counter, data=tmp_path / "data")
    assert f"writing {CLIPS} of {3 * CLIPS} samples" in line and "source files that changed" in line
    assert counter.calls == CLIPS
    # killed while writing: the next run finishes it, never trains on the part
    for p in list(out.glob("procedural_002*.safetensors")):
        p.unlink()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cached(work, out, CountingTeacher(teacher, fail_on=2), data=tmp_path / "data")
    with pytest.raises(ValueError, match="incomplete"):
        LatentDataset(out)
    counter = CountingTeacher(teacher)
    line = _cached(work, out, counter, data=tmp_path / "data")
    assert "finishing it: writing 1 of" in line and "stopped after" in line and counter.calls == 1
    assert len(LatentDataset(out)) == 3 * CLIPS
