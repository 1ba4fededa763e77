"""Encode training clips once with the frozen teacher encoder and store the latents.

    python train_vae/generate_latents.py --config taef2 --data_dir DIR --output_dir LATENT_DIR \
        [--num_frames 17] [--resolution 128] [--clips_per_video 4] [--seed 0] \
        [--files_from LIST.txt] [--store_frames] [--batch_size 1] [--fp16] [--overwrite]

Clips come from ``VideoDataset`` in train mode: random window, resize + random crop, random flip,
all drawn from ``(seed, clip, index)``. ``clips_per_video`` windows per video are the dataset's
epochs ``0 .. clips_per_video - 1`` (``set_epoch``). Every window, crop and flip is recorded next
to its latents, so ``LatentDataset`` rebuilds exactly the pixels that were encoded (see
``train_vae/latent_dataset.py`` for the file format; ``--store_frames`` also stores those pixels,
as uint8 ``round((video + 1) * 127.5)``).

One ``.safetensors`` file per sample, written to a temporary file and renamed into place, so an
interrupted run never leaves a half-written sample; a re-run skips samples that already exist
(``--overwrite`` regenerates them) and deletes stale ``*.tmp`` files of dead runs.
``manifest.json`` lists the samples of the requested files x clips and the settings; it is
rewritten (atomically) as generation proceeds and marked ``"complete": true`` at the end.

The manifest also records what the folder was made from (``identity``: data folder, teacher class and weights'
sha256, frames, resolution, stride, seed, flips; per sample the source file's size and mtime). A rerun on the
same keeps what matches and writes what is missing or stale (one line says so); a rerun with other data,
teacher or settings is an error (``--overwrite`` rebuilds), where training rebuilds its own cache.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import this checkout, not train_vae/*.py as top level
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save as safetensors_save
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from models.cli import ArgumentParser, check_dir, check_writable_dir, run, user_errors
from models.config import check_clip_fits, has_teacher, load_config, load_teacher
from models.files import atomic_write, pid_alive
from models.teachers import weights_sha256
from train_vae.data import VideoDataset, collate_videos
from train_vae.settings import clip_size
from train_vae.latent_dataset import (FORMAT_VERSION, MANIFEST_NAME, SAMPLE_PATTERN, quantize_video, read_manifest,
                                      read_sample_header, sample_name)

logger = logging.getLogger(__name__)

# what a sample is made from (besides its source file's size and mtime); a folder never mixes samples made with
# different values, and a cache whose values differ from a request is stale
IDENTITY_KEYS = ("config", "teacher_class", "teacher_sha256", "data_dir", "num_frames", "resolution", "frame_stride",
                 "seed", "random_flip")
MANIFEST_EVERY = 256  # rewrite the manifest after this many new samples (and after every clip epoch)


class SettingsMismatchError(ValueError):
    """The output folder holds samples generated with other settings."""


# ---------------------------------------------------------------------------------------------
# leftovers of dead runs
# ---------------------------------------------------------------------------------------------

def clean_stale_tmp(folder: Path) -> list[str]:
    """Delete ``*.tmp`` leftovers of crashed runs (those not named after a live process)."""
    removed = []
    for entry in os.scandir(folder):
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        parts = entry.name.rsplit(".", 2)  # ".<name>.<pid>.tmp"
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid() and pid_alive(int(parts[1])):  # ours: not in flight now
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            pass
    if removed:
        logger.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------

def _identity(meta: dict[str, Any]) -> dict[str, str]:
    return {k: str(meta[k]) for k in IDENTITY_KEYS if k in meta}


def _differences(theirs: dict[str, str], ours: dict[str, str]) -> str:
    """``"resolution 64x64 -> 32x32, data_dir /a -> /b"``: what a cache was made from that a request changes."""
    return ", ".join(f"{k} {theirs.get(k, '(not recorded)')} -> {v}" for k, v in ours.items() if theirs.get(k) != v)


def _existing_ok(path: Path, identity: dict[str, str], source: tuple[int, int], need_frames: bool
                 ) -> tuple[bool, dict | None]:
    """(reusable, header) for an existing sample file: readable, made with ``identity`` from a source file that
    still has the (size, mtime_ns) ``source``, with frames when ``need_frames``. Raises on a settings mismatch
    (the manifest said the folder matches, so the folder mixes samples of different settings)."""
    if not path.is_file():
        return False, None
    try:
        head = read_sample_header(path)
    except Exception as e:  # unreadable: regenerate it
        logger.warning("regenerating unreadable sample %s (%s)", path.name, e)
        return False, None
    theirs = _identity(head["metadata"])
    if theirs != identity:
        raise SettingsMismatchError(f"{str(path)!r} was generated with other settings "
                                    f"({_differences(theirs, identity)}); use another output folder or --overwrite")
    meta = head["metadata"]
    if (meta.get("source_size"), meta.get("source_mtime")) != tuple(str(v) for v in source):
        return False, head  # the source video changed since: its clip is stale
    if need_frames and not head["has_frames"]:
        return False, head
    return True, head


def _record(name: str, source: str, clip: int, index: int, frame_indices: Sequence[int],
            crop: Sequence[int], scale_size: Sequence[int], flip: bool, has_frames: bool,
            source_stat: tuple[int, int]) -> dict[str, Any]:
    return {"file": name, "source": source, "clip": int(clip), "index": int(index),
            "frame_indices": [int(i) for i in frame_indices], "crop": [int(v) for v in crop],
            "scale_size": [int(v) for v in scale_size], "flip": bool(flip), "has_frames": bool(has_frames),
            "source_size": int(source_stat[0]), "source_mtime": int(source_stat[1])}


def _old_manifest(out: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), (None, None) when there is none, or (None, why it cannot be used)."""
    if not (out / MANIFEST_NAME).is_file():
        return None, None
    try:
        return read_manifest(out), None
    except ValueError as e:
        return None, str(e)


def _remove_samples(out: Path) -> int:
    """Delete the sample files and the manifest of a latent folder (nothing else in it); returns the count."""
    doomed = [p for p in out.iterdir() if SAMPLE_PATTERN.fullmatch(p.name)] + [out / MANIFEST_NAME]
    for p in doomed:
        p.unlink(missing_ok=True)
    return len(doomed) - 1


def cache_decision(old: dict | None, old_problem: str | None, identity: dict[str, str], overwrite: bool,
                   rebuild_stale: bool, where: str) -> str | None:
    """Why the samples in a latent folder must all be rebuilt (None: reuse what matches). Raises
    SettingsMismatchError for a stale folder unless ``rebuild_stale``."""
    if overwrite and (old or old_problem):
        return "--overwrite"
    if old_problem:
        why = f"its manifest cannot be used ({old_problem})"
    elif old is not None and _identity(old.get("identity", {})) != identity:
        why = f"it was made from other data, teacher or settings: {_differences(old.get('identity', {}), identity)}"
    else:
        return None
    if not rebuild_stale:
        raise SettingsMismatchError(f"latent folder {where!r} cannot be reused: {why}; use another --output_dir "
                                    f"or --overwrite")
    return why


def _decision_line(old: dict | None, rebuild: str | None, planned: int, pending: int, changed: int) -> str:
    """One line: whether a latent folder is used as it is, finished or (re)built, and why."""
    if rebuild:
        return f"rebuilding all {planned} samples: {rebuild}"
    if old is None:
        return f"building {planned} samples (no cache there yet)"
    if not pending:
        done = "complete" if old.get("complete") else "all written, now marked complete"
        return f"using its {planned} samples (same data files, teacher weights and settings; {done})"
    why = []
    if not old.get("complete"):
        why.append(f"the run that wrote it stopped after {old.get('num_samples', 0)} samples")
    if changed:
        why.append(f"{changed} sample(s) of source files that changed since")
    if pending - changed and old.get("complete"):
        why.append(f"{pending - changed} sample(s) of videos it does not have yet")
    return f"finishing it: writing {pending} of {planned} samples, keeping the rest ({'; '.join(why)})"


@dataclass
class _Job:
    """One generation request, checked: its settings, the dataset that draws the windows (train mode, one window
    per video and epoch; epoch = clip number), the teacher on its device, the output folder and what the folder's
    samples are made from (``identity``)."""
    cfg: dict
    ds: VideoDataset
    out: Path
    teacher: Any
    device: Any
    num_frames: int
    hw: tuple[int, int]
    clips_per_video: int
    seed: int
    frame_stride: int
    random_flip: bool
    store_frames: bool
    fp16: bool
    identity: dict[str, str]


@dataclass
class _Plan:
    """Every sample of a job in order (clip, dataset index, file name), the manifest records of those kept from the
    folder, the dataset indices still to encode per clip, how many of those were there but of a changed source
    file, and the latent shape of the samples (None until one exists)."""
    samples: list[tuple[int, int, str]]
    records: dict[str, dict[str, Any]]
    pending: dict[int, list[int]]
    changed: int
    latent_shape: list[int] | None

    @property
    def num_pending(self) -> int:
        return sum(len(v) for v in self.pending.values())


def _prepare(cfg: dict | str | os.PathLike, data_dir, output_dir, num_frames: int | None,
             resolution: int | Sequence[int], clips_per_video: int, seed: int, files: Sequence[str] | None,
             store_frames: bool, teacher, batch_size: int, fp16: bool, frame_stride: int, random_flip: bool,
             device, cache_dir) -> _Job:
    """Check the request, index the videos, make the output folder (deleting ``*.tmp`` leftovers of dead runs), load
    the teacher unless given and pick its device (given, else the teacher's, else CUDA when available)."""
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    if teacher is None and not has_teacher(cfg):
        raise ValueError(f"config {cfg['name']!r} has no public teacher ({cfg['teacher'].get('note', 'class: none')}): "
                         f"there is no encoder to generate latents with")
    num_frames = int(clip_size(cfg)[0] if num_frames is None else num_frames)
    hw = (int(resolution), int(resolution)) if isinstance(resolution, int) else tuple(int(v) for v in resolution)
    if clips_per_video < 1 or batch_size < 1:
        raise ValueError("clips_per_video and batch_size must be >= 1")
    check_clip_fits(cfg, num_frames, *hw)
    teacher_class = str(cfg["teacher"]["class"])

    ds = VideoDataset(data_dir, num_frames=num_frames, resolution=hw, frame_stride=frame_stride,
                      random_flip=random_flip, train=True, files=files, seed=seed, clips_per_video=1,
                      cache_dir=cache_dir)
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)
    if teacher is None:
        teacher = load_teacher(cfg)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        teacher = teacher.to(device)
    if device is None:
        params = next(iter(teacher.parameters()), None) if isinstance(teacher, torch.nn.Module) else None
        device = params.device if params is not None else "cpu"

    identity = {"config": str(cfg["name"]), "teacher_class": teacher_class,
                "teacher_sha256": weights_sha256(teacher), "data_dir": str(ds.data_dir), "num_frames": str(num_frames),
                "resolution": f"{hw[0]}x{hw[1]}", "frame_stride": str(int(frame_stride)), "seed": str(int(seed)),
                "random_flip": str(bool(random_flip))}
    return _Job(cfg, ds, out, teacher, device, num_frames, hw, clips_per_video, seed, frame_stride, random_flip,
                store_frames, fp16, identity)


def _decide_about_cache(job: _Job, overwrite: bool, rebuild_stale: bool) -> tuple[dict | None, str | None]:
    """(the folder's old manifest, or None; why all its samples are rebuilt, or None to reuse what matches). A
    rebuild deletes the samples and the manifest now (``cache_decision`` says when, and raises when it may not)."""
    old, old_problem = _old_manifest(job.out)
    rebuild = cache_decision(old, old_problem, job.identity, overwrite, rebuild_stale, str(job.out))
    if rebuild:
        _remove_samples(job.out)
        old = None
    return old, rebuild


def plan_samples(job: _Job, reuse: bool) -> _Plan:
    """Every (clip, video) sample of the job, in order; with ``reuse``, a sample file already there is kept when it
    still matches the job and its source file (``_existing_ok``), and the rest are pending."""
    plan = _Plan(samples=[], records={}, pending={}, changed=0, latent_shape=None)
    for clip in range(job.clips_per_video):
        for idx in range(len(job.ds)):
            entry = job.ds.entries[idx]
            name = sample_name(entry.path, clip)
            plan.samples.append((clip, idx, name))
            ok, head = (_existing_ok(job.out / name, job.identity, (entry.size, entry.mtime), job.store_frames)
                        if reuse else (False, None))
            if ok:
                meta = head["metadata"]
                plan.records[name] = _record(name, meta.get("source", entry.path), clip, int(meta.get("index", idx)),
                                             head["frame_indices"], head["crop"], head["scale_size"], head["flip"],
                                             head["has_frames"], (entry.size, entry.mtime))
            else:
                plan.changed += head is not None
                plan.pending.setdefault(clip, []).append(idx)
    if plan.records:
        first = next(iter(plan.records))
        plan.latent_shape = list(read_sample_header(job.out / first)["shapes"]["latents"])
    return plan


def write_manifest(job: _Job, plan: _Plan, complete: bool, stats: dict | None = None) -> None:
    """Rewrite ``manifest.json`` (atomically): the job's settings and identity, and the records of the samples
    written so far, in plan order; ``complete`` once every planned sample is there; ``stats`` of this run."""
    cfg, teacher = job.cfg, job.teacher
    samples = [plan.records[name] for _, _, name in plan.samples if name in plan.records]
    latent_channels = getattr(teacher, "latent_channels", cfg.get("latent_channels"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "config": str(cfg["name"]),
        "config_path": cfg.get("path"),
        "teacher_class": job.identity["teacher_class"],
        "latent_channels": int(latent_channels) if latent_channels is not None else None,
        "compression": list(getattr(teacher, "compression", cfg.get("compression")) or []),
        "num_frames": job.num_frames,
        "resolution": list(job.hw),
        "frame_stride": int(job.frame_stride),
        "seed": int(job.seed),
        "random_flip": bool(job.random_flip),
        "clips_per_video": int(job.clips_per_video),
        "store_frames": bool(job.store_frames),
        "latent_dtype": "float16" if job.fp16 else "float32",
        "latent_shape": plan.latent_shape,
        "data_dir": str(job.ds.data_dir),
        "identity": job.identity,
        "frames_encoding": "uint8 (T, H, W, 3) = round((video + 1) * 127.5) of the float video in [-1, 1] "
                           "the encoder saw; video = frames / 127.5 - 1",
        "num_videos": len(job.ds),
        "num_samples": len(samples),
        "last_run": stats,
        "samples": samples,
    }
    atomic_write(job.out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")


def _write_sample(job: _Job, plan: _Plan, clip: int, idx: int, batch: dict, i: int, z: torch.Tensor) -> None:
    """Write sample ``i`` of a loader batch (dataset index ``idx`` of clip ``clip``, latents ``z``) as its
    ``.safetensors`` file, atomically, with the window, crop and flip it was made from, and record it in the plan."""
    name = sample_name(job.ds.entries[idx].path, clip)
    if not torch.isfinite(z).all():
        raise RuntimeError(f"non-finite latents for {batch['path'][i]!r} clip {clip}"
                           + (" (float16 overflow: drop --fp16)" if job.fp16 else ""))
    tensors = {
        "latents": z.contiguous(),
        "frame_indices": torch.tensor(batch["frame_indices"][i], dtype=torch.int64),
        "crop": torch.tensor(batch["crop"][i], dtype=torch.int64),
        "scale_size": torch.tensor(batch["scale_size"][i], dtype=torch.int64),
        "flip": torch.tensor([int(batch["flip"][i])], dtype=torch.uint8),
    }
    if job.store_frames:
        tensors["frames"] = quantize_video(batch["video"][i])
    src = batch["path"][i]
    entry = job.ds.entries[idx]
    metadata = {
        **job.identity,
        "format_version": str(FORMAT_VERSION),
        "source": src,
        "clip": str(clip),
        "index": str(idx),
        # the source file as encoded: a later run regenerates the sample when it changed
        "source_size": str(entry.size), "source_mtime": str(entry.mtime),
        # original frame size: lets LatentDataset notice a changed file
        "source_height": str(entry.height), "source_width": str(entry.width),
    }
    atomic_write(job.out / name, safetensors_save(tensors, metadata=metadata))
    plan.records[name] = _record(name, src, clip, idx, batch["frame_indices"][i], batch["crop"][i],
                                 batch["scale_size"][i], batch["flip"][i], job.store_frames, (entry.size, entry.mtime))


def encode_pending(job: _Job, plan: _Plan, batch_size: int, num_workers: int, progress: bool) -> int:
    """Encode the plan's pending samples clip by clip (``teacher.encode`` of the float32 clips, ``batch_size`` at a
    time), write each one, and rewrite the manifest every ``MANIFEST_EVERY`` samples and after every clip; returns
    how many were written. All latents must have one shape."""
    out, ds, teacher, device = job.out, job.ds, job.teacher, job.device
    n_skipped = len(plan.samples) - plan.num_pending
    bar = tqdm(total=len(plan.samples), initial=n_skipped, desc=f"latents -> {out.name}", unit="clip",
               disable=not progress, dynamic_ncols=True)
    written = since_manifest = 0
    try:
        for clip in sorted(plan.pending):
            ds.set_epoch(clip)  # before the loader iterator exists, so workers copy the right epoch
            loader = DataLoader(Subset(ds, plan.pending[clip]), batch_size=batch_size, shuffle=False,
                                num_workers=num_workers, collate_fn=collate_videos,
                                pin_memory=torch.device(device).type == "cuda")
            pos = 0
            for batch in loader:
                video = batch["video"]
                with torch.no_grad():
                    lat = teacher.encode(video.to(device, non_blocking=True)).float().cpu()
                if lat.shape[0] != video.shape[0]:
                    raise RuntimeError(f"teacher returned {lat.shape[0]} latents for {video.shape[0]} clips")
                if plan.latent_shape is None:
                    plan.latent_shape = list(lat.shape[1:])
                elif list(lat.shape[1:]) != plan.latent_shape:
                    raise RuntimeError(f"latent shape {tuple(lat.shape[1:])} differs from earlier samples "
                                       f"{tuple(plan.latent_shape)} in {str(out)!r}")
                for i in range(video.shape[0]):
                    _write_sample(job, plan, clip, plan.pending[clip][pos], batch, i,
                                  lat[i].half() if job.fp16 else lat[i])
                    pos += 1
                    written += 1
                    since_manifest += 1
                    bar.update(1)
                if since_manifest >= MANIFEST_EVERY:
                    write_manifest(job, plan, complete=False)
                    since_manifest = 0
            write_manifest(job, plan, complete=False)
            since_manifest = 0
    finally:
        bar.close()
    return written


def generate_latents(
    cfg: dict | str | os.PathLike,
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_frames: int | None = None,
    resolution: int | Sequence[int] = 128,
    clips_per_video: int = 4,
    seed: int = 0,
    files: Sequence[str] | None = None,
    store_frames: bool = False,
    teacher=None,
    progress: bool = True,
    *,
    batch_size: int = 1,
    fp16: bool = False,
    overwrite: bool = False,
    rebuild_stale: bool = False,
    frame_stride: int = 1,
    random_flip: bool = True,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    log=None,
) -> Path:
    """Encode ``clips_per_video`` random clips of every video under ``data_dir`` (or of ``files``)
    with the teacher of ``cfg`` and write them to ``output_dir``; returns ``output_dir``.

    ``num_frames`` defaults to the config's. ``teacher``: an already loaded teacher (anything with
    ``encode``); otherwise ``load_teacher(cfg)`` is loaded on ``device`` (default: CUDA when available).
    The stored latents are ``teacher.encode`` of the float32 clip, batched ``batch_size`` at a time.

    The folder is a cache of what it was made from: data folder, each source file's size and mtime, teacher
    class and weights (sha256), frames, resolution, stride, seed and flips (``manifest.json``: ``identity``,
    and per sample ``source_size``/``source_mtime``). A folder made from the same is reused: samples already
    there are kept, those missing (an interrupted run) or of changed source files are written. One made from
    other data, teacher or settings is rebuilt from scratch with ``rebuild_stale`` (the trainer's cache) and
    is an error otherwise (SettingsMismatchError; ``overwrite`` rebuilds). One line says which and why
    (``log``, default: stderr).

    The steps: ``_prepare`` (check, index, folder, teacher), ``_decide_about_cache``, ``plan_samples``,
    ``write_manifest`` (what is there), ``encode_pending``, ``write_manifest`` (complete).
    """
    t_start = time.perf_counter()
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    job = _prepare(cfg, data_dir, output_dir, num_frames, resolution, clips_per_video, seed, files, store_frames,
                   teacher, batch_size, fp16, frame_stride, random_flip, device, cache_dir)
    old, rebuild = _decide_about_cache(job, overwrite, rebuild_stale)
    plan = plan_samples(job, reuse=not rebuild)
    n_pending = plan.num_pending
    n_skipped = len(plan.samples) - n_pending
    log(f"latent cache {job.out}: " + _decision_line(old, rebuild, len(plan.samples), n_pending, plan.changed))
    write_manifest(job, plan, complete=n_pending == 0,
                   stats={"written": 0, "skipped": n_skipped} if n_pending else None)

    t_gen = time.perf_counter()
    written = encode_pending(job, plan, batch_size, num_workers, progress)
    seconds = time.perf_counter() - t_gen
    stats = {"written": written, "skipped": n_skipped, "seconds": round(seconds, 3),
             "samples_per_s": round(written / seconds, 3) if written and seconds > 0 else None,
             "total_seconds": round(time.perf_counter() - t_start, 3)}
    write_manifest(job, plan, complete=True, stats=stats)
    logger.info("latents in %s: %d written, %d already there (%.1f s)", job.out, written, n_skipped, seconds)
    return job.out


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def read_files_list(path: str | os.PathLike) -> list[str]:
    """Relative video paths, one per line; blank lines and ``#`` comments are ignored."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Pre-compute frozen-teacher latents for decoder distillation.")
    p.add_argument("--config", required=True, help="config name (configs/<name>.yaml) or path")
    p.add_argument("--data_dir", required=True, help="folder of training videos")
    p.add_argument("--output_dir", required=True, help="folder for the latent files and manifest.json")
    p.add_argument("--num_frames", type=int, default=None,
                   help="frames per clip (default: the config's, settings.clip_size)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square clip size in pixels (default: the config's, settings.clip_size)")
    p.add_argument("--clips_per_video", type=int, default=4, help="random windows per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files_from", default=None,
                   help="text file with the relative paths to use, one per line (default: all videos)")
    p.add_argument("--store_frames", action="store_true",
                   help="also store the encoded pixels as uint8 round((v + 1) * 127.5)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--fp16", action="store_true", help="store latents as float16")
    p.add_argument("--overwrite", action="store_true", help="regenerate samples that already exist")
    p.add_argument("--frame_stride", type=int, default=1)
    p.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for video decoding")
    p.add_argument("--device", default=None, help="device for the teacher (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Arguments, config, folders and the file list are checked before the video folder is indexed
    or the teacher loaded; those errors, a stale output folder and an unusable data folder exit with code 2
    and one message (``models.cli.run``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        cfg = load_config(args.config)
        frames, size = clip_size(cfg)  # the clips the config trains on, so train.py finds this cache current
        num_frames = args.num_frames or frames
        if args.resolution is None:
            args.resolution = size
        check_clip_fits(cfg, num_frames, args.resolution, args.resolution)
        check_dir(args.data_dir, "--data_dir")
        check_writable_dir(args.output_dir, "--output_dir")
        files = read_files_list(args.files_from) if args.files_from else None
        out = generate_latents(
            cfg, args.data_dir, args.output_dir, num_frames=num_frames, resolution=args.resolution,
            clips_per_video=args.clips_per_video, seed=args.seed, files=files, store_frames=args.store_frames,
            progress=not args.quiet, batch_size=args.batch_size, fp16=args.fp16, overwrite=args.overwrite,
            frame_stride=args.frame_stride, random_flip=not args.no_flip, num_workers=args.num_workers,
            device=args.device)
    stats = json.loads((out / MANIFEST_NAME).read_text())
    last = stats.get("last_run") or {}
    print(f"{stats['num_samples']} samples in {out} ({last.get('written', 0)} written, "
          f"{last.get('skipped', 0)} already there; {last.get('samples_per_s')} samples/s)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
