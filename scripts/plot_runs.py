"""Held-out PSNR of several training runs against wall time (setup, latent caching and derivation included).

    python scripts/plot_runs.py outputs/flash_taef2 outputs/taef2 --labels derived "from scratch" \
        --output runs.png --target 0.95

Writes the plot and prints a markdown table of each run's held-out PSNR (and retention) at the given minutes
(the last validation at or before each mark).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.cli import ArgumentParser, UserError, check_output_file, run, user_errors  # noqa: E402
from train_vae.plots import held_out_curve, plot_runs, read_log  # noqa: E402


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training output folders (with log.jsonl)")
    ap.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    ap.add_argument("--output", required=True, help="PNG to write")
    ap.add_argument("--target", type=float, help="draw this fraction of the teacher's PSNR, e.g. 0.95")
    ap.add_argument("--minutes", default="5,10,15,20,25,30", help="table columns (minutes)")
    args = ap.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"--labels: {len(labels)} labels for {len(args.runs)} runs; give one label per run")
    with user_errors():
        check_output_file(args.output, "--output")
        runs = {label: read_log(folder) for label, folder in zip(labels, args.runs)}
    plot_runs(runs, Path(args.output), args.target)
    marks = [float(m) for m in args.minutes.split(",")]
    print("| run | teacher | " + " | ".join(f"{m:g} min" for m in marks) + " |")
    print("|---" * (len(marks) + 2) + "|")
    for label, rows in runs.items():
        curve = held_out_curve(rows)
        teacher = next((r["teacher_val_psnr"] for r in rows if "teacher_val_psnr" in r), None)
        cells = []
        for m in marks:
            seen = [p for t, p in curve if t <= m]
            cells.append("-" if not seen else f"{seen[-1]:.2f}" + (f" ({100 * seen[-1] / teacher:.1f}%)" if teacher else ""))
        print(f"| {label} | {'-' if teacher is None else f'{teacher:.2f}'} | " + " | ".join(cells) + " |")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
