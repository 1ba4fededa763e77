"""Training curves: losses (left, log scale) and held-out PSNR of the EMA student vs the teacher (right)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from models.files import atomic_file  # noqa: E402

LOSS_KEYS = ("loss", "l1", "lpips", "g_adv", "d_loss")


def _save_png(fig, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically (a reader never sees half a plot), and close it."""
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def plot_training(history: list[dict], path: Path, teacher_psnr: float | None = None) -> None:
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in LOSS_KEYS if any(k in r for r in history)]
    keys += sorted({k for r in history for k in r if k.startswith("distill_")})
    for k in keys:
        rows = [(r["step"], r[k]) for r in history if k in r and r[k] > 0]
        if rows:
            ax_loss.plot(*zip(*rows), label=k)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax_loss.legend(fontsize=8)
    val = [(r["step"], r["val_psnr"]) for r in history if "val_psnr" in r]
    if val:
        ax_psnr.plot(*zip(*val), marker="o", label="student (EMA)")
    if teacher_psnr is not None:
        ax_psnr.axhline(teacher_psnr, color="k", ls="--", label=f"teacher {teacher_psnr:.2f} dB")
        ax_psnr.axhline(0.75 * teacher_psnr, color="gray", ls=":", label="75% of teacher")
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="held-out PSNR")
    ax_psnr.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of a training run's ``log.jsonl``."""
    import json
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no log.jsonl: not a training output folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held_out_curve(rows: list[dict]) -> list[tuple[float, float]]:
    """(minutes since the run began, held-out PSNR) of every validation row (setup time included)."""
    return [(r["elapsed_s"] / 60, r["val_psnr"]) for r in rows if "val_psnr" in r and "elapsed_s" in r]


def plot_runs(runs: dict[str, list[dict]], path: Path, target: float | None = None) -> None:
    """Held-out PSNR against wall time for several runs (label -> log rows), with each run's teacher line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    teachers = {}
    for label, rows in runs.items():
        curve = held_out_curve(rows)
        if curve:
            ax.plot(*zip(*curve), marker="o", ms=3, label=label)
        teacher = next((r["teacher_val_psnr"] for r in rows if "teacher_val_psnr" in r), None)
        if teacher is not None:
            teachers[round(teacher, 3)] = teacher
    for teacher in teachers.values():
        ax.axhline(teacher, color="k", ls="--", lw=1, label=f"teacher {teacher:.2f} dB")
        if target:
            ax.axhline(target * teacher, color="gray", ls=":", lw=1, label=f"{100 * target:.0f}% of teacher")
    ax.set(xlabel="wall time (minutes, setup included)", ylabel="held-out PSNR (dB)",
           title="held-out PSNR of the EMA student")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)
