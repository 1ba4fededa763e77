"""benchmark.py at sizes the 32x students do not divide (decode the next multiple, centre-crop) and the paper's
speed table of --all."""
import json

import pytest
import torch

from test_export import script


def test_ltx_student_at_720x1280_decodes_736_and_crops(tmp_path, monkeypatch):
    bench = script("benchmark")
    shapes = []
    real = bench.measure

    def measure(runners, *a):  # the video each runner hands back (the stream runners: its frame count), once
        for fn in runners.values():
            out = fn()
            shapes.append(tuple(out.shape) if isinstance(out, torch.Tensor) else out)
        return real(runners, *a)

    monkeypatch.setattr(bench, "measure", measure)
    out = tmp_path / "ltx.json"
    assert bench.main(["--config", "ltx", "--resolution", "720x1280", "--frames", "1", "--student_only", "--repeats",
                       "1", "--warmup", "0", "--skip_shuffle", "--threads", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["resolution"], res["decoded"], res["frames"]) == ("720x1280", "736x1280", 1)
    assert res["latent_shape"] == [1, 128, 1, 23, 40] and res["student_fps"] > 0
    assert res["student_video_mb"] == 3 * 736 * 1280 * 4 / 2**20  # the decoded video (the crop is a view of it)
    # the plain student and the one through cpu_fast, both cropped, each also as a stream of pieces dropped as they come
    assert shapes == [(1, 3, 1, 720, 1280), 1] * 2
    assert res["student_stream_ms"] > 0 and res["cpu_fast"]["student_stream_ms"] > 0
    assert res["memory"].startswith("glibc, mmap threshold pinned")


def test_speed_table_has_the_paper_columns():
    bench = script("benchmark")
    row = {"config": "ltx", "teacher_params": 238.8e6, "student_params": 41.9e6, "frames": 17, "device": "cuda",
           "dtype": "fp16", "repeats": 5}
    table = bench.speed_table({"512x512": [dict(row, teacher_fps=290.6, student_fps=841.6, speedup=2.9)],
                               "720x1280": [dict(row, teacher_fps=50.0, student_fps=255.6, speedup=5.1)]})
    head, _, line = table.splitlines()[:3]
    assert head == ("| config | teacher params | student params | teacher FPS 512x512 | student FPS 512x512 | "
                    "speed-up 512x512 | teacher FPS 720x1280 | student FPS 720x1280 | speed-up 720x1280 |")
    assert line == "| ltx | 238.8M | 41.9M | 290.60 | 841.60 | 2.9x | 50.00 | 255.60 | 5.1x |"


def test_coreml_benchmark_times_every_compute_unit_after_warmup():
    """export_coreml --benchmark's loop, with a stand-in model and clock (Core ML prediction needs macOS)."""
    coreml = script("export_coreml")
    calls, now = [], [0.0]

    def clock():
        return now[0]

    class Model:
        def __init__(self, unit):
            self.unit, self.n = unit, 0

        def predict(self, feed):
            self.n += 1
            calls.append((self.unit, self.n))
            now[0] += {"ALL": 0.010, "CPU_ONLY": 0.040}[self.unit] * self.n  # each call slower: median counts

    out = coreml.time_compute_units(Model, {"latents": None}, ["ALL", "CPU_ONLY"], warmup=2, repeats=3, frames=17,
                                    clock=clock)
    assert [c for c in calls if c[0] == "ALL"] == [("ALL", i) for i in range(1, 6)]  # 2 warm-up + 3 timed
    assert out["ALL"]["all_ms"] == [30.0, 40.0, 50.0] and out["ALL"]["median_ms"] == pytest.approx(40.0)
    assert out["CPU_ONLY"]["median_ms"] == pytest.approx(160.0) and out["CPU_ONLY"]["fps"] == pytest.approx(17e3 / 160)
    assert coreml.COMPUTE_UNITS == ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def test_coreml_benchmark_on_linux_says_it_needs_macos(monkeypatch, capsys, tmp_path):
    coreml = script("export_coreml")
    monkeypatch.setattr(coreml.platform, "system", lambda: "Linux")
    monkeypatch.setattr(coreml, "convert", lambda *a, **k: type("M", (), {"save": lambda self, p: None})())
    monkeypatch.setattr(coreml, "describe", lambda p: {"inputs": {}, "outputs": {}, "ops": {}, "op_count": 1,
                                                       "const_count": 0, "max_rank": 5})
    rc = coreml.main(["--config", "taef2", "--resolution", "32", "--frames", "1", "--output",
                      str(tmp_path / "m.mlpackage"), "--benchmark"])
    assert rc == 0 and "Core ML prediction needs macOS (this machine runs Linux)" in capsys.readouterr().out
