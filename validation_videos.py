"""Side-by-side validation videos: ground truth | teacher | student.

    python validation_videos.py --config CONFIG --student DIR --data_dir DIR_OR_FILE --output_dir DIR \\
        [--num_frames N] [--resolution R | --keep_size] [--max_clips K]

For every video (one centred window of ``num_frames`` frames each) it writes
  * ``OUTPUT_DIR/<clip name>.mp4``: H.264 (libx264, yuv420p) frames of width 3W, ground truth | teacher
    | student, at the source frame rate;
  * ``OUTPUT_DIR/<clip name>.png``: a contact sheet of a few frames (rows ground truth, teacher,
    student, labelled with their PSNR);
  * ``OUTPUT_DIR/summary.md`` and ``summary.json``: per-clip PSNR (and SSIM) of teacher and student,
    also printed. ``--compare_dtype bf16`` (or fp16) also decodes with a copy of the student in that dtype and
    reports its PSNR against the float32 student decode (``student_bf16_vs_fp32_psnr``) and the ground truth.

Clip names are the file stems; files that share a stem (``a/clip.mp4``, ``b/clip.mp4``) are named after
their relative paths (``a__clip``, ``b__clip``), so no output overwrites another.

Sizes keep the aspect ratio: ``--resolution R`` resizes the short side to R (bilinear, antialiased) and
centre-crops each side down to a multiple of the spatial compression (e.g. 1280x720 at R=256 ->
448x256); ``--keep_size`` only centre-crops to such multiples (1280x720 stays 1280x720).

Memory stays bounded at 720p and above: frame-wise teachers (TAEF2) encode and decode a few frames
at a time (exact, since they work per frame); diffusers teachers use their own ``enable_tiling``; the
student decodes as a stream of temporal chunks (``StudentDecoder.decode``: exact, memory bounded in the clip
length) and, when a frame exceeds ``--tile_pixels``^2 pixels, in overlapping spatial tiles blended with
linear ramps (``models.tiling.tiled_decode``).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.tiling import default_tiles, tiled_decode
from models.cli import ArgumentParser, UserError, check_writable_dir, run, user_errors
from models.files import atomic_file
from train_vae.validation_metrics import (add_request_arguments, check_geometry, check_request, list_clips,
                                          read_clip_frames, resize_crop_video)

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["clip_names", "output_size", "encode_bounded", "decode_teacher", "decode_student", "write_video",
           "contact_sheet", "main"]


# ---------------------------------------------------------------------------------------------
# names and sizes
# ---------------------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "clip"


def clip_names(paths: Sequence[str]) -> list[str]:
    """Unique output names: the stem when unique, else the relative path without extension joined by
    ``__``; then the extension; then a counter."""
    stems = [_safe(Path(p).stem) for p in paths]
    counts = Counter(stems)
    names = [s if counts[s] == 1 else _safe(str(Path(p).with_suffix("")).replace("\\", "/").replace("/", "__"))
             for p, s in zip(paths, stems)]
    counts = Counter(names)
    names = [n if counts[n] == 1 else _safe(f"{n}_{Path(p).suffix.lstrip('.')}") for p, n in zip(paths, names)]
    out, seen = [], set()
    for n in names:
        cand, k = n, 1
        while cand.lower() in seen:  # case-insensitive file systems
            k += 1
            cand = f"{n}_{k}"
        seen.add(cand.lower())
        out.append(cand)
    return out


def output_size(height: int, width: int, multiple: int | tuple[int, int], resolution: int | None
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(scale_size, crop_size)``: resize the frame to ``scale_size`` (short side = ``resolution``,
    aspect kept; the frame's own size when ``resolution`` is None) and centre-crop to ``crop_size``, the
    largest multiples of ``multiple`` (h, w) that fit."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    if resolution is None:
        rh, rw = height, width
    else:
        s = resolution / min(height, width)
        rh, rw = (resolution, max(resolution, round(width * s))) if height <= width else \
            (max(resolution, round(height * s)), resolution)
    ch, cw = rh // mh * mh, rw // mw * mw
    if ch < mh or cw < mw:
        raise ValueError(f"frame {width}x{height} (resized to {rw}x{rh}) is smaller than one latent pixel "
                         f"({mw}x{mh})")
    return (rh, rw), (ch, cw)


# ---------------------------------------------------------------------------------------------
# bounded-memory encode / decode
# ---------------------------------------------------------------------------------------------

def _is_framewise(teacher) -> bool:
    from models.teachers import TAEF2Teacher
    return isinstance(teacher, TAEF2Teacher)


def _enable_vae_tiling(teacher) -> None:
    vae = getattr(teacher, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()


def _frame_chunk(teacher, height: int, width: int, chunk_pixels: int) -> int:
    """Frames per chunk for a frame-wise teacher: as many as fit ``chunk_pixels`` (at least one)."""
    ct = teacher.compression[0]
    return max(ct, (max(1, chunk_pixels // (height * width)) // ct) * ct)


@torch.no_grad()
def encode_bounded(teacher, video: torch.Tensor, chunk_pixels: int = 17 * 256 * 256,
                   tile_pixels: int = 512) -> torch.Tensor:
    """``teacher.encode`` with bounded memory: frame-wise teachers in chunks of frames (exact), diffusers
    teachers with their own tiling when frames are larger than ``tile_pixels``^2."""
    _, _, t, h, w = video.shape
    if _is_framewise(teacher):
        n = _frame_chunk(teacher, h, w, chunk_pixels)
        return torch.cat([teacher.encode(video[:, :, i:i + n]) for i in range(0, t, n)], dim=2)
    if h * w > tile_pixels ** 2:
        _enable_vae_tiling(teacher)
    return teacher.encode(video)


@torch.no_grad()
def decode_teacher(teacher, latents: torch.Tensor, chunk_pixels: int = 17 * 256 * 256, tile_pixels: int = 512,
                   max_frame_pixels: int = 2048 * 1088, overlap_pixels: int = 128) -> torch.Tensor:
    """Teacher decode with bounded memory. Frame-wise teachers decode chunks of frames (exact); only a
    frame above ``max_frame_pixels`` is also tiled spatially (TAEF2's GroupNorm sees the whole frame,
    so spatial tiles change its output slightly). Diffusers teachers use their own tiling."""
    _, _, t, lh, lw = latents.shape
    ct, ch, cw = teacher.compression
    h, w = lh * ch, lw * cw
    if _is_framewise(teacher):
        n = _frame_chunk(teacher, h, w, chunk_pixels) // ct
        if h * w > max_frame_pixels:
            (_, th, tw), (_, oh, ow) = default_tiles(teacher.compression, tile_pixels, overlap_pixels)
        else:
            th = tw = None
            oh = ow = 0
        return tiled_decode(teacher.decode, latents, teacher.compression, (n, th, tw), (0, oh, ow),
                            first_frame_alone=teacher.first_frame_alone)
    if h * w > tile_pixels ** 2:
        _enable_vae_tiling(teacher)
    return teacher.decode(latents)


@torch.no_grad()
def decode_student(student, latents: torch.Tensor, tile_pixels: int = 512, overlap_pixels: int = 128,
                   progress=None) -> torch.Tensor:
    """Student decode, streamed in time (exact); in overlapping spatial tiles when a frame has more than
    ``tile_pixels``^2 pixels."""
    _, _, _, lh, lw = latents.shape
    _, ch, cw = student.compression
    if lh * ch * lw * cw <= tile_pixels ** 2:
        return student.decode(latents)
    tile, overlap = default_tiles(student.compression, tile_pixels, overlap_pixels)
    first_frame_alone = student.num_output_frames(1) == 1  # the first latent frame decodes to one frame
    return tiled_decode(student.decode, latents, student.compression, tile, overlap, first_frame_alone=first_frame_alone,
                        progress=progress)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------

def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_video(path: str | Path, panels: Sequence[np.ndarray], fps: float) -> None:
    """Write panels (each uint8 (T, H, W, 3), same T and H) side by side as an H.264 yuv420p mp4, atomically."""
    import av

    t, h = panels[0].shape[:2]
    w = sum(p.shape[2] for p in panels)
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even sizes, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(24)
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(t):
            frame = np.ascontiguousarray(np.concatenate([p[i] for p in panels], axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def contact_sheet(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], num_frames: int = 4,
                  max_cell_width: int = 320, title: str = "", first_frame: int = 0) -> list[int]:
    """PNG of ``num_frames`` evenly spaced frames (columns) for each (label, uint8 (T, H, W, 3)) row,
    columns labelled with ``first_frame + index`` (the source frame number). Returns the indices shown."""
    from PIL import Image, ImageDraw, ImageFont

    t, h, w = rows[0][1].shape[:3]
    k = max(1, min(num_frames, t))
    idx = sorted({int(round(v)) for v in np.linspace(0, t - 1, k)})
    scale = min(1.0, max_cell_width / w)
    cw, chh = max(1, round(w * scale)), max(1, round(h * scale))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    label_w, head_h, pad = 170, 44 if title else 24, 4
    sheet = Image.new("RGB", (label_w + len(idx) * (cw + pad), head_h + len(rows) * (chh + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 2), title, fill="black", font=font)
    for j, f in enumerate(idx):
        draw.text((label_w + j * (cw + pad), head_h - 20), f"frame {first_frame + f}", fill="black", font=font)
    for r, (label, frames) in enumerate(rows):
        y = head_h + r * (chh + pad)
        for line, text in enumerate(label.split("\n")):
            draw.text((pad, y + 4 + 18 * line), text, fill="black", font=font)
        for j, f in enumerate(idx):
            im = Image.fromarray(frames[f])
            if (cw, chh) != (w, h):
                im = im.resize((cw, chh), Image.BILINEAR)
            sheet.paste(im, (label_w + j * (cw + pad), y))
    sheet.save(path)
    return idx


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| clip | size | frames | teacher PSNR | student PSNR | student - teacher | teacher SSIM | student SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['width']}x{r['height']} | {r['num_frames']} | {r['teacher_psnr']:.2f} "
                     f"| {r['student_psnr']:.2f} | {r['student_psnr'] - r['teacher_psnr']:+.2f} "
                     f"| {r['teacher_ssim']:.4f} | {r['student_ssim']:.4f} |")
    for key in sorted({k for r in rows for k in r if k.endswith("_vs_fp32_psnr")}):
        values = ", ".join(f"{r['name']} {r[key]:.2f}" for r in rows)
        lines.append(f"\n{key.replace('_', ' ')} (dB): mean {np.mean([r[key] for r in rows]):.2f}; {values}")
    if rows:
        mt = float(np.mean([r["teacher_psnr"] for r in rows]))
        ms = float(np.mean([r["student_psnr"] for r in rows]))
        lines.append(f"| mean ({len(rows)} clips) | | | {mt:.2f} | {ms:.2f} | {ms - mt:+.2f} "
                     f"| {np.mean([r['teacher_ssim'] for r in rows]):.4f} "
                     f"| {np.mean([r['student_ssim'] for r in rows]):.4f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Ground truth | teacher | student videos, contact sheets and per-clip PSNR")
    add_request_arguments(p)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: the config's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--resolution", type=int, default=None,
                      help="short side in pixels (default: the config's train.resolution); the long side keeps "
                           "the aspect ratio")
    size.add_argument("--keep_size", action="store_true", help="no resize, only centre-crop to latent multiples")
    p.add_argument("--max_clips", type=int, default=None)
    p.add_argument("--sheet_frames", type=int, default=4, help="frames in the contact sheet")
    p.add_argument("--tile_pixels", type=int, default=512,
                   help="student tiles (and the size above which teachers tile) in output pixels")
    p.add_argument("--tile_overlap", type=int, default=128, help="tile overlap in output pixels")
    p.add_argument("--chunk_pixels", type=int, default=17 * 256 * 256,
                   help="frame-wise teachers encode/decode chunks of frames with at most this many pixels")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--compare_dtype", choices=sorted(HALF_DTYPES), default=None,
                   help="also decode with the student in this dtype; report its PSNR against the float32 decode")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Write the videos, sheets and summaries. A bad request (config, student of another config, data path,
    sizes, output folder) raises UserError before the teacher is loaded (``run(main)``: exit code 2)."""
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from models.config import load_teacher
    from models.cpu_fast import fast_on
    from train_vae.metrics import psnr, ssim, to_unit

    for flag in ("resolution", "max_clips", "sheet_frames"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    resolution = args.resolution
    if resolution is None and not args.keep_size:  # the size the config trains at
        from models.config import load_config
        from train_vae.settings import clip_size
        with user_errors():
            resolution = clip_size(load_config(args.config))[1]
    cfg, trained, num_frames = check_request(args.config, args.student, args.data_dir, args.num_frames, resolution)
    if args.compare_dtype and trained is None:
        raise UserError(f"--compare_dtype {args.compare_dtype} compares a student's decodes with its float32 ones; "
                        "--student teacher has none: pass a trained student")
    out_dir = check_writable_dir(args.output_dir, "--output_dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    with user_errors():  # indexing the videos is cheaper than loading a large teacher: first
        clips = list_clips(args.data_dir, num_frames, 1, args.max_clips)
    teacher = fast_on(load_teacher(cfg).to(device).eval(), device)  # CPU: same video, faster
    student = teacher if trained is None else fast_on(trained.to(device), device)
    same = student is teacher
    half = None if args.compare_dtype is None else copy.deepcopy(student).to(HALF_DTYPES[args.compare_dtype])
    names = clip_names([c.path for c in clips])
    _, mh, mw = teacher.compression

    rows: list[dict] = []
    bar = tqdm(list(zip(clips, names)), desc="clips", unit="clip", dynamic_ncols=True)
    for clip, name in bar:
        bar.set_postfix_str(name)
        t0 = time.time()
        frames = read_clip_frames(clip)
        scale, crop = output_size(int(frames.shape[1]), int(frames.shape[2]), (mh, mw), resolution)
        check_geometry(teacher, student, num_frames, *crop)
        x = resize_crop_video(frames, scale, crop).unsqueeze(0).to(device)
        del frames
        with torch.no_grad():
            z = encode_bounded(teacher, x, args.chunk_pixels, args.tile_pixels)
            rec_t = decode_teacher(teacher, z, args.chunk_pixels, args.tile_pixels,
                                   overlap_pixels=args.tile_overlap).float().clamp(-1, 1)
            rec_s = rec_t if same else decode_student(student, z, args.tile_pixels,
                                                      args.tile_overlap).float().clamp(-1, 1)
            xu = to_unit(x).double()
            m = {}
            for who, rec in (("teacher", rec_t), ("student", rec_s)):
                ru = to_unit(rec).double()
                m[f"{who}_psnr"] = float(psnr(xu, ru)[0])
                m[f"{who}_ssim"] = float(ssim(xu, ru)[0])
                del ru
            if half is not None:
                rec_h = decode_student(half, z.to(half.dtype), args.tile_pixels, args.tile_overlap).float().clamp(-1, 1)
                m[f"student_{args.compare_dtype}_psnr"] = float(psnr(xu, to_unit(rec_h).double())[0])
                m[f"student_{args.compare_dtype}_vs_fp32_psnr"] = float(
                    psnr(to_unit(rec_s).double(), to_unit(rec_h).double())[0])
                del rec_h
            del xu
        gt, te, st = _to_uint8(x[0]), _to_uint8(rec_t[0]), _to_uint8(rec_s[0])
        del x, z, rec_t, rec_s
        fps = clip.video.fps if clip.video.fps > 0 else 24.0
        video_path = out_dir / f"{name}.mp4"
        sheet_path = out_dir / f"{name}.png"
        write_video(video_path, [gt, te, st], fps)
        student_label = "student = teacher" if same else "student"
        shown = contact_sheet(sheet_path, [("ground truth", gt),
                                           (f"teacher\n{m['teacher_psnr']:.2f} dB", te),
                                           (f"{student_label}\n{m['student_psnr']:.2f} dB", st)],
                              num_frames=args.sheet_frames, first_frame=clip.start,
                              title=f"{clip.path} frames {clip.start}-{clip.start + num_frames - 1} at "
                                    f"{crop[1]}x{crop[0]} ({cfg['name']})")
        rows.append({"name": name, "path": clip.path, "start": clip.start, "num_frames": num_frames,
                     "height": crop[0], "width": crop[1], "source_size": [clip.video.height, clip.video.width],
                     "fps": fps, "video": str(video_path), "contact_sheet": str(sheet_path), "sheet_frames": shown,
                     **m, "seconds": round(time.time() - t0, 2)})
        del gt, te, st
    bar.close()

    table = summary_markdown(rows)
    (out_dir / "summary.md").write_text(
        f"config {cfg['name']}, student {args.student}, {num_frames} frames, "
        f"{'original size' if resolution is None else f'short side {resolution}'}\n\n{table}\n")
    (out_dir / "summary.json").write_text(json.dumps(
        {"config": cfg["name"], "student": str(args.student), "num_frames": num_frames,
         "resolution": resolution, "keep_size": bool(args.keep_size), "clips": rows}, indent=2))
    print(table)
    print(f"wrote {len(rows)} video(s) and contact sheet(s) to {out_dir}")
    return rows


if __name__ == "__main__":
    raise SystemExit(run(main))
