"""The paper's reconstruction table (Tables 3/4): several (config, student) pairs evaluated on one dataset.

    python scripts/reconstruction_table.py --pair ltx=outputs/ltx/student --pair hunyuan=outputs/hunyuan/student \\
        --data /data/ucfTrainTestlist/testlist01.txt --output tables/ucf101
    python scripts/reconstruction_table.py --pair taef2=outputs/taef2/student --data clips/ --output tables/clips

``--data``: a folder of videos (searched recursively) or one video, a UCF-101 split list (``testlist01.txt``:
``Class/v_Class_g01_c01.avi`` lines; videos under ``--video_root``, default the list's folder or its sibling
``UCF-101/``), or a DAVIS-2017 folder (``JPEGImages/480p/<sequence>/00000.jpg``). Every pair sees the same clips
(``--clips_per_video`` windows of each video, the first ``--max_clips``), ``--num_frames`` x ``--resolution``
(default: the first config's ``num_frames`` and ``train.resolution``; the paper's 17 x 256 x 256); per pair the
teacher encodes each clip once and teacher and student decode the same latents (``validation_metrics.py``'s
evaluation: PSNR, SSIM, LPIPS-alex, rFVD with I3D). ``STUDENT`` may be ``teacher`` (the teacher against itself).

Writes OUTPUT.md, OUTPUT.csv and OUTPUT.json: per pair a teacher row and a student row (decoder parameters,
PSNR, SSIM, LPIPS, rFVD) and the student's share of the teacher's parameters and retention of PSNR / SSIM.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.cli import ArgumentParser, UserError, check_output_file, run, user_errors  # noqa: E402
from models.files import atomic_write  # noqa: E402
from train_vae import validation_metrics as vm  # noqa: E402
from train_vae.settings import clip_size  # noqa: E402

COLUMNS = ("config", "decoder", "params_m", "params_share", "psnr", "ssim", "lpips", "rfvd", "psnr_retention",
           "ssim_retention")


def parse_pair(text: str) -> tuple[str, str]:
    config, eq, student = text.partition("=")
    if not eq or not config or not student:
        raise UserError(f"--pair {text}: expected CONFIG=STUDENT, e.g. ltx=outputs/ltx/student or taef2=teacher")
    return config, student


def evaluate_pair(cfg: dict, trained, clips: list, num_frames: int, resolution: int, device: torch.device,
                  lpips, i3d) -> dict:
    """Teacher and student metrics of one pair on ``clips`` (validation_metrics' per-clip evaluation)."""
    from models.config import load_teacher
    teacher = load_teacher(cfg).to(device).eval()
    student = teacher if trained is None else trained.to(device).eval()
    with user_errors():
        vm.check_geometry(teacher, student, num_frames, resolution, resolution)
    args = SimpleNamespace(resolution=resolution)
    t0 = time.time()
    rows, feats, skipped = vm._evaluate(clips, args, teacher, student, lpips, i3d, device, show_bar=True,
                                        desc=cfg["name"])
    if not rows:
        raise RuntimeError(f"{cfg['name']}: no clip could be evaluated; skipped: {skipped}")
    summary = vm.summarize(rows, feats if i3d is not None else None)
    t_params = teacher.decoder_parameters()
    s_params = t_params if student is teacher else sum(p.numel() for p in student.parameters())
    return {"config": cfg["name"], "teacher_class": cfg["teacher"]["class"], "teacher_params": t_params,
            "student_params": s_params, "params_share": s_params / t_params, **summary,
            "skipped": skipped, "wall_s": round(time.time() - t0, 1), "clips": rows}


def rows_of(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        for who in ("teacher", "student"):
            m = r[who]
            out.append({"config": r["config"], "decoder": f"{who} ({r['teacher_class']})" if who == "teacher" else who,
                        "params_m": r[f"{who}_params"] / 1e6,
                        "params_share": 1.0 if who == "teacher" else r["params_share"],
                        "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m["lpips"], "rfvd": m["rfvd"],
                        "psnr_retention": None if who == "teacher" else r["retention"]["psnr"],
                        "ssim_retention": None if who == "teacher" else r["retention"]["ssim"]})
    return out


def markdown(results: list[dict], meta: dict) -> str:
    f = vm._fmt
    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"{meta['n_clips']} clips of {meta['data']} ({meta['layout']}), {meta['num_frames']} frames at "
             f"{meta['resolution']}x{meta['resolution']}", "",
             "| config | decoder | params | share | PSNR ↑ | SSIM ↑ | LPIPS ↓ | rFVD ↓ | PSNR retention | SSIM retention |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows_of(results):
        lines.append(f"| {row['config']} | {row['decoder']} | {row['params_m']:.2f}M | {pct(row['params_share'])} | "
                     f"{f(row['psnr'], 2)} | {f(row['ssim'], 4)} | {f(row['lpips'], 4)} | {f(row['rfvd'], 2)} | "
                     f"{pct(row['psnr_retention'])} | {pct(row['ssim_retention'])} |")
    notes = sorted({r["fvd_note"] for r in results if r.get("fvd_note")})
    return "\n".join(lines + [""] + [f"note: {n}" for n in notes]).rstrip() + "\n"


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for row in rows_of(results):
        w.writerow(row)
    return buf.getvalue()


def main(argv=None) -> dict:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", required=True, metavar="CONFIG=STUDENT",
                    help="a config and its student (save_pretrained folder, run folder, or 'teacher'); repeat")
    ap.add_argument("--data", required=True, help="video folder or file, UCF-101 list (.txt) or DAVIS-2017 folder")
    ap.add_argument("--video_root", help="UCF-101: the folder holding the class folders")
    ap.add_argument("--output", required=True, help="OUTPUT.md, OUTPUT.csv and OUTPUT.json are written")
    ap.add_argument("--num_frames", type=int, help="frames per clip (default: the first config's)")
    ap.add_argument("--resolution", type=int, help="square clip size (default: the first config's train.resolution)")
    ap.add_argument("--clips_per_video", type=int, default=1)
    ap.add_argument("--max_clips", type=int)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--fvd_weights", help="I3D weights (default: the registry's i3d_kinetics400)")
    args = ap.parse_args(argv)
    pairs = [parse_pair(p) for p in args.pair]
    requests = []
    with user_errors():
        for config, student in pairs:
            cfg, trained, _ = vm.check_request(config, student, args.data, args.num_frames, args.resolution)
            requests.append((cfg, trained))
        first = requests[0][0]
        frames, size = clip_size(first)
        num_frames = args.num_frames or frames
        resolution = args.resolution or size
        for cfg, _ in requests[1:]:  # every pair must take the same clips
            vm.check_request(cfg["path"], "teacher", args.data, num_frames, resolution)
        out = Path(args.output)
        for suffix in (".md", ".csv", ".json"):
            check_output_file(out.with_suffix(suffix), "--output")
        layout = vm.data_layout(args.data)
        clips = vm.list_dataset_clips(args.data, num_frames, args.clips_per_video, args.max_clips, args.video_root)
    if not clips:
        raise UserError(f"--data {args.data}: no clips of {num_frames} frames found")
    from train_vae.i3d import I3DFeatureExtractor
    from train_vae.lpips import LPIPS
    device = torch.device(args.device)
    lpips = LPIPS(net="alex").to(device)
    i3d = I3DFeatureExtractor(args.fvd_weights).to(device) if num_frames >= vm.I3D_MIN_FRAMES else None
    results = []
    for (config, student), (cfg, trained) in zip(pairs, requests):
        results.append({"student_path": student, **evaluate_pair(cfg, trained, clips, num_frames, resolution, device,
                                                            lpips, i3d)})
    meta = {"data": str(args.data), "layout": layout, "n_clips": len(clips), "num_frames": num_frames,
            "resolution": resolution, "clips_per_video": args.clips_per_video, "max_clips": args.max_clips,
            "device": args.device, "torch": torch.__version__}
    md = markdown(results, meta)
    atomic_write(out.with_suffix(".md"), md)
    atomic_write(out.with_suffix(".csv"), to_csv(results))
    atomic_write(out.with_suffix(".json"), json.dumps({"settings": meta, "results": results}, indent=1))
    print(md)
    return {"settings": meta, "results": results}


if __name__ == "__main__":
    sys.exit(run(main))
