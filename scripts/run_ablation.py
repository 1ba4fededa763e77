"""Run the rows of an ablation (configs/ablations/*.yaml) on one base config and write one table.

    python scripts/run_ablation.py configs/ablations/kernel_size.yaml --config taef2 --data_dir DIR \\
        --output_dir outputs/ablation_kernel -- --max_steps 200 --seed 0

An ablation file lists runs, each a name, ``set`` (``--set KEY=VALUE`` edits of the base config, see
train_vae/settings.py) and, for Table 6, ``align`` (the student blocks whose base-config pairs are distilled; ``all``
keeps every pair, ``[]`` none). So one file serves every teacher. Each run is ``train_vae/train.py --config BASE``
in OUTPUT_DIR/<run name>, all with the same further arguments (after ``--``: equal steps, seed, data) and one latent
cache (OUTPUT_DIR/latents, when the base config caches latents); a run whose ``final_metrics.json`` exists is
kept unless ``--rerun``. The table (OUTPUT_DIR/table.md and table.csv) has one row per run: student parameters,
steps, minutes, held-out PSNR / LPIPS of student and teacher, PSNR retention, read from each ``final_metrics.json``.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.cli import ArgumentParser, UserError, check_writable_dir, run, user_errors  # noqa: E402
from models.config import load_config  # noqa: E402
from train_vae.settings import apply_overrides  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("run", "overrides", "student_params", "steps", "minutes", "student_psnr", "student_lpips", "teacher_psnr",
           "teacher_lpips", "psnr_retention")


def load_ablation(path: str | Path) -> dict:
    """The ablation file, checked: a ``runs`` list of {name, set, align}, names unique and usable as folders."""
    p = Path(path)
    if not p.is_file():
        p2 = REPO / "configs" / "ablations" / f"{path}.yaml"
        if not p2.is_file():
            known = sorted(q.stem for q in (REPO / "configs" / "ablations").glob("*.yaml"))
            raise ValueError(f"ablation {path}: no such file; pass a path or one of {', '.join(known)}")
        p = p2
    spec = yaml.safe_load(p.read_text()) or {}
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"ablation {p}: expected a non-empty 'runs' list")
    names = []
    for r in runs:
        unknown = set(r) - {"name", "set", "align"}
        if "name" not in r or unknown or "/" in str(r["name"]):
            raise ValueError(f"ablation {p}: each run needs a name (no '/') and only set/align, got {r}")
        names.append(str(r["name"]))
    if len(set(names)) != len(names):
        raise ValueError(f"ablation {p}: run names repeat ({names})")
    return {"table": spec.get("table", p.stem), "runs": runs, "path": str(p)}


def run_overrides(cfg: dict, run_spec: dict) -> list[str]:
    """The ``--set`` items of one run on base config ``cfg`` (its ``align`` turned into the base's pairs),
    checked against the config now, before any training."""
    items = [str(x) for x in run_spec.get("set", [])]
    if "align" in run_spec and run_spec["align"] != "all":
        blocks = list(run_spec["align"])
        pairs = [a for a in cfg["align"] if a["student"] in blocks]
        missing = sorted(set(blocks) - {a["student"] for a in pairs})
        if missing:
            raise ValueError(f"run {run_spec['name']}: config {cfg['name']} aligns no {', '.join(missing)} "
                             f"(its pairs: {[a['student'] for a in cfg['align']]})")
        items.append("align=" + json.dumps(pairs))
    apply_overrides(cfg, items)
    return items


def table(title: str, rows: list[dict]) -> tuple[str, str]:
    """(markdown, csv) of the rows (``COLUMNS``)."""
    def fmt(v, nd):
        return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))
    md = [f"{title}", "", "| run | overrides | student params | steps | minutes | PSNR | LPIPS | teacher PSNR | "
          "teacher LPIPS | retention |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['run']} | {'<br>'.join(r['overrides']) or '(base)'} | {r['student_params']:,} | {r['steps']} | "
                  f"{fmt(r['minutes'], 1)} | {fmt(r['student_psnr'], 2)} | {fmt(r['student_lpips'], 4)} | "
                  f"{fmt(r['teacher_psnr'], 2)} | {fmt(r['teacher_lpips'], 4)} | "
                  f"{100 * r['psnr_retention']:.1f}% |")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "overrides": " ".join(r["overrides"])})
    return "\n".join(md) + "\n", buf.getvalue()


def row_of(name: str, items: list[str], metrics: dict) -> dict:
    return {"run": name, "overrides": items, "student_params": metrics["student_params"], "steps": metrics["step"],
            "minutes": metrics["wall_s"] / 60, "student_psnr": metrics["student_psnr"],
            "student_lpips": metrics["student_lpips"], "teacher_psnr": metrics["teacher_psnr"],
            "teacher_lpips": metrics["teacher_lpips"], "psnr_retention": metrics["psnr_retention"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    argv, train_args = argv[:split], argv[split + 1:]
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ablation", help="configs/ablations/NAME.yaml, or NAME")
    ap.add_argument("--config", required=True, help="base config (configs/NAME.yaml or a path)")
    ap.add_argument("--output_dir", required=True, help="one folder per run, the latent cache and the table")
    ap.add_argument("--data_dir", help="video folder (default: train.py's demo data)")
    ap.add_argument("--only", nargs="+", help="run these rows only (names)")
    ap.add_argument("--rerun", action="store_true", help="train again even where final_metrics.json exists")
    args = ap.parse_args(argv)
    with user_errors():
        spec = load_ablation(args.ablation)
        cfg = load_config(args.config)
        runs = [r for r in spec["runs"] if not args.only or str(r["name"]) in args.only]
        if not runs:
            raise ValueError(f"--only {args.only}: no such run in {spec['path']}")
        plan = [(str(r["name"]), run_overrides(cfg, r)) for r in runs]
        out = check_writable_dir(args.output_dir, "--output_dir")
        if args.data_dir:
            args.data_dir = str(Path(args.data_dir).resolve())
    rows = []
    for name, items in plan:
        folder = out / name
        metrics_file = folder / "final_metrics.json"
        if args.rerun or not metrics_file.is_file():
            cmd = [sys.executable, str(REPO / "train_vae" / "train.py"), "--config", args.config,
                   "--output_dir", str(folder), "--report_to", "none", *train_args]
            cmd += ["--data_dir", args.data_dir] if args.data_dir else []
            if cfg.get("train", {}).get("cache_latents"):
                cmd += ["--latents_dir", str(out / "latents")]  # one cache: the runs differ in the student only
            cmd += ["--set", *items] if items else []
            print(f"[{name}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            if subprocess.run(cmd).returncode != 0:
                raise UserError(f"run {name} failed (its output is above); fix it and run the same command again "
                                f"(finished runs are kept)")
        rows.append(row_of(name, items, json.loads(metrics_file.read_text())))
    md, csv_text = table(f"{spec['table']} (base config {cfg['name']})", rows)
    (out / "table.md").write_text(md)
    (out / "table.csv").write_text(csv_text)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
