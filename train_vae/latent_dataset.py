"""Pre-computed teacher latents paired with exactly the pixels they were computed from.

Folder layout (written by ``train_vae/generate_latents.py``)::

    LATENT_DIR/manifest.json                       settings + the list of samples
    LATENT_DIR/<stem>-<sha1(path)[:8]>-c<clip>.safetensors   one file per sample

Tensors of a sample file:

* ``latents``       (C, T', H', W') float32 (float16 with ``--fp16``): ``teacher.encode(video)``
* ``frame_indices`` int64 (T,)   source frames of the window (0-based, presentation order)
* ``crop``          int64 (4,)   (top, left, h, w) in the resized frame
* ``scale_size``    int64 (2,)   (H, W) the source frame was resized to before cropping
* ``flip``          uint8 (1,)   1 when the clip was flipped horizontally after cropping
* ``frames``        uint8 (T, H, W, 3), optional (``--store_frames``): the pixels the encoder saw,
  quantised as ``round((video + 1) * 127.5)`` from the float video in [-1, 1] (after resize, crop
  and flip). Dequantised as ``frames / 127.5 - 1``, so they differ from the float video by at most
  0.5/127.5; when no resize happens (source short side == resolution) they are exact.

String metadata of the safetensors header: ``source`` (path relative to the data dir), ``clip``,
``index``, ``config``, ``teacher_class``, ``num_frames``, ``resolution``, ``frame_stride``,
``seed``, ``random_flip``, ``source_height``, ``source_width``, ``format_version``.

``LatentDataset`` never draws its own random window or crop (the reference implementation's
latent dataset did, so its videos no longer matched its latents): the video of an item is
rebuilt from the recorded frame indices / scale size / crop / flip, or taken from the stored frames.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from train_vae.data import read_video_frames, resize_crop_frames, scale_size_for

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SAMPLE_SUFFIX",
    "SAMPLE_PATTERN",
    "LatentDataset",
    "collate_latents",
    "sample_name",
    "quantize_video",
    "dequantize_frames",
    "read_sample_header",
    "read_manifest",
    "video_from_source",
]

FORMAT_VERSION = 2  # 2: the manifest's ``identity`` and each sample's source_size / source_mtime
MANIFEST_NAME = "manifest.json"
SAMPLE_SUFFIX = ".safetensors"
SAMPLE_PATTERN = re.compile(r".+-[0-9a-f]{8}-c[0-9]{3,}\.safetensors")  # the names ``sample_name`` gives
REQUIRED_TENSORS = ("latents", "frame_indices", "crop", "scale_size", "flip")


# ---------------------------------------------------------------------------------------------
# format helpers (shared with generate_latents.py)
# ---------------------------------------------------------------------------------------------

def sample_name(source: str, clip: int) -> str:
    """File name of clip ``clip`` of the video ``source`` (path relative to the data dir): a
    readable stem plus a hash of the full relative path, so equal stems in different folders differ."""
    rel = Path(source).as_posix()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).stem).strip("_")[:80] or "video"
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}-c{int(clip):03d}{SAMPLE_SUFFIX}"


def quantize_video(video: torch.Tensor) -> torch.Tensor:
    """float ``(3, T, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)`` = round((v + 1) * 127.5)."""
    return ((video.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8) \
        .permute(1, 2, 3, 0).contiguous()


def dequantize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)`` in [-1, 1] (frames / 127.5 - 1)."""
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0).contiguous()


def video_from_source(data_dir: str | os.PathLike, source: str, frame_indices: Sequence[int],
                      scale_size: Sequence[int], crop: Sequence[int], flip: bool) -> torch.Tensor:
    """Rebuild the float ``(3, T, H, W)`` clip in [-1, 1] that ``VideoDataset`` produced for the
    recorded window / resize / crop / flip (same reader, same resize, no randomness).

    Raises ``RuntimeError`` when the source frames no longer have the recorded size."""
    path = Path(data_dir) / source
    if not path.is_file():
        raise FileNotFoundError(f"source video {str(path)!r} of a latent sample does not exist")
    frames = read_video_frames(path, [int(i) for i in frame_indices])
    h, w = int(frames.shape[1]), int(frames.shape[2])
    top, left, ch, cw = (int(v) for v in crop)
    rh, rw = (int(v) for v in scale_size)
    if scale_size_for(h, w, (ch, cw)) != (rh, rw):
        raise RuntimeError(f"source video {str(path)!r} has {h}x{w} frames, which do not match the recorded "
                           f"resize to {rh}x{rw}: the file changed since its latents were generated")
    video = resize_crop_frames(frames, (rh, rw), (top, left, ch, cw))
    if flip:
        video = torch.flip(video, dims=[-1])
    return video.permute(1, 0, 2, 3).contiguous()


def read_sample_header(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata, tensor shapes/dtypes and the small tensors (indices, crop, ...) of a sample file,
    without loading ``latents`` or ``frames``."""
    with safe_open(os.fspath(path), framework="pt") as f:
        keys = set(f.keys())
        missing = [k for k in REQUIRED_TENSORS if k not in keys]
        if missing:
            raise ValueError(f"latent sample {str(path)!r} lacks tensors {missing}")
        meta = dict(f.metadata() or {})
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
        small = {k: f.get_tensor(k) for k in ("frame_indices", "crop", "scale_size", "flip")}
    return {
        "metadata": meta,
        "shapes": shapes,
        "dtypes": dtypes,
        "has_frames": "frames" in keys,
        "frame_indices": [int(v) for v in small["frame_indices"].tolist()],
        "crop": [int(v) for v in small["crop"].tolist()],
        "scale_size": [int(v) for v in small["scale_size"].tolist()],
        "flip": bool(int(small["flip"].reshape(-1)[0])),
    }


def read_manifest(latent_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a latent folder; clear errors for a missing folder or manifest."""
    root = Path(latent_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"latent folder {str(root)!r} does not exist; create it with "
                                f"`python train_vae/generate_latents.py --output_dir {root} ...`")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise FileNotFoundError(f"latent folder {str(root)!r} has no {MANIFEST_NAME}: it is empty, not a latent "
                                f"folder, or generation never got going; run train_vae/generate_latents.py")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {str(mpath)!r}: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(mpath)!r} has format_version {manifest.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}: generate the latents again")
    return manifest


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------

class LatentDataset(Dataset):
    """Teacher latents and the video they encode, from a folder written by generate_latents.py.

    Item: ``{"latents": (C, T', H', W') float32, "video": (3, T, H, W) float32 in [-1, 1],
    "path", "frame_indices", "crop", "flip", "scale_size", "clip", "index", "file"}``.

    ``video_source``:

    * ``"auto"`` (default): the stored uint8 ``frames`` when the sample has them, else the
      source video re-read from ``data_dir``;
    * ``"frames"``: stored frames only (error at init if a sample has none);
    * ``"source"``: always re-read from ``data_dir`` -- the exact float pixels the encoder saw,
      without the <= 0.5/127.5 quantisation of stored frames.

    Re-reading uses the recorded frame indices, resize and crop and flip; nothing is random here.
    Init checks the manifest, that every listed sample exists and that tensor shapes agree with
    the manifest; errors name the folder.
    """

    def __init__(self, latent_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 video_source: str = "auto"):
        if video_source not in ("auto", "frames", "source"):
            raise ValueError(f"video_source must be 'auto', 'frames' or 'source', got {video_source!r}")
        self.latent_dir = Path(latent_dir).expanduser().resolve()
        self.video_source = video_source
        self.manifest = read_manifest(self.latent_dir)
        m = self.manifest
        where = str(self.latent_dir)
        samples = list(m.get("samples") or [])
        if not samples:
            raise ValueError(f"latent folder {where!r} lists no samples in its {MANIFEST_NAME} "
                             f"(generation interrupted before the first sample?)")
        if not m.get("complete", False):  # never train on part of a cache without a word
            raise ValueError(f"latent folder {where!r} is incomplete: generation stopped after {len(samples)} "
                             f"samples; run the same generate_latents.py command (or training) again to finish it")
        self.num_frames = int(m["num_frames"])
        self.resolution = tuple(int(v) for v in m["resolution"])
        self.latent_shape = tuple(int(v) for v in m["latent_shape"])

        missing = [s["file"] for s in samples if not (self.latent_dir / s["file"]).is_file()]
        if missing:
            raise FileNotFoundError(f"latent folder {where!r}: {len(missing)} sample file(s) listed in "
                                    f"{MANIFEST_NAME} are missing, e.g. {missing[:3]}")
        self.samples: list[dict[str, Any]] = []
        H, W = self.resolution
        for s in samples:
            path = self.latent_dir / s["file"]
            try:
                head = read_sample_header(path)
            except Exception as e:
                raise ValueError(f"latent folder {where!r}: cannot read sample {s['file']!r}: {e}") from e
            problems = []
            if head["shapes"]["latents"] != self.latent_shape:
                problems.append(f"latents {head['shapes']['latents']} != manifest {self.latent_shape}")
            if len(head["frame_indices"]) != self.num_frames:
                problems.append(f"{len(head['frame_indices'])} frame indices != num_frames {self.num_frames}")
            if tuple(head["crop"][2:]) != (H, W):
                problems.append(f"crop {head['crop']} does not give {H}x{W}")
            if head["has_frames"] and head["shapes"]["frames"] != (self.num_frames, H, W, 3):
                problems.append(f"frames {head['shapes']['frames']} != {(self.num_frames, H, W, 3)}")
            if problems:
                raise ValueError(f"latent folder {where!r}, sample {s['file']!r}: " + "; ".join(problems))
            meta = head["metadata"]
            self.samples.append({
                "file": s["file"],
                "path": meta.get("source", s.get("source")),
                "clip": int(meta.get("clip", s.get("clip", 0))),
                "index": int(meta.get("index", s.get("index", -1))),
                "frame_indices": head["frame_indices"],
                "crop": tuple(head["crop"]),
                "scale_size": tuple(head["scale_size"]),
                "flip": head["flip"],
                "has_frames": head["has_frames"],
            })

        without = sum(not s["has_frames"] for s in self.samples)
        if video_source == "frames" and without:
            raise ValueError(f"latent folder {where!r}: {without} of {len(self.samples)} samples have no stored "
                             f"frames (generate with --store_frames, or use video_source='auto'/'source')")
        needs_source = video_source == "source" or without > 0
        self.data_dir: Path | None = None
        if data_dir is not None:
            self.data_dir = Path(data_dir).expanduser().resolve()
            if not self.data_dir.is_dir():
                raise FileNotFoundError(f"data_dir {str(self.data_dir)!r} for latent folder {where!r} does not exist")
        elif needs_source:
            why = ("video_source='source'" if video_source == "source"
                   else f"{without} of {len(self.samples)} samples have no stored frames")
            raise ValueError(f"latent folder {where!r}: {why}, so the videos must be re-read from their "
                             f"source: pass data_dir (generated from {m.get('data_dir')!r}), or regenerate "
                             f"with --store_frames")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        s = self.samples[idx]
        use_frames = s["has_frames"] and self.video_source != "source"
        keys = ["latents"] + (["frames"] if use_frames else [])
        with safe_open(os.fspath(self.latent_dir / s["file"]), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in keys}
        if use_frames:
            video = dequantize_frames(t["frames"])
        else:
            assert self.data_dir is not None
            video = video_from_source(self.data_dir, s["path"], s["frame_indices"], s["scale_size"],
                                      s["crop"], s["flip"])
        return {
            "latents": t["latents"].float(),
            "video": video,
            "path": s["path"],
            "frame_indices": list(s["frame_indices"]),
            "crop": s["crop"],
            "flip": s["flip"],
            "scale_size": s["scale_size"],
            "clip": s["clip"],
            "index": s["index"],
            "file": s["file"],
        }


def collate_latents(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``latents`` (B, C, T', H', W') and ``video`` (B, 3, T, H, W); other fields as lists."""
    out: dict[str, Any] = {"latents": torch.stack([b["latents"] for b in batch]),
                           "video": torch.stack([b["video"] for b in batch])}
    for k in batch[0]:
        if k not in out:
            out[k] = [b[k] for b in batch]
    return out
