"""Reconstruction metrics of a Turbo-VAED student against its teacher on held-out clips.

    torchrun --nproc_per_node N train_vae/validation_metrics.py --config CONFIG --student DIR \\
        --data_dir DIR --num_frames 17 --resolution 256 --output metrics.json \\
        [--max_clips K] [--clips_per_video M] [--fvd_weights PATH]

(or plain ``python train_vae/validation_metrics.py ...`` for one process). For every clip the
teacher encodes the ground truth once; teacher and student decode the same latents. Per clip:
PSNR and SSIM on ``to_unit`` of the clamped frames, LPIPS (AlexNet) on [-1, 1] clamped frames, and
I3D features of ground truth, teacher and student reconstructions (clamped, [-1, 1]) for rFVD.
Nothing is min-max normalised (DESIGN.md section 6).

Clips: every usable video under ``--data_dir`` (sorted by relative path) gives ``--clips_per_video``
windows of ``num_frames`` consecutive frames, deterministically (one window: the centred one, as
``VideoDataset(train=False)``; M windows: the centred window of each of M equal segments), resized
(short side to ``resolution``, bilinear, antialiased) and centre-cropped to a square. Clip ids
number them in that order; ``--max_clips`` keeps the first K.

Distributed: under torchrun (``RANK``/``WORLD_SIZE`` set) the process group uses gloo on CPU and
nccl on CUDA; rank r takes clips r, r + N, ...; per-clip rows and I3D features are gathered to every
rank and rank 0 sorts them by clip id, computes means and rFVD and writes the JSON, so 1 and N
processes give the same numbers.

JSON: ``teacher`` / ``student``: mean ``psnr``, ``ssim``, ``lpips``, ``rfvd`` (rFVD of the
reconstructions against the ground truth; null with ``fvd_note`` when fewer than 2 clips or fewer
than 9 frames); ``fvd_student_vs_teacher``: FD between student and teacher reconstruction features
(0 when the student is the teacher); ``retention``: student / teacher for PSNR and SSIM;
``n_clips``; ``settings``; ``clips``: the per-clip rows sorted by ``clip_id``; ``skipped``: clips
that could not be read.

``--student``: a ``save_pretrained`` folder (config.json + weights), a folder holding one in
``student/`` (a training output folder or a checkpoint ``checkpoints/step_XXXXXX/``), or the word
``teacher`` (the teacher against itself).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import the project, not train_vae/*.py
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import datetime
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from train_vae.data import VideoInfo
from train_vae.i3d import I3D_MIN_FRAMES

__all__ = [
    "Clip", "add_request_arguments", "check_request", "list_clips", "window_starts", "load_clip",
    "read_clip_frames", "resize_crop_video", "check_geometry", "summarize",
    "markdown_table", "main",
]

# ---------------------------------------------------------------------------------------------
# student resolution
# ---------------------------------------------------------------------------------------------

def _student_dir(path: str | os.PathLike) -> Path:
    from models.config import resolve_student_dir
    return resolve_student_dir(path).resolve()


def check_request(config: str, student: str, data: str | os.PathLike, num_frames: int | None,
                  resolution: int | None) -> tuple[dict, torch.nn.Module | None, int]:
    """Everything about an evaluation request that needs no teacher, checked before it is loaded: the config
    (with a teacher), the clip size it can encode, the data path, and the student, loaded and checked against the
    config's latent space (a student of another config is named as such). Returns (config, trained student or
    None for ``--student teacher``, frames per clip). UserError with one message otherwise."""
    from models.cli import UserError, user_errors
    from models.config import check_clip_fits, has_teacher, load_config, load_student as load_trained
    from train_vae.settings import clip_size

    with user_errors():
        cfg = load_config(config)
        if not has_teacher(cfg):
            raise UserError(f"--config {config}: has no public teacher to compare with; pick another config")
        frames = num_frames or clip_size(cfg)[0]
        _, ch, cw = cfg["compression"]
        size = resolution or max(ch, cw)  # None: the frame's own size, cropped to multiples (validation_videos)
        check_clip_fits(cfg, frames, size, size)
        if not Path(data).expanduser().exists():
            raise UserError(f"--data_dir {data}: no such video file or folder (relative paths start from "
                            f"{os.getcwd()})")
        trained = None if str(student).strip().lower() == "teacher" else load_trained(cfg, student)
    return cfg, trained, frames


# ---------------------------------------------------------------------------------------------
# clips
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    """A window chosen for evaluation: ``num_frames`` consecutive frames from ``start`` of one video.

    The video's metadata (frame count, size, fps, reader) is its ``VideoInfo`` (``video``, from
    ``train_vae.data``, the one record of it); this record adds only what names the source and picks the window.
    """
    clip_id: int  # position in the clip list
    path: str  # name in reports: relative to the data folder ('/'-separated), the file name for a single file,
    # the list entry of a UCF-101 list, the sequence name of a DAVIS folder
    full_path: str  # what to read: the video file, or the folder of a DAVIS sequence's JPEG frames
    video: VideoInfo
    start: int  # first frame of the window
    num_frames: int

    @property
    def frame_indices(self) -> list[int]:
        return list(range(self.start, self.start + self.num_frames))


def window_starts(total: int, span: int, count: int) -> list[int]:
    """Start frames of ``count`` windows of ``span`` frames in a video of ``total`` frames: one window
    is centred (``(total - span) // 2``); several are the centred windows of ``count`` equal segments
    (clamped to the video; duplicates dropped)."""
    if total < span:
        raise ValueError(f"video of {total} frames is shorter than a window of {span}")
    if count < 1:
        raise ValueError("count must be >= 1")
    out: list[int] = []
    for j in range(count):
        s = ((2 * j + 1) * total - count * span) // (2 * count)
        s = min(max(s, 0), total - span)
        if s not in out:
            out.append(s)
    return out


def list_clips(data: str | os.PathLike, num_frames: int, clips_per_video: int = 1, max_clips: int | None = None,
               min_short_side: int = 64) -> list[Clip]:
    """Deterministic clip list of a folder (all usable videos, sorted by relative path) or one file."""
    from train_vae.data import VideoIndex, probe_video

    p = Path(data).expanduser()
    if p.is_file():
        info = probe_video(p)
        if info.frames < num_frames:
            raise ValueError(f"{str(p)!r} has {info.frames} frames, fewer than --num_frames {num_frames}")
        entries = [(p.name, str(p.resolve()), info)]
    elif p.is_dir():
        index = VideoIndex(p, num_frames=num_frames, min_short_side=min_short_side)
        entries = [(e.path, str(index.data_dir / e.path), e) for e in index.entries]
    else:
        raise FileNotFoundError(f"data path {str(p)!r} is neither a video file nor a folder")
    return _windows(entries, num_frames, clips_per_video, max_clips)


def _windows(entries: list[tuple[str, str, VideoInfo]], num_frames: int, clips_per_video: int,
             max_clips: int | None) -> list[Clip]:
    """Clips of (name, full path, ``VideoInfo``) entries, in order, ``clips_per_video`` each."""
    clips: list[Clip] = []
    for rel, full, info in entries:
        for s in window_starts(info.frames, num_frames, clips_per_video):
            clips.append(Clip(len(clips), rel, full, info, s, num_frames))
            if max_clips is not None and len(clips) >= max_clips:
                return clips
    return clips


DATA_LAYOUTS = ("videos", "ucf101", "davis")


def data_layout(data: str | os.PathLike) -> str:
    """How ``data`` holds its clips: ``ucf101`` (a test list file, e.g. testlist01.txt, of
    ``Class/v_Class_gXX_cYY.avi`` lines), ``davis`` (a DAVIS-2017 folder with JPEGImages/480p/<sequence>/00000.jpg),
    else ``videos`` (a folder of videos, searched recursively, or one video file)."""
    p = Path(data).expanduser()
    if p.is_file() and p.suffix.lower() == ".txt":
        return "ucf101"
    if p.is_dir() and ((p / "JPEGImages" / "480p").is_dir() or p.name == "480p" and p.parent.name == "JPEGImages"):
        return "davis"
    return "videos"


def ucf101_entries(list_file: str | os.PathLike, video_root: str | os.PathLike | None = None,
                   num_frames: int = 1) -> list[tuple[str, str, VideoInfo]]:
    """The videos of a UCF-101 split list (``Class/v_Class_g01_c01.avi`` per line; a trailing class label, as in
    the train lists, is ignored), in list order, found under ``video_root`` (default: the list's folder, or its
    sibling ``UCF-101/``, the archive's layout). ValueError naming the first missing file or a too short video."""
    from train_vae.data import probe_video

    lst = Path(list_file).expanduser()
    names = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"UCF-101 list {lst} names no videos")
    roots = [Path(video_root).expanduser()] if video_root else [lst.parent, lst.parent.parent / "UCF-101"]
    root = next((r for r in roots if (r / names[0]).is_file()), None)
    if root is None:
        raise ValueError(f"UCF-101 list {lst}: {names[0]} is not under {' or '.join(map(str, roots))}; pass "
                         f"--video_root (the folder holding the class folders)")
    entries = []
    for rel in names:
        path = root / rel
        if not path.is_file():
            raise ValueError(f"UCF-101 list {lst}: {path} is missing")
        info = probe_video(path)
        if info.frames < num_frames:
            raise ValueError(f"{path} has {info.frames} frames, fewer than {num_frames}")
        entries.append((rel, str(path.resolve()), info))
    return entries


def davis_entries(root: str | os.PathLike, num_frames: int = 1) -> list[tuple[str, str, VideoInfo]]:
    """DAVIS-2017 sequences (JPEGImages/480p/<sequence>/NNNNN.jpg), sorted by name, each one clip source;
    sequences shorter than ``num_frames`` are left out (with a warning)."""
    from PIL import Image

    p = Path(root).expanduser()
    frames_dir = p if p.name == "480p" else p / "JPEGImages" / "480p"
    entries = []
    for seq in sorted(d for d in frames_dir.iterdir() if d.is_dir()):
        jpgs = sorted(seq.glob("*.jpg"))
        if len(jpgs) < num_frames:
            warnings.warn(f"skipping DAVIS sequence {seq.name}: {len(jpgs)} frames, fewer than {num_frames}")
            continue
        with Image.open(jpgs[0]) as im:
            w, h = im.size
        entries.append((seq.name, str(seq.resolve()), VideoInfo(len(jpgs), h, w, 0.0, "jpeg")))
    if not entries:
        raise ValueError(f"DAVIS folder {frames_dir}: no sequence of >= {num_frames} JPEG frames")
    return entries


def list_dataset_clips(data: str | os.PathLike, num_frames: int, clips_per_video: int = 1,
                       max_clips: int | None = None, video_root: str | os.PathLike | None = None) -> list[Clip]:
    """The clips of ``data`` in any of the ``DATA_LAYOUTS`` (see ``data_layout``), deterministic."""
    layout = data_layout(data)
    if layout == "ucf101":
        return _windows(ucf101_entries(data, video_root, num_frames), num_frames, clips_per_video, max_clips)
    if layout == "davis":
        return _windows(davis_entries(data, num_frames), num_frames, clips_per_video, max_clips)
    return list_clips(data, num_frames, clips_per_video, max_clips)


def read_clip_frames(clip: Clip) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames of a clip at the video's own size."""
    from train_vae.data import read_video_frames

    if clip.video.reader == "jpeg":  # a folder of numbered JPEG frames (DAVIS)
        from PIL import Image
        files = sorted(Path(clip.full_path).glob("*.jpg"))[clip.start:clip.start + clip.num_frames]
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(torch.from_numpy(np.asarray(im.convert("RGB"))))
        return torch.stack(frames)
    backend = "pyav" if clip.video.reader == "pyav" else "auto"
    frames = read_video_frames(clip.full_path, clip.frame_indices, backend=backend, check_seek=False)
    if frames.shape[0] != clip.num_frames:
        raise RuntimeError(f"read {frames.shape[0]} frames of {clip.path}, expected {clip.num_frames}")
    return frames


def resize_crop_video(frames: torch.Tensor, scale_size: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> float32 (3, T, H, W) in [-1, 1]: resize to ``scale_size`` (bilinear,
    antialiased; skipped when equal) and centre-crop to ``out_hw``."""
    from train_vae.data import resize_crop_frames

    rh, rw = scale_size
    H, W = out_hw
    if H > rh or W > rw:
        raise ValueError(f"crop {out_hw} larger than the resized frame {scale_size}")
    crop = ((rh - H) // 2, (rw - W) // 2, H, W)
    return resize_crop_frames(frames, (rh, rw), crop).permute(1, 0, 2, 3).contiguous()


def load_clip(clip: Clip, resolution: int | tuple[int, int]) -> torch.Tensor:
    """(3, T, R, R) float32 in [-1, 1]: short side resized to ``resolution`` and centre-cropped, as
    ``VideoDataset(train=False)`` does."""
    from train_vae.data import scale_size_for

    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    frames = read_clip_frames(clip)
    return resize_crop_video(frames, scale_size_for(int(frames.shape[1]), int(frames.shape[2]), hw), hw)


# ---------------------------------------------------------------------------------------------
# geometry checks
# ---------------------------------------------------------------------------------------------

def check_geometry(teacher, student, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """Latent shape (1, C, T', H', W') of a clip for this teacher; ValueError (naming valid values) when
    the teacher cannot encode it or the student cannot decode those latents to the same size."""
    _, ch, cw = teacher.compression
    t = teacher.frame_rule.latent_frames(num_frames)
    if t is None:
        raise ValueError(f"the teacher (compression {tuple(teacher.compression)}, {teacher.frame_rule.describe()} "
                         f"frames) cannot encode {num_frames} frames; valid counts are {teacher.frame_rule.valid()}, ...")
    if height % ch or width % cw:
        raise ValueError(f"frame size {height}x{width} is not a multiple of the teacher's spatial compression "
                         f"{ch}x{cw}")
    shape = (1, teacher.latent_channels, t, height // ch, width // cw)
    if student is not teacher:
        want = tuple(student.latent_shape_for(num_frames, height, width))
        if want != shape:
            raise ValueError(f"the student decodes {num_frames}x{height}x{width} from latents {want}, but the teacher "
                             f"encodes it to {shape}: student and teacher disagree on the frame-count rule")
    return shape


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def _mean(values: list[float]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=np.float64))) if values else None


def summarize(rows: list[dict], feats: dict[int, dict[str, np.ndarray]] | None) -> dict:
    """Means, rFVD and retention from per-clip rows (sorted by clip id) and their I3D features."""
    from train_vae.fvd import frechet_distance

    rows = sorted(rows, key=lambda r: r["clip_id"])
    out: dict[str, Any] = {"n_clips": len(rows)}
    for who in ("teacher", "student"):
        out[who] = {m: _mean([r[who][m] for r in rows]) for m in ("psnr", "ssim", "lpips")}
        out[who]["rfvd"] = None
    out["fvd_student_vs_teacher"] = None
    note = None
    if feats is None:
        note = f"rFVD not computed: I3D needs clips of >= {I3D_MIN_FRAMES} frames"
    elif len(rows) < 2:
        note = f"rFVD not computed: the Frechet distance needs >= 2 clips per set, got {len(rows)}"
    else:
        ids = [r["clip_id"] for r in rows]
        real = np.stack([feats[i]["real"] for i in ids])
        rec = {w: np.stack([feats[i][w] for i in ids]) for w in ("teacher", "student")}
        out["teacher"]["rfvd"] = frechet_distance(real, rec["teacher"])
        out["student"]["rfvd"] = frechet_distance(real, rec["student"])
        out["fvd_student_vs_teacher"] = frechet_distance(rec["teacher"], rec["student"])
        if len(rows) <= real.shape[1]:
            note = (f"rFVD from {len(rows)} clips (<= {real.shape[1]} feature dimensions): the covariances are "
                    f"rank-deficient, so compare rFVD only between runs on the same clips")
    out["fvd_note"] = note
    t, s = out["teacher"], out["student"]
    out["retention"] = {m: (s[m] / t[m] if (t[m] not in (None, 0) and s[m] is not None) else None)
                        for m in ("psnr", "ssim")}
    return out


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def markdown_table(result: dict) -> str:
    """Paper-style table: PSNR (2 d.p.), SSIM (4), LPIPS (4), rFVD (2), plus retention."""
    st = result.get("settings", {})
    name = st.get("config", "?")
    lines = [f"{result['n_clips']} clips, {st.get('num_frames', '?')} frames at {st.get('resolution', '?')}"
             f"x{st.get('resolution', '?')} (config {name})", "",
             "| decoder | PSNR ↑ | SSIM ↑ | LPIPS ↓ | rFVD ↓ |", "|---|---|---|---|---|"]
    student = os.path.basename(str(st.get("student", "?")).rstrip("/\\")) or str(st.get("student"))
    for who, label in (("teacher", f"teacher ({name})"), ("student", f"student ({student})")):
        m = result[who]
        lines.append(f"| {label} | {_fmt(m['psnr'], 2)} | {_fmt(m['ssim'], 4)} | {_fmt(m['lpips'], 4)} "
                     f"| {_fmt(m['rfvd'], 2)} |")
    r = result["retention"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines.append(f"| retention (student / teacher) | {pct(r['psnr'])} | {pct(r['ssim'])} | | |")
    if result.get("fvd_note"):
        lines += ["", f"note: {result['fvd_note']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False


def _setup_dist(device_arg: str | None) -> tuple[_Dist, torch.device]:
    import torch.distributed as dist

    d = _Dist()
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched:
        d.rank, d.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        d.local_rank = int(os.environ.get("LOCAL_RANK", d.rank))
    if device_arg and device_arg != "auto":
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", d.local_rank)
    else:
        device = torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
        d.initialized = True
    return d, device


def _all_gather(obj, d: _Dist) -> list:
    if d.world == 1 or not d.initialized:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of what ``check_request`` checks, shared with validation_videos.py: --config, --student, --data_dir."""
    p.add_argument("--config", required=True, help="config name (configs/*.yaml) or path")
    p.add_argument("--student", required=True,
                   help="save_pretrained folder, training output / checkpoint folder with student/, or 'teacher'")
    p.add_argument("--data_dir", required=True, help="folder of videos (searched recursively) or one video file")


def build_parser() -> argparse.ArgumentParser:
    from models.cli import ArgumentParser
    p = ArgumentParser(description="PSNR/SSIM/LPIPS/rFVD of a Turbo-VAED student vs its teacher "
                                   "(run with torchrun for several processes)")
    add_request_arguments(p)
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: the config's num_frames)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square clip size (default: the config's train.resolution, see train_vae/settings.py)")
    p.add_argument("--output", default="metrics.json", help="JSON file written by rank 0")
    p.add_argument("--max_clips", type=int, default=None, help="keep the first K clips")
    p.add_argument("--clips_per_video", type=int, default=1)
    p.add_argument("--fvd_weights", default=None,
                   help="I3D weights: TorchScript (StyleGAN-V i3d_torchscript.pt) or InceptionI3d state dict; "
                        "default: the registry's i3d_kinetics400")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: torch's; torchrun sets OMP_NUM_THREADS=1). CPU kernels "
                        "round differently with different thread counts, so give runs the same value per process "
                        "for bitwise-equal numbers across process counts")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _clip_metrics(x: torch.Tensor, rec: torch.Tensor, lpips) -> dict[str, float]:
    from train_vae.metrics import psnr, ssim, to_unit

    xu, ru = to_unit(x).double(), to_unit(rec).double()  # float64: no rounding noise in the means
    return {"psnr": float(psnr(xu, ru)[0]), "ssim": float(ssim(xu, ru)[0]), "lpips": float(lpips(x, rec)[0])}


@torch.no_grad()
def _evaluate(clips: list[Clip], args, teacher, student, lpips, i3d, device, show_bar: bool, desc: str = "clips"
              ) -> tuple[list[dict], dict[int, dict[str, np.ndarray]], list[dict]]:
    from tqdm.auto import tqdm

    rows, feats, skipped = [], {}, []
    same = student is teacher
    bar = tqdm(total=len(clips), desc=desc, unit="clip", disable=not show_bar, dynamic_ncols=True)
    for clip in clips:
        try:
            x = load_clip(clip, args.resolution)
        except Exception as exc:  # unreadable window: reported, never silently averaged in
            skipped.append({"clip_id": clip.clip_id, "path": clip.path, "start": clip.start,
                            "reason": f"{type(exc).__name__}: {exc}"})
            warnings.warn(f"skipping clip {clip.clip_id} ({clip.path} @ {clip.start}): {exc}")
            bar.update(1)
            continue
        x = x.unsqueeze(0).to(device)
        z = teacher.encode(x)
        rec_t = teacher.decode(z).float().clamp(-1, 1)
        rec_s = rec_t if same else student.decode(z).float().clamp(-1, 1)
        if rec_t.shape != x.shape or rec_s.shape != x.shape:
            raise RuntimeError(f"reconstruction shapes teacher {tuple(rec_t.shape)} / student {tuple(rec_s.shape)} "
                               f"differ from the clip's {tuple(x.shape)}")
        m_t = _clip_metrics(x, rec_t, lpips)
        m_s = m_t if same else _clip_metrics(x, rec_s, lpips)
        rows.append({"clip_id": clip.clip_id, "path": clip.path, "start": clip.start,
                     "frames": [clip.start, clip.start + clip.num_frames], "teacher": m_t, "student": dict(m_s)})
        if i3d is not None:
            batch = torch.cat([x, rec_t] if same else [x, rec_t, rec_s])
            f = i3d(batch).cpu().numpy()
            feats[clip.clip_id] = {"real": f[0], "teacher": f[1], "student": f[1] if same else f[2]}
        bar.update(1)
        if show_bar:
            bar.set_postfix(psnr_t=f"{m_t['psnr']:.2f}", psnr_s=f"{m_s['psnr']:.2f}")
    bar.close()
    return rows, feats, skipped


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the result dict on rank 0 (None on other ranks). A bad request (config,
    student, data, sizes, --output) raises UserError before the teacher is loaded (``run(main)``: exit code 2)."""
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict | None:
    from models.cli import UserError, check_output_file, user_errors

    if args.resolution is None:  # the size the config trains at
        from models.config import load_config
        from train_vae.settings import clip_size
        with user_errors():
            args.resolution = clip_size(load_config(args.config))[1]
    cfg, trained, args.num_frames = check_request(args.config, args.student, args.data_dir, args.num_frames,
                                                  args.resolution)
    check_output_file(args.output, "--output")
    if args.fvd_weights and not Path(args.fvd_weights).expanduser().is_file():
        raise UserError(f"--fvd_weights {args.fvd_weights}: no such file; leave it out to use the registry's I3D")
    for flag in ("max_clips", "clips_per_video"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    with user_errors():  # indexing the videos is cheaper than loading a large teacher: first
        clips = list_clips(args.data_dir, args.num_frames, args.clips_per_video, args.max_clips)
    if not clips:
        raise UserError(f"--data_dir {args.data_dir}: no clips found")
    d, device = _setup_dist(args.device)
    t0 = time.time()
    try:
        from models.config import load_teacher
        from models.cpu_fast import fast_on
        from train_vae.i3d import I3DFeatureExtractor
        from train_vae.lpips import LPIPS

        teacher = fast_on(load_teacher(cfg).to(device).eval(), device)  # CPU: same video, faster
        student = teacher if trained is None else fast_on(trained.to(device), device)
        same = student is teacher
        check_geometry(teacher, student, args.num_frames, args.resolution, args.resolution)
        mine = clips[d.rank::d.world]
        lpips = LPIPS(net="alex").to(device)
        i3d = I3DFeatureExtractor(args.fvd_weights).to(device) if args.num_frames >= I3D_MIN_FRAMES else None
        local = {"rows": [], "feats": {}, "skipped": [], "error": None}
        try:
            local["rows"], local["feats"], local["skipped"] = _evaluate(
                mine, args, teacher, student, lpips, i3d, device, show_bar=(d.rank == 0 and not args.no_progress),
                desc="clips" if d.world == 1 else f"clips of rank 0 ({len(clips)} on {d.world} ranks)")
        except Exception as exc:  # tell the other ranks instead of leaving them waiting in the gather
            if d.world == 1:
                raise
            local["error"] = f"rank {d.rank}: {type(exc).__name__}: {exc}"
            import traceback
            traceback.print_exc()
    except Exception:
        if d.initialized:
            import torch.distributed as dist
            dist.destroy_process_group()
        raise

    gathered = _all_gather(local, d)
    errors = [g["error"] for g in gathered if g["error"]]
    if errors:
        if d.initialized:
            import torch.distributed as dist
            dist.destroy_process_group()
        raise RuntimeError("evaluation failed on " + "; ".join(errors))
    result = None
    if d.rank == 0:
        rows = sorted((r for g in gathered for r in g["rows"]), key=lambda r: r["clip_id"])
        feats = {k: v for g in gathered for k, v in g["feats"].items()}
        skipped = sorted((s for g in gathered for s in g["skipped"]), key=lambda s: s["clip_id"])
        if not rows:
            raise RuntimeError(f"no clip could be evaluated; skipped: {skipped}")
        summary = summarize(rows, feats if i3d is not None else None)
        result = {
            "teacher": summary["teacher"],
            "student": summary["student"],
            "retention": summary["retention"],
            "fvd_student_vs_teacher": summary["fvd_student_vs_teacher"],
            "fvd_note": summary["fvd_note"],
            "n_clips": summary["n_clips"],
            "settings": {
                "config": cfg["name"], "student": str(args.student),
                "student_dir": None if same else str(_student_dir(args.student)),
                "data_dir": str(args.data_dir), "num_frames": args.num_frames, "resolution": args.resolution,
                "clips_per_video": args.clips_per_video, "max_clips": args.max_clips,
                "fvd_weights": args.fvd_weights, "lpips_net": "alex", "i3d_input": 224,
                "world_size": d.world, "device": str(device), "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            "wall_s": round(time.time() - t0, 2),
            "clips": rows,
            "skipped": skipped,
        }
        from models.files import atomic_write
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(result, indent=2))
        print(markdown_table(result))
        print(f"wrote {out} ({result['n_clips']} clips, {d.world} process(es), {result['wall_s']:.1f} s)")
    if d.initialized:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    from models.cli import run
    sys.exit(run(main))
