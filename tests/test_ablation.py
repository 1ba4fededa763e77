"""scripts/run_ablation.py: ablation files that overlay any base config, and one table from the runs'
final_metrics.json (two tiny TAEF2 runs)."""
import csv
import json

import pytest
import torch

from models.config import build_student, load_config
from test_export import script

TINY = ["--resolution", "32", "--num_frames", "3", "--num_holdout", "1", "--max_steps", "2", "--checkpoint_every", "2",
        "--val_every", "2", "--clips_per_video", "2", "--train_crop", "0", "--train_frames", "0"]


@pytest.mark.parametrize("base", ["taef2", "ltx", "hunyuan", "cogvideox", "wan"])
def test_every_ablation_applies_to_every_turbo_vaed_config(base):
    ablation = script("run_ablation")
    from train_vae.settings import apply_overrides
    cfg = load_config(base)
    for name in ("upsampler", "depthwise", "kernel_size", "aligned_blocks", "projection_head"):
        for run in ablation.load_ablation(name)["runs"]:
            edited = apply_overrides(cfg, ablation.run_overrides(cfg, run))
            if name in ("upsampler", "depthwise", "kernel_size"):
                with torch.device("meta"):  # shapes only: a student the edited config can build
                    build_student(edited)
            if run.get("align") not in (None, "all"):
                assert [a["student"] for a in edited["align"]] == run["align"]
                assert all(a in cfg["align"] for a in edited["align"])  # the base config's teacher blocks


def test_ablation_runs_and_writes_one_table(clips, tmp_path, capsys):
    ablation = script("run_ablation")
    out = tmp_path / "abl"
    argv = ["kernel_size", "--config", "taef2", "--output_dir", str(out), "--data_dir", str(clips), "--only", "k3",
            "k5", "--", *TINY]
    assert ablation.main(argv) == 0
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["run"] for r in rows] == ["k3", "k5"] and all(r["steps"] == "2" for r in rows)
    metrics = {r: json.loads((out / r / "final_metrics.json").read_text()) for r in ("k3", "k5")}
    assert int(rows[0]["student_params"]) < int(rows[1]["student_params"])  # 3^3 vs 5^3 depthwise kernels
    assert metrics["k3"]["settings"]["config"] == "taef2"
    assert float(rows[0]["student_psnr"]) == pytest.approx(metrics["k3"]["student_psnr"])
    md = (out / "table.md").read_text()
    assert md.startswith("Table 5: depthwise kernel size (base config taef2)") and "| k3 | student.depthwise_kernel_size=3 |" in md
    stamp = (out / "k3" / "final_metrics.json").stat().st_mtime_ns
    assert ablation.main(argv) == 0 and (out / "k3" / "final_metrics.json").stat().st_mtime_ns == stamp  # kept
    capsys.readouterr()
    from models.cli import run
    assert run(ablation.main, ["kernel_size", "--config", "taef2", "--output_dir", str(out), "--only", "k9"]) == 2
    assert "no such run" in capsys.readouterr().err
