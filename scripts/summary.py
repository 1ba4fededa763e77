"""Print, for every config, teacher and student decoder parameters, their ratio, latent channels and
compression. ``--json`` prints a JSON list with keys config, teacher_decoder_params,
student_decoder_params, latent_channels, compression (plus ratio)."""
from __future__ import annotations

import argparse
import json

from models.config import build_student, config_names, load_config, teacher_decoder_params


def summarize(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        cfg = load_config(name)
        student = build_student(cfg)
        s = sum(p.numel() for p in student.parameters())
        t = teacher_decoder_params(cfg)
        if tuple(student.compression) != tuple(cfg["compression"]):
            raise ValueError(f"{name}: student compression {student.compression} != config {cfg['compression']}")
        rows.append({"config": name, "teacher": cfg["teacher"]["class"], "teacher_decoder_params": t,
                     "student_decoder_params": s, "ratio": s / t, "latent_channels": cfg["latent_channels"],
                     "compression": list(cfg["compression"])})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--config", action="append", help="restrict to these configs (repeatable)")
    args = ap.parse_args(argv)
    rows = summarize(args.config or config_names())
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| config | teacher | teacher decoder | student decoder | student/teacher | latent ch | compression |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['teacher']} | {r['teacher_decoder_params'] / 1e6:.1f}M | "
              f"{r['student_decoder_params'] / 1e6:.2f}M | {100 * r['ratio']:.1f}% | {r['latent_channels']} | "
              f"{'x'.join(map(str, r['compression']))} |")


if __name__ == "__main__":
    main()
