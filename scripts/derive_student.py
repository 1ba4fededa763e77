"""Derive a student from its teacher (no training) and measure it on held-out clips at "step 0".

    python scripts/derive_student.py --config flash_taef2 --data_dir "$TURBO_VAED_ASSETS/clips" --output derived/
    python scripts/derive_student.py --config flash_taef2 --data_dir DIR --compare --json step0.json
    python scripts/derive_student.py --config flash_taef2 --data_dir DIR --operators dw3,dw5

The data, split and calibration are the training run's (``train_vae/train.py``, the config's ``train:`` section):
calibration latents from the training clips (``--latents_dir``: a latent cache written by a training run, else
encoded now), the centred windows of the held-out clips for the measurement. Reported: PSNR against the real
frames per held-out clip, and its mean as a fraction of the teacher's on the same latents (retention).
``--compare``: every channel selection x compensation (independence / l1 / random x refit / fold / none) at the
config's widths. ``--operators OPS``: each operator in OPS on one stage at a time, at the teacher's full width,
with and without refit (the output error a replacement adds before training). ``--output`` saves the student
derived with the config's settings (``DerivedStudent.from_pretrained``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.cli import ArgumentParser, check_writable_dir, run, user_errors  # noqa: E402
from models.config import is_derived, load_config, load_teacher, teacher_config_of  # noqa: E402
from models.derived import COMPENSATIONS, SELECTIONS, derive, student_kwargs  # noqa: E402
from train_vae.data import VideoDataset, VideoIndex, split_files  # noqa: E402
from train_vae.metrics import psnr, to_unit  # noqa: E402
from train_vae.settings import from_config  # noqa: E402
from train_vae.train import calibration_latents, holdout_windows  # noqa: E402


def measure(decode, latents: torch.Tensor, videos: torch.Tensor) -> list[float]:
    with torch.no_grad():
        rec = torch.cat([decode(z[None]).clamp(-1, 1) for z in latents])
    return psnr(to_unit(rec), to_unit(videos)).tolist()


def row(label: str, per_clip: list[float], teacher: list[float], seconds: float | None = None) -> dict:
    return {"setting": label, "psnr": sum(per_clip) / len(per_clip), "retention": sum(per_clip) / sum(teacher),
            "per_clip": per_clip, "seconds": seconds}


def table(rows: list[dict], clips: list[str], teacher: list[float]) -> str:
    names = [Path(c).stem[:24] for c in clips]
    lines = ["| setting | mean PSNR | retention | " + " | ".join(names) + " | seconds |",
             "|---" * (len(names) + 4) + "|",
             f"| teacher | {sum(teacher) / len(teacher):.2f} | 100% | " + " | ".join(f"{t:.2f}" for t in teacher)
             + " | |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['psnr']:.2f} | {100 * r['retention']:.1f}% | "
                     + " | ".join(f"{p:.2f} ({100 * p / t:.0f}%)" for p, t in zip(r["per_clip"], teacher))
                     + " | " + ("" if r["seconds"] is None else f"{r['seconds']:.0f}") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a config with a teacher-derived student (flash_*)")
    ap.add_argument("--data_dir", required=True, help="video folder (the training run's)")
    ap.add_argument("--latents_dir", help="latent cache of a training run of this config (else encoded now)")
    ap.add_argument("--selection", choices=SELECTIONS, help="default: the config's")
    ap.add_argument("--compensation", choices=COMPENSATIONS, help="default: the config's")
    ap.add_argument("--compare", action="store_true", help="every selection x compensation")
    ap.add_argument("--operators", help="comma-separated operators to try one stage at a time, e.g. dw3,dw5")
    ap.add_argument("--output", help="save the derived student (config's settings) here")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with user_errors():
        cfg = load_config(args.config)
        if not is_derived(cfg):
            raise ValueError(f"config {cfg['name']} has a Turbo-VAED student; use a flash_* config")
        s, _ = from_config(cfg)
        index = VideoIndex(args.data_dir, num_frames=s.num_frames, frame_stride=s.frame_stride)
        train_files, holdout_files = split_files(index, s.num_holdout, s.seed)
        if args.output:
            check_writable_dir(args.output, "--output")
    teacher = load_teacher(cfg)
    clips, videos, latents = holdout_windows(index, holdout_files, teacher, s.num_frames, s.resolution,
                                             s.frame_stride)
    if args.latents_dir:
        from train_vae.latent_dataset import LatentDataset
        train_set = LatentDataset(args.latents_dir, args.data_dir)
    else:
        train_set = VideoDataset(args.data_dir, num_frames=s.num_frames, resolution=s.resolution,
                                 frame_stride=s.frame_stride, train=True, files=train_files, seed=s.seed,
                                 clips_per_video=s.clips_per_video, index=index)
    calib = calibration_latents(train_set, teacher, s.calibration_samples, s.calibration_frames, s.seed)
    kwargs = student_kwargs(cfg, teacher_config_of(teacher))
    teacher_psnr = measure(teacher.decode, latents, videos)
    print(f"teacher {sum(teacher_psnr) / len(teacher_psnr):.2f} dB on {len(clips)} held-out clips; "
          f"calibration latents {tuple(calib.shape)}", file=sys.stderr)

    def run(label, kw, selection, compensation):
        t0 = time.perf_counter()
        student, report = derive(teacher, kw, calib, selection, compensation, seed=s.seed)
        r = row(label, measure(student, latents, videos), teacher_psnr, time.perf_counter() - t0)
        r["derivation"] = report.summary()
        print(f"{label}: {r['psnr']:.2f} dB ({100 * r['retention']:.1f}%)", file=sys.stderr, flush=True)
        return r, student

    selection, compensation = args.selection or s.selection, args.compensation or s.compensation
    rows = []
    grid = ([(a, b) for a in SELECTIONS for b in COMPENSATIONS] if args.compare else [(selection, compensation)])
    for a, b in grid:
        r, student = run(f"{a} + {b}", kwargs, a, b)
        rows.append(r)
        if args.output and (a, b) == (selection, compensation):
            student.save_pretrained(args.output)
            print(f"saved {args.output}", file=sys.stderr)
    if args.operators:
        full = dict(kwargs, widths=None, inner=None)
        for op in args.operators.split(","):
            for stage in kwargs["operators"]:
                ops = {st: ("dense" if st != stage else op) for st in kwargs["operators"]}
                for comp in ("none", "refit"):
                    r, _ = run(f"{stage}: {op}, full width, {comp}", dict(full, operators=ops), selection, comp)
                    rows.append(r)
    print(table(rows, clips, teacher_psnr))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg["name"], "clips": clips, "teacher_psnr": teacher_psnr,
                                               "calibration_latents": list(calib.shape), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
