"""Print, for every config, teacher and student decoder parameters and multiply-accumulates, their ratios,
latent channels and compression. MACs are counted on the meta device (no weights, no compute) for one decode
of ``--frames`` x ``--resolution`` (default 17 x 256 x 256), or of the next size the student produces (20 frames
for a 4x student without a first frame alone; a multiple of 32 pixels for 32x students): the ``decode`` column.
``--json`` prints a JSON list with keys config, teacher, student_type, teacher_decoder_params,
student_decoder_params, ratio, decode, teacher_gmacs, student_gmacs, mac_ratio, latent_channels, compression."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import count_macs, meta_copy, parse_resolution  # noqa: E402

from models.cli import ArgumentParser, run, user_errors  # noqa: E402
from models.config import (build_student, config_names, default_teacher_config, has_teacher, is_derived,  # noqa: E402
                           load_config, teacher_decoder_params)
from models.teachers import diffusers_class  # noqa: E402


def teacher_gmacs(cfg: dict, z: torch.Tensor) -> float | None:
    """The teacher's default-config decode of ``z`` (meta latents), in GMACs; None without a public teacher."""
    kind = cfg["teacher"]["class"]
    if not has_teacher(cfg):
        return None
    if kind == "TAEF2":
        from models.taef2 import taef2_decoder
        with torch.device("meta"):
            dec = taef2_decoder()
        b, c, t, h, w = z.shape
        return count_macs(dec, z.transpose(1, 2).reshape(b * t, c, h, w)) / 1e9
    with torch.device("meta"):
        vae = diffusers_class(kind)(**default_teacher_config(cfg)).eval()
    return count_macs(lambda x: vae.decode(x, return_dict=False), z) / 1e9


def summarize(names: list[str], frames: int = 17, height: int = 256, width: int = 256) -> list[dict]:
    rows = []
    for name in names:
        cfg = load_config(name)
        student = build_student(cfg)
        s = sum(p.numel() for p in student.parameters())
        t = teacher_decoder_params(cfg)
        if tuple(student.compression) != tuple(cfg["compression"]):
            raise ValueError(f"{name}: student compression {student.compression} != config {cfg['compression']}")
        _, ch, cw = student.compression
        latent_t = 1
        while student.num_output_frames(latent_t) < frames:  # the next frame count the student produces
            latent_t += 1
        shape = student.latent_shape_for(student.num_output_frames(latent_t), -(-height // ch) * ch, -(-width // cw) * cw)
        z = torch.zeros(shape, device="meta")
        s_macs = count_macs(meta_copy(student), z) / 1e9  # one pass: the streamed decode does the same convolutions
        t_macs = teacher_gmacs(cfg, z)
        rows.append({"config": name, "teacher": cfg["teacher"]["class"],
                     "student_type": "derived" if is_derived(cfg) else "turbo-vaed", "teacher_decoder_params": t,
                     "student_decoder_params": s, "ratio": s / t, "teacher_gmacs": t_macs, "student_gmacs": s_macs,
                     "mac_ratio": None if t_macs is None else t_macs / s_macs, "latent_channels": cfg["latent_channels"],
                     "compression": list(cfg["compression"]),
                     "decode": [student.num_output_frames(latent_t), shape[-2] * ch, shape[-1] * cw]})
    return rows


def main(argv=None):
    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--config", action="append", help="restrict to these configs (repeatable)")
    ap.add_argument("--frames", type=int, default=17, help="frames of the decode the MACs are counted for")
    ap.add_argument("--resolution", default="256", help="H or HxW of that decode")
    args = ap.parse_args(argv)
    h, w = parse_resolution(args.resolution)
    with user_errors():
        for name in args.config or []:
            load_config(name)  # an unknown config fails here, in one line
    rows = summarize(args.config or config_names(), args.frames, h, w)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"MACs: one decode of {args.frames} x {h} x {w} (diffusers' default decode for teachers)\n")
    print("| config | student | teacher | teacher decoder | student decoder | student/teacher | decode | teacher GMACs "
          "| student GMACs | MAC ratio | latent ch | compression |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tm = "-" if r["teacher_gmacs"] is None else f"{r['teacher_gmacs']:,.0f}"
        mr = "-" if r["mac_ratio"] is None else f"{r['mac_ratio']:.1f}x"
        print(f"| {r['config']} | {r['student_type']} | {r['teacher']} | {r['teacher_decoder_params'] / 1e6:.1f}M | "
              f"{r['student_decoder_params'] / 1e6:.2f}M | {100 * r['ratio']:.1f}% | {'x'.join(map(str, r['decode']))} | {tm} | {r['student_gmacs']:,.1f} | "
              f"{mr} | {r['latent_channels']} | {'x'.join(map(str, r['compression']))} |")


if __name__ == "__main__":
    sys.exit(run(main))
