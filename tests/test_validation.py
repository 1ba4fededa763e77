"""Validation tools: tiled decoding, validation_metrics (1 process and torchrun/gloo), validation_videos."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.config import build_student, load_config, load_teacher
from models.tiling import default_tiles, tile_spans, tiled_decode
from train_vae.data import make_procedural_clips, read_video_frames
from train_vae.metrics import psnr, to_unit

REPO = Path(__file__).resolve().parent.parent
METRICS_SCRIPT = REPO / "train_vae" / "validation_metrics.py"


# ---------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------

class PointwiseDecoder(nn.Module):
    """1x1x1 conv, then nearest upsampling in space and time (first_frame_alone: latent 0 -> one frame)."""

    def __init__(self, compression=(1, 8, 8), first_frame_alone=False, channels=4):
        super().__init__()
        self.compression, self.first_frame_alone = compression, first_frame_alone
        self.conv = nn.Conv3d(channels, 3, 1)

    def forward(self, z):
        ct, ch, cw = self.compression
        y = self.conv(z)
        if self.first_frame_alone:
            y = torch.cat([y[:, :, :1], y[:, :, 1:].repeat_interleave(ct, 2)], 2)
        else:
            y = y.repeat_interleave(ct, 2)
        return y.repeat_interleave(ch, 3).repeat_interleave(cw, 4)


def test_tile_spans_cover_and_align():
    assert tile_spans(10, None, 0) == [(0, 10)]
    assert tile_spans(10, 16, 4) == [(0, 10)]
    spans = tile_spans(13, 5, 2)
    assert spans[0] == (0, 5) and spans[-1] == (8, 13)
    assert all(e - s == 5 for s, e in spans)
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # consecutive tiles overlap
    with pytest.raises(ValueError):
        tile_spans(10, 4, 4)


@pytest.mark.parametrize("compression,first_frame_alone", [((1, 8, 8), False), ((4, 8, 8), False), ((4, 8, 8), True),
                                                ((8, 32, 32), True)])
def test_tiled_decode_pointwise_equals_full(compression, first_frame_alone):
    torch.manual_seed(0)
    dec = PointwiseDecoder(compression, first_frame_alone)
    z = torch.randn(2, 4, 7, 11, 9) if compression[1] == 8 else torch.randn(1, 4, 5, 5, 4)
    with torch.no_grad():
        full = dec(z)
        tiled = tiled_decode(dec, z, compression, tile_latent=(3, 4, 5), overlap_latent=(2, 2, 1),
                             first_frame_alone=first_frame_alone)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)


def test_tiled_decode_local_decoder_close():
    """A decoder with a small receptive field (3x3 convs around an 8x upsampling): overlaps larger than
    the receptive field give a near-equal result."""
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def dec(z):
        b, c, t, h, w = z.shape
        x = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = c2(F.interpolate(torch.relu(c1(x)), scale_factor=8, mode="nearest"))
        return torch.tanh(x).reshape(b, t, 3, 8 * h, 8 * w).permute(0, 2, 1, 3, 4)

    z = torch.randn(1, 4, 2, 20, 24)
    with torch.no_grad():
        full = dec(z)
        tiled = tiled_decode(dec, z, (1, 8, 8), (None, 8, 8), (0, 4, 4))
    assert float(psnr(to_unit(full), to_unit(tiled))[0]) > 40.0


def test_tiled_decode_rejects_the_wrong_frame_rule():
    dec = PointwiseDecoder((4, 8, 8), first_frame_alone=True)
    with torch.no_grad(), pytest.raises(ValueError, match="first_frame_alone"):
        tiled_decode(dec, torch.randn(1, 4, 6, 4, 4), (4, 8, 8), (3, 2, 2), (1, 1, 1), first_frame_alone=False)


def test_default_tiles():
    assert default_tiles((1, 8, 8), 256, 64) == ((None, 32, 32), (0, 8, 8))
    (tt, th, tw), (ot, oh, ow) = default_tiles((8, 32, 32), 512, 128, tile_frames=33)
    assert (th, tw, oh, ow) == (16, 16, 4, 4) and tt == 5 and 1 <= ot < tt


def test_tiled_decode_taef2(assets_dir, tmp_path):
    """Real TAEF2: frame chunks are exact (it decodes frame by frame); spatial tiles are close but not
    exact, because the GroupNorm in its pooled blocks normalises over the whole frame."""
    teacher = load_teacher(load_config("taef2"))
    path = make_procedural_clips(tmp_path, num_clips=1, num_frames=2, size=(128, 192))[0]
    x = read_video_frames(path, [0, 1]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = teacher.encode(x)
        full = teacher.decode(z)
        chunks = tiled_decode(teacher.decode, z, teacher.compression, (1, None, None), (0, 0, 0))
        torch.testing.assert_close(chunks, full, atol=1e-5, rtol=1e-5)
        tiled = tiled_decode(teacher.decode, z[:, :, :1], teacher.compression, (None, 12, 12), (0, 6, 6))
    assert tiled.shape == full[:, :, :1].shape
    assert float(psnr(to_unit(full[:, :, :1]), to_unit(tiled))[0]) > 30.0


# ---------------------------------------------------------------------------------------------
# validation_metrics
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory, assets_dir):
    root = tmp_path_factory.mktemp("validation")
    torch.manual_seed(0)
    student = build_student(load_config("taef2"))
    student.save_pretrained(root / "student")
    clips = root / "clips"
    make_procedural_clips(clips, num_clips=3, num_frames=20, size=(64, 64))
    return root


def _metrics_args(root: Path, student: str, output: Path) -> list[str]:
    return ["--config", "taef2", "--student", student, "--data_dir", str(root / "clips"), "--num_frames", "9",
            "--resolution", "64", "--output", str(output), "--threads", "1", "--no_progress"]


@pytest.fixture(scope="module")
def single_run(setup):
    from train_vae.validation_metrics import main
    out = setup / "single.json"
    main(_metrics_args(setup, str(setup / "student"), out))
    return json.loads(out.read_text())


def test_load_student_resolution(setup, tmp_path):
    from models.student import TurboVAED
    from models.config import load_student, resolve_student_dir

    cfg = load_config("taef2")
    assert resolve_student_dir(setup / "student") == setup / "student"
    ckpt = tmp_path / "out" / "checkpoints" / "step_000010"
    (ckpt / "student").mkdir(parents=True)
    for f in (setup / "student").iterdir():
        (ckpt / "student" / f.name).write_bytes(f.read_bytes())
    assert resolve_student_dir(ckpt) == ckpt / "student"
    assert isinstance(load_student(cfg, ckpt), TurboVAED)
    with pytest.raises(FileNotFoundError, match="step_000010"):  # output folder without student/: names the checkpoint
        load_student(cfg, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_student(cfg, tmp_path / "nope")
    wrong = build_student(load_config("wan"), block_out_channels=[8] * 5, layers_per_block=[1] * 5)
    wrong.save_pretrained(tmp_path / "wan_student")
    with pytest.raises(ValueError, match="wrong --config"):
        load_student(cfg, tmp_path / "wan_student")


def test_metrics_single_process(single_run):
    r = single_run
    assert r["n_clips"] == 3 and len(r["clips"]) == 3
    assert [row["clip_id"] for row in r["clips"]] == [0, 1, 2]
    for who in ("teacher", "student"):
        assert set(r[who]) == {"psnr", "ssim", "lpips", "rfvd"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in r[who].values())
        assert r[who]["psnr"] == pytest.approx(np.mean([row[who]["psnr"] for row in r["clips"]]), abs=1e-9)
    assert r["teacher"]["psnr"] > r["student"]["psnr"]
    assert r["teacher"]["ssim"] > r["student"]["ssim"]
    assert r["retention"]["psnr"] == pytest.approx(r["student"]["psnr"] / r["teacher"]["psnr"])
    assert r["settings"]["num_frames"] == 9 and r["settings"]["world_size"] == 1
    assert r["teacher"]["psnr"] > 20  # TAEF2 round trip on procedural clips is ~25 dB


def test_metrics_torchrun_matches_single(setup, single_run):
    out = setup / "torchrun.json"
    env = {**os.environ, "TURBO_VAED_ASSETS": os.environ["TURBO_VAED_ASSETS"], "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(METRICS_SCRIPT), *_metrics_args(setup, str(setup / "student"), out), "--max_clips", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=str(setup))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads(out.read_text())
    one = single_run
    assert two["n_clips"] == 3 and two["settings"]["world_size"] == 2
    for a, b in zip(one["clips"], two["clips"], strict=True):
        assert a["clip_id"] == b["clip_id"] and a["path"] == b["path"] and a["start"] == b["start"]
        for who in ("teacher", "student"):
            for m in ("psnr", "ssim", "lpips"):
                assert a[who][m] == pytest.approx(b[who][m], abs=1e-6, rel=1e-6), (a["clip_id"], who, m)
    for who in ("teacher", "student"):
        for m in ("psnr", "ssim", "lpips", "rfvd"):
            assert one[who][m] == pytest.approx(two[who][m], abs=1e-6, rel=1e-6), (who, m)
    assert "| teacher (taef2) |" in proc.stdout


def test_metrics_teacher_vs_itself(setup):
    from train_vae.validation_metrics import main
    out = setup / "teacher.json"
    r = main(_metrics_args(setup, "teacher", out) + ["--max_clips", "2"])
    assert r == json.loads(out.read_text())
    assert r["retention"] == {"psnr": 1.0, "ssim": 1.0}
    assert r["student"] == r["teacher"]
    assert abs(r["fvd_student_vs_teacher"]) < 1e-3
    assert r["teacher"]["rfvd"] > 1.0  # reconstructions differ from the ground truth


# ---------------------------------------------------------------------------------------------
# validation_videos
# ---------------------------------------------------------------------------------------------

def _probe(path: Path) -> tuple[int, int, int]:
    import av
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


def test_output_size_and_names():
    from validation_videos import clip_names, output_size
    assert output_size(720, 1280, 8, 256) == ((256, 455), (256, 448))
    assert output_size(720, 1280, 8, None) == ((720, 1280), (720, 1280))
    assert output_size(100, 64, 8, None) == ((100, 64), (96, 64))
    assert output_size(1080, 1920, 32, 256) == ((256, 455), (256, 448))
    assert clip_names(["a/clip.mp4", "b/clip.mp4", "c.mp4"]) == ["a__clip", "b__clip", "c"]
    names = clip_names(["x/clip.mp4", "x/clip.webm", "x__clip.mp4", "y/Clip.mp4"])
    assert len({n.lower() for n in names}) == 4


def test_validation_videos_keep_size_and_collisions(setup, tmp_path):
    from validation_videos import main
    data = tmp_path / "data"
    make_procedural_clips(data / "a", num_clips=1, num_frames=12, size=(64, 100))  # a/procedural_000.mp4
    make_procedural_clips(data / "b", num_clips=1, num_frames=12, size=(64, 64), seed=1)  # b/procedural_000.mp4
    out = tmp_path / "out"
    # small tiles and frame chunks: exercises tiled student decoding and chunked teacher encode/decode
    rows = main(["--config", "taef2", "--student", str(setup / "student"), "--data_dir", str(data),
                 "--output_dir", str(out), "--num_frames", "9", "--keep_size", "--tile_pixels", "48",
                 "--tile_overlap", "16", "--chunk_pixels", "10000", "--threads", "1"])
    assert [r["name"] for r in rows] == ["a__procedural_000", "b__procedural_000"]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["a__procedural_000.mp4", "b__procedural_000.mp4"]
    assert _probe(out / "a__procedural_000.mp4") == (9, 3 * 96, 64)  # 100 -> 96 (multiple of 8), aspect kept
    assert _probe(out / "b__procedural_000.mp4") == (9, 3 * 64, 64)
    assert (out / "a__procedural_000.png").stat().st_size > 0 and (out / "b__procedural_000.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["clips"]] == ["a__procedural_000", "b__procedural_000"]
    for r in rows:
        assert r["teacher_psnr"] > 20 > r["student_psnr"]
    assert "a__procedural_000" in (out / "summary.md").read_text()


def test_validation_videos_single_file_resolution(setup, tmp_path):
    from PIL import Image

    from validation_videos import main
    path = make_procedural_clips(tmp_path / "data", num_clips=1, num_frames=10, size=(64, 100))[0]
    out = tmp_path / "out"
    rows = main(["--config", "taef2", "--student", "teacher", "--data_dir", str(path), "--output_dir", str(out),
                 "--num_frames", "9", "--resolution", "48"])
    assert len(rows) == 1 and rows[0]["name"] == "procedural_000"
    # 64x100 -> short side 48: 48x75 -> centre crop to multiples of 8: 48x72
    assert (rows[0]["height"], rows[0]["width"]) == (48, 72)
    assert _probe(out / "procedural_000.mp4") == (9, 3 * 72, 48)
    assert rows[0]["student_psnr"] == rows[0]["teacher_psnr"]
    with Image.open(out / "procedural_000.png") as im:
        assert im.width > 3 * 72 and im.height > 3 * 48
