"""Training curves: losses (left, log scale) and held-out PSNR of the EMA student vs the teacher (right)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_KEYS = ("loss", "l1", "lpips", "g_adv", "d_loss")


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
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
