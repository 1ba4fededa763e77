"""Video data: robust frame reading, a cached folder index, the training dataset, and
procedural demo clips.

Reading
    ``read_video_frames(path, indices)`` decodes with decord (cpu, one thread) and falls back to
    PyAV when decord is not installed or raises (decord cannot open some WebM files whose
    container has no duration, e.g. ``unstated_imageio_handwave.webm``). The PyAV fallback never
    seeks (seeking is unreliable across containers): it decodes sequentially up to
    ``max(indices)``. Both readers return the same RGB24 pixels.

    decord's random access can silently return corrupted frames: for
    ``unstated_imageio_cockatoo.mp4`` (H.264 High 4:4:4 from an old x264) every frame after a
    seek to a later key frame is wrong, because FFmpeg only applies its x264-bug workarounds after
    seeing the version SEI of the first packet. So "auto" compares, once per file and process,
    decord's seeked read of the first key frame > 0 with a sequential decode, and reads files that
    fail sequentially with PyAV. The index stores the outcome (``VideoEntry.reader``).

    ``count_frames(path)`` trusts the stream header (``nb_frames``) when it is > 0 and otherwise
    decodes the stream and counts frames (WebM/MKV headers usually report 0). Decoding is the
    reliable count: a demuxed packet count can differ from the frame count (hidden VP8/VP9
    alt-ref frames, empty packets), and decord's length for such files is only an estimate
    from duration x fps.

Index
    ``VideoIndex(data_dir)`` scans a folder tree for .mp4/.webm/.mkv/.avi/.mov (any case), probes
    every file once and caches the result as JSON outside the data folder, in
    ``$TURBO_VAED_CACHE`` (default ``~/.cache/turbo_vaed``)``/video_index/<sha1(abs dir)>.json``.
    Cached entries are reused while a file's size and mtime are unchanged. Broken input never
    stops a scan: every skipped file is named once in a ``VideoSkipWarning`` with its reason and
    collected in ``index.skipped``. Skip rules:

    * unreadable: 0-byte, truncated (no decodable frame), not a video, no video stream
      (a file truncated after some frames keeps the frames that decode and is read with PyAV);
    * too short: fewer than ``(num_frames - 1) * frame_stride + 1`` frames;
    * too small: short side < ``min_short_side`` (default 64 px). Smaller frames are upsampled to
      the training resolution, but below 64 px there is nothing left worth learning from.

Dataset
    ``VideoDataset`` gives one random window per file per epoch (``clips_per_video`` to repeat).
    Per-item randomness comes from ``numpy.random.default_rng([seed, epoch, idx, attempt])`` so
    that results do not depend on worker count, worker order or resumption. Call
    ``set_epoch(e)`` before creating the DataLoader iterator of each epoch (with
    ``persistent_workers=True`` workers keep their own copy, so the epoch would be stale there).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.assets import cache_dir as user_cache_dir
from models.files import atomic_write

logger = logging.getLogger(__name__)

# containers PyAV/FFmpeg read as video; other files in a data folder are named in one warning, never silently dropped
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".mpg", ".mpeg", ".m4v", ".ts", ".mts", ".m2ts", ".ogv",
                    ".flv", ".wmv", ".3gp", ".vob", ".mxf", ".y4m")
INDEX_VERSION = 2  # bump whenever probing changes: old caches are then ignored

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoSkipWarning",
    "VideoInfo",
    "VideoEntry",
    "VideoIndex",
    "VideoDataset",
    "read_video_frames",
    "count_frames",
    "probe_video",
    "decord_reader_ok",
    "resize_crop_frames",
    "split_files",
    "collate_videos",
    "make_procedural_clips",
]


class VideoSkipWarning(UserWarning):
    """A video file was left out of an index or dataset (the message says which and why)."""


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------

def _import_decord():
    try:
        import decord  # noqa: PLC0415
    except Exception:  # ImportError, or a broken native library
        return None
    return decord


def _import_av():
    try:
        import av  # noqa: PLC0415
    except Exception:
        return None
    return av


def _describe(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 200:
        msg = msg[:200] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


NO_READER = "neither PyAV nor decord is installed"


def _open_decord(path: str, missing: str = "decord is not installed"):
    """A decord reader (CPU, one thread); ImportError ``missing`` without decord (``NO_READER`` where PyAV is
    missing too: then decord is the only way to read videos)."""
    decord = _import_decord()
    if decord is None:
        raise ImportError(missing)
    return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)


def _video_stream(container):
    """The first video stream of a PyAV container; ValueError "no video stream" when it has none."""
    if not container.streams.video:
        raise ValueError("no video stream")
    return container.streams.video[0]


def _decord_get(vr, indices: list[int]) -> np.ndarray:
    n = len(vr)
    bad = [i for i in indices if i < 0 or i >= n]
    if bad:
        raise IndexError(f"frame indices {bad[:5]} out of range for {n} frames (decord)")
    return vr.get_batch(indices).asnumpy()


def _read_decord(path: str, indices: list[int]) -> np.ndarray:
    vr = _open_decord(path)
    try:
        return _decord_get(vr, indices)
    finally:
        del vr


def _read_pyav(path: str, indices: list[int]) -> np.ndarray:
    av = _import_av()
    if av is None:
        raise ImportError("PyAV (av) is not installed")
    if any(i < 0 for i in indices):
        raise IndexError(f"negative frame index in {indices[:5]}")
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = _video_stream(container)
        i = -1
        for i, frame in enumerate(container.decode(stream)):  # sequential, no seeking
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(got) != len(wanted):
        missing = sorted(wanted - got.keys())
        raise IndexError(
            f"frame indices {missing[:5]} out of range: only {i + 1} frames decodable (PyAV)"
        )
    return np.stack([got[j] for j in indices])


# Seeking is not always safe. Example: unstated_imageio_cockatoo.mp4 (H.264 High 4:4:4 from an
# old x264) decodes correctly only from frame 0: FFmpeg enables its x264-bug workarounds from the
# x264 version SEI in the first packet, so after a seek to a later IDR frame decord (and PyAV
# seeking) silently return corrupted frames. The check below compares decord's seeked read of the
# first key frame > 0 against a sequential PyAV decode; files that fail are read sequentially.
_SEEK_SAFE: dict[tuple[str, int, int], bool] = {}


def _first_seek_key(vr) -> int | None:
    try:
        keys = [int(k) for k in vr.get_key_indices()]
    except Exception:
        return None
    later = [k for k in keys if 0 < k < len(vr)]
    return min(later) if later else None


def _decord_seek_ok(path: str, vr) -> bool:
    """True when decord's random access matches sequential decoding (cached per file version)."""
    st = os.stat(path)
    key = (os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns))
    if key in _SEEK_SAFE:
        return _SEEK_SAFE[key]
    k = _first_seek_key(vr)
    ok = True
    if k is not None and _import_av() is not None:
        targets = [k, min(k + 1, len(vr) - 1)]
        try:
            fresh = _open_decord(path)  # fresh reader: position 0, so reading k must seek
            seeked = _decord_get(fresh, targets).astype(np.int16)
            del fresh
            reference = _read_pyav(path, targets).astype(np.int16)
            ok = seeked.shape == reference.shape and float(np.abs(seeked - reference).mean()) < 1.0
        except Exception:
            ok = False
        if not ok:
            logger.info("decord random access is unreliable for %s; reading it sequentially", path)
    _SEEK_SAFE[key] = ok
    return ok


def decord_reader_ok(path: str | os.PathLike) -> bool:
    """Whether decord can open ``path`` and its seeks give the frames a sequential decode gives."""
    path = os.fspath(path)
    try:
        vr = _open_decord(path)
    except Exception:
        return False
    return _decord_seek_ok(path, vr)


def read_video_frames(path: str | os.PathLike, indices: Sequence[int], backend: str = "auto",
                      check_seek: bool = True) -> torch.Tensor:
    """Frames ``indices`` (presentation order, 0-based) of ``path`` as uint8 ``(T, H, W, 3)`` RGB.

    ``backend``: ``"auto"`` (decord; PyAV when decord is missing, raises, or its random access is
    unreliable for this file), ``"decord"`` (no checks, no fallback) or ``"pyav"`` (sequential
    decode up to ``max(indices)``). Indices may repeat and need not be sorted. ``check_seek=False``
    skips the once-per-file-and-process seek check of "auto" (for files already known good, e.g.
    ``VideoEntry.reader == "decord"``).
    """
    path = os.fspath(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices must not be empty")
    if backend == "decord":
        return torch.from_numpy(_read_decord(path, indices))
    if backend == "pyav":
        return torch.from_numpy(_read_pyav(path, indices))
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r} (auto, decord, pyav)")
    try:
        vr = _open_decord(path)
        k = _first_seek_key(vr)
        if check_seek and k is not None and max(indices) >= k and not _decord_seek_ok(path, vr):
            raise RuntimeError("decord random access unreliable for this file")
        frames = _decord_get(vr, indices)
        del vr
    except Exception as exc:  # decord missing, cannot open (broken metadata), bad seek...
        logger.debug("decord failed on %s (%s); falling back to PyAV", path, _describe(exc))
        frames = _read_pyav(path, indices)
    return torch.from_numpy(frames)


def _decode_count(container, stream) -> int:
    """Frames that decode; a decode error after at least one frame (a truncated tail) ends the
    count instead of raising."""
    n = 0
    try:
        for _ in container.decode(stream):
            n += 1
    except Exception:
        if n == 0:
            raise
    return n


def count_frames(path: str | os.PathLike) -> int:
    """Number of video frames: the stream header's count when > 0, else counted by decoding.

    Without PyAV, decord's length is used (an estimate for files without a frame count).
    """
    path = os.fspath(path)
    av = _import_av()
    if av is None:
        return len(_open_decord(path, NO_READER))
    with av.open(path) as container:
        stream = _video_stream(container)
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        stream.thread_type = "AUTO"
        return _decode_count(container, stream)


@dataclass(frozen=True)
class VideoInfo:
    """What probing one video tells (``probe_video``): the one record of a video's metadata.

    ``VideoEntry`` is this plus where the file sits in a ``VideoIndex``; ``validation_metrics.Clip`` is a window
    chosen from a video and holds its ``VideoInfo`` as ``video``. No other record repeats these fields.
    """
    frames: int  # frames that decode
    height: int  # decoded frame size
    width: int
    fps: float  # 0.0 when the container states none
    # how to read it: "decord" when decord opens it and its random access matches sequential decoding, "pyav"
    # (sequential decoding), or "jpeg" for a folder of numbered JPEG frames (DAVIS)
    reader: str = "pyav"


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, decoded frame size and frame rate; raises if no frame can be decoded.

    The count is ``count_frames(path)``; when the header reports more frames than the file holds
    packets for (a truncated file), the frames that actually decode are counted instead. ``reader`` is "decord" when
    decord opens the file and its random access matches sequential decoding, else "pyav".
    """
    path = os.fspath(path)
    av = _import_av()
    if av is None:
        vr = _open_decord(path, NO_READER)
        h, w = vr[0].shape[:2]
        return VideoInfo(len(vr), int(h), int(w), float(vr.get_avg_fps()), "decord")
    with av.open(path) as container:
        stream = _video_stream(container)
        first = next(iter(container.decode(stream)), None)
        if first is None:
            raise ValueError("no decodable video frame")
        height, width = int(first.height), int(first.width)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        header = int(stream.frames or 0)
    frames = count_frames(path)
    if header > 0:
        # cheap truncation check: demux (no decoding) and count non-empty packets
        with av.open(path) as container:
            stream = container.streams.video[0]
            packets = sum(1 for p in container.demux(stream) if p.size > 0)
        if packets < frames:  # truncated: count what really decodes, read it sequentially
            with av.open(path) as container:
                frames = min(frames, _decode_count(container, container.streams.video[0]))
            return VideoInfo(frames, height, width, fps, "pyav")
    reader = "decord" if decord_reader_ok(path) else "pyav"
    return VideoInfo(frames, height, width, fps, reader)


# --------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class VideoEntry(VideoInfo):
    """A usable video of a ``VideoIndex``: its probed ``VideoInfo`` (inherited fields) plus the file's place in the
    folder and the size and mtime that probe is valid for (the index cache's key)."""
    path: str  # relative to the data dir, '/'-separated
    size: int  # st_size
    mtime: int  # st_mtime_ns


def _warn_skip(rel: str, reason: str, where: str) -> None:
    warnings.warn(f"skipping video {rel!r} in {where}: {reason}", VideoSkipWarning, stacklevel=3)


class VideoIndex:
    """Readable videos under ``data_dir`` that fit the requested clip length and size.

    Attributes: ``entries`` (valid ``VideoEntry``s, sorted by path), ``skipped`` (``{rel path:
    reason}`` for every file left out), ``cache_path`` (the JSON file, or None when unused),
    ``num_probed`` (files decoded in this scan, i.e. cache misses).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        num_frames: int = 1,
        frame_stride: int = 1,
        min_short_side: int = 64,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        allow_empty: bool = False,
    ):
        self.data_dir = Path(data_dir).expanduser().resolve()
        if not self.data_dir.is_dir():
            raise ValueError(f"video folder {str(self.data_dir)!r} does not exist or is not a directory")
        if num_frames < 1 or frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be >= 1")
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.min_short_side = int(min_short_side)
        self.required_frames = (self.num_frames - 1) * self.frame_stride + 1
        self.cache_path: Path | None = None
        if use_cache:
            digest = hashlib.sha1(str(self.data_dir).encode("utf-8")).hexdigest()
            base = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir()
            self.cache_path = base / "video_index" / f"{digest}.json"
        self.entries: list[VideoEntry] = []
        self.skipped: dict[str, str] = {}
        self.num_probed = 0
        self._scan()
        if not self.entries and not allow_empty:
            raise ValueError(self.empty_message())

    # -- scanning ---------------------------------------------------------------------------
    def _list_files(self) -> list[str]:
        """Video files under the folder; the other (non-hidden) files go to ``self.ignored``, named in one warning."""
        out, self.ignored = [], []
        for root, dirs, files in os.walk(self.data_dir, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                rel = (Path(root) / name).relative_to(self.data_dir).as_posix()
                if name.lower().endswith(VIDEO_EXTENSIONS):
                    out.append(rel)
                elif not name.startswith("."):
                    self.ignored.append(rel)
        if self.ignored:
            shown = ", ".join(sorted(self.ignored)[:10]) + (", ..." if len(self.ignored) > 10 else "")
            warnings.warn(f"{len(self.ignored)} file(s) in {str(self.data_dir)!r} left out: not a video file extension "
                          f"({shown}); video extensions: {' '.join(VIDEO_EXTENSIONS)}", VideoSkipWarning, stacklevel=3)
        return sorted(out)

    def _load_cache(self) -> dict[str, dict]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
            if data.get("version") != INDEX_VERSION or data.get("data_dir") != str(self.data_dir):
                return {}
            return dict(data.get("files", {}))
        except Exception as exc:
            logger.warning("ignoring unreadable video index cache %s (%s)", self.cache_path, _describe(exc))
            return {}

    def _save_cache(self, files: dict[str, dict]) -> None:
        if self.cache_path is None:
            return
        payload = {"version": INDEX_VERSION, "data_dir": str(self.data_dir), "files": files}
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # atomic, through a temp file named after this process: concurrent ranks never see half a file
            atomic_write(self.cache_path, json.dumps(payload, indent=0, sort_keys=True))
        except OSError as exc:
            logger.warning("could not write video index cache %s (%s)", self.cache_path, _describe(exc))

    def _probe(self, full: Path) -> dict:
        return asdict(probe_video(full))

    def _scan(self) -> None:
        cache = self._load_cache()
        records: dict[str, dict] = {}
        for rel in self._list_files():
            full = self.data_dir / rel
            try:
                st = full.stat()
            except OSError as exc:
                self._skip(rel, f"cannot stat ({_describe(exc)})")
                continue
            key = {"size": int(st.st_size), "mtime": int(st.st_mtime_ns)}
            cached = cache.get(rel)
            if (cached and cached.get("size") == key["size"] and cached.get("mtime") == key["mtime"]
                    and ("error" in cached or "reader" in cached)):
                rec = cached
            else:
                if st.st_size == 0:
                    rec = {**key, "error": "empty file (0 bytes)"}
                else:
                    self.num_probed += 1
                    try:
                        rec = {**key, **self._probe(full)}
                        if rec["frames"] <= 0:
                            rec = {**key, "error": "no decodable video frames"}
                    except Exception as exc:
                        rec = {**key, "error": f"unreadable or not a video ({_describe(exc)})"}
            records[rel] = rec
            if "error" in rec:
                self._skip(rel, rec["error"])
                continue
            entry = VideoEntry(frames=int(rec["frames"]), height=int(rec["height"]), width=int(rec["width"]),
                               fps=float(rec["fps"]), reader=str(rec["reader"]), path=rel, **key)
            reason = self._reject(entry)
            if reason:
                self._skip(rel, reason)
            else:
                self.entries.append(entry)
        if records != cache:
            self._save_cache(records)
        logger.info("video index %s: %d usable, %d skipped (%d probed)", self.data_dir,
                    len(self.entries), len(self.skipped), self.num_probed)

    def _reject(self, e: VideoEntry) -> str | None:
        if e.frames < self.required_frames:
            return (f"too short: {e.frames} frames < {self.required_frames} needed "
                    f"(num_frames={self.num_frames}, frame_stride={self.frame_stride})")
        if min(e.height, e.width) < self.min_short_side:
            return f"too small: {e.width}x{e.height}, short side < {self.min_short_side} px"
        return None

    def _skip(self, rel: str, reason: str) -> None:
        if rel in self.skipped:
            return
        self.skipped[rel] = reason
        _warn_skip(rel, reason, str(self.data_dir))

    # -- access -----------------------------------------------------------------------------
    def empty_message(self, files: Iterable[str] | None = None) -> str:
        lines = [f"no usable videos in {str(self.data_dir)!r}"]
        if files is not None:
            lines[0] += " among the requested files"
        lines[0] += (f" (need >= {self.required_frames} frames, short side >= {self.min_short_side} px, "
                     f"extensions {', '.join(VIDEO_EXTENSIONS)})")
        if self.skipped:
            lines.append(f"{len(self.skipped)} file(s) skipped:")
            lines += [f"  {p}: {r}" for p, r in list(self.skipped.items())[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        else:
            lines.append("no video files found")
        return "\n".join(lines)

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.entries]

    def get(self, rel: str) -> VideoEntry | None:
        for e in self.entries:
            if e.path == rel:
                return e
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)

    def to_records(self) -> list[dict]:
        return [asdict(e) for e in self.entries]


def split_files(index: VideoIndex | Iterable[str], num_holdout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic (train_files, holdout_files) split of an index's relative paths.

    Files are ranked by ``sha1(f"{seed}:{path}")`` and the first ``num_holdout`` are held out, so
    the split does not depend on scan order and adding files rarely moves existing ones.
    Both lists come back sorted.
    """
    paths = sorted(set(index.paths if isinstance(index, VideoIndex) else index))
    if num_holdout < 0:
        raise ValueError("num_holdout must be >= 0")
    if num_holdout >= len(paths) and num_holdout > 0:
        raise ValueError(f"cannot hold out {num_holdout} of {len(paths)} files and keep any for training")
    ranked = sorted(paths, key=lambda p: hashlib.sha1(f"{seed}:{p}".encode("utf-8")).hexdigest())
    holdout = sorted(ranked[:num_holdout])
    held = set(holdout)
    return [p for p in paths if p not in held], holdout


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------

def _as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = resolution
    return int(h), int(w)


def scale_size_for(height: int, width: int, out_hw: tuple[int, int]) -> tuple[int, int]:
    """Size the frame is resized to: the smallest aspect-preserving size covering ``out_hw``
    (for a square output: short side = resolution)."""
    H, W = out_hw
    s = max(H / height, W / width)
    return max(H, int(round(height * s))), max(W, int(round(width * s)))


class VideoDataset(Dataset):
    """Random ``num_frames``-frame clips of the videos under ``data_dir``, as float32
    ``(3, T, H, W)`` tensors in [-1, 1].

    Item: ``{"video", "path", "index", "frame_indices", "crop": (top, left, h, w) in the resized
    frame, "flip", "scale_size": (H_resized, W_resized)}``. Train: uniform random window at
    ``frame_stride``, resize short side (bilinear, antialias) + random crop, random horizontal
    flip. Eval (``train=False``): centred window, centre crop, no flip.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        num_frames: int = 17,
        resolution: int | Sequence[int] = 256,
        frame_stride: int = 1,
        random_flip: bool = True,
        train: bool = True,
        files: Sequence[str] | None = None,
        seed: int = 0,
        clips_per_video: int = 1,
        min_short_side: int = 64,
        index: VideoIndex | None = None,
        cache_dir: str | os.PathLike | None = None,
        backend: str = "auto",
        max_retries: int = 8,
    ):
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.resolution = _as_hw(resolution)
        self.random_flip = bool(random_flip)
        self.train = bool(train)
        self.seed = int(seed)
        self.clips_per_video = int(clips_per_video)
        self.backend = backend
        self.max_retries = int(max_retries)
        self.epoch = 0
        if self.clips_per_video < 1:
            raise ValueError("clips_per_video must be >= 1")
        if index is None:
            index = VideoIndex(data_dir, num_frames=self.num_frames, frame_stride=self.frame_stride,
                               min_short_side=min_short_side, cache_dir=cache_dir, allow_empty=True)
        elif (index.num_frames - 1) * index.frame_stride + 1 < (self.num_frames - 1) * self.frame_stride + 1:
            raise ValueError("the given index was built for shorter clips than this dataset needs")
        self.index = index
        self.data_dir = index.data_dir
        if files is None:
            entries = list(index.entries)
        else:
            by_path = {e.path: e for e in index.entries}
            entries = []
            for rel in dict.fromkeys(Path(f).as_posix() for f in files):
                if rel in by_path:
                    entries.append(by_path[rel])
                elif rel not in index.skipped:  # skipped files were already named by the index
                    _warn_skip(rel, "not found among the indexed videos", str(self.data_dir))
        if not entries:
            raise ValueError(index.empty_message(files))
        self.entries: list[VideoEntry] = entries
        self._bad: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries) * self.clips_per_video

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.frame_stride + 1

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        n = len(self.entries)
        base = idx // self.clips_per_video
        last_exc: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            entry = self.entries[(base + attempt) % n]
            if entry.path in self._bad:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, idx, attempt])
            try:
                item = self._load(entry, rng)
            except Exception as exc:  # a file that went bad after indexing: use the next one
                last_exc = exc
                self._bad[entry.path] = _describe(exc)
                _warn_skip(entry.path, f"read failed ({_describe(exc)}); using another video",
                           str(self.data_dir))
                continue
            item["index"] = idx
            return item
        raise RuntimeError(f"could not read a clip for item {idx} after {self.max_retries + 1} attempts "
                           f"in {str(self.data_dir)!r}") from last_exc

    def _load(self, entry: VideoEntry, rng: np.random.Generator) -> dict[str, Any]:
        span = self.span
        if self.train:
            start = int(rng.integers(0, entry.frames - span + 1))
        else:
            start = (entry.frames - span) // 2
        frame_indices = list(range(start, start + span, self.frame_stride))
        path = self.data_dir / entry.path
        if self.backend != "auto":
            frames = read_video_frames(path, frame_indices, backend=self.backend)
        elif entry.reader == "pyav":
            frames = read_video_frames(path, frame_indices, backend="pyav")
        else:  # seeks verified at indexing time; PyAV still backs up a decord failure
            frames = read_video_frames(path, frame_indices, backend="auto", check_seek=False)
        h, w = int(frames.shape[1]), int(frames.shape[2])
        H, W = self.resolution
        rh, rw = scale_size_for(h, w, (H, W))
        if self.train:
            top = int(rng.integers(0, rh - H + 1))
            left = int(rng.integers(0, rw - W + 1))
        else:
            top, left = (rh - H) // 2, (rw - W) // 2
        flip = bool(self.train and self.random_flip and rng.random() < 0.5)
        video = resize_crop_frames(frames, (rh, rw), (top, left, H, W))
        if flip:
            video = torch.flip(video, dims=[-1])
        return {
            "video": video.permute(1, 0, 2, 3).contiguous(),  # (3, T, H, W)
            "path": entry.path,
            "frame_indices": frame_indices,
            "crop": (top, left, H, W),
            "flip": flip,
            "scale_size": (rh, rw),
        }


def resize_crop_frames(frames: torch.Tensor, scale_size: tuple[int, int],
                       crop: tuple[int, int, int, int], chunk: int = 4) -> torch.Tensor:
    """uint8 ``(T, h, w, 3)`` -> float32 ``(T, 3, H, W)`` in [-1, 1]: bilinear (antialiased)
    resize to ``scale_size`` then crop ``(top, left, H, W)``. Works in chunks of frames to keep
    the float copy of large (2K) frames small."""
    rh, rw = scale_size
    top, left, H, W = crop
    outs = []
    for i in range(0, frames.shape[0], chunk):
        x = frames[i:i + chunk].permute(0, 3, 1, 2).float()
        if (x.shape[-2], x.shape[-1]) != (rh, rw):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x[:, :, top:top + H, left:left + W]
        outs.append(x.div(127.5).sub_(1.0).clamp_(-1.0, 1.0))
    return torch.cat(outs, 0)


def collate_videos(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``video`` into ``(B, 3, T, H, W)`` and keep the other fields as per-sample lists
    (the default collate would transpose tuples and lists)."""
    out: dict[str, Any] = {"video": torch.stack([b["video"] for b in batch])}
    for k in batch[0]:
        if k != "video":
            out[k] = [b[k] for b in batch]
    return out


# --------------------------------------------------------------------------------------------
# procedural clips
# --------------------------------------------------------------------------------------------

def _periodic_noise(rng: np.random.Generator, h: int, w: int, channels: int, sigma: float) -> np.ndarray:
    """Smooth, tileable noise in [0, 1] (Gaussian-filtered white noise via FFT)."""
    white = rng.standard_normal((channels, h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    gain = np.exp(-0.5 * (fy ** 2 + fx ** 2) * (2 * math.pi * sigma) ** 2)
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * gain))
    lo = out.min(axis=(1, 2), keepdims=True)
    hi = out.max(axis=(1, 2), keepdims=True)
    return np.transpose((out - lo) / np.maximum(hi - lo, 1e-8), (1, 2, 0))


def _pick_codec(av) -> str:
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError("the installed PyAV has no H.264 or MPEG-4 encoder")


def _render_clip(rng: np.random.Generator, num_frames: int, H: int, W: int) -> Iterator[np.ndarray]:
    # background: tileable colour noise + a soft checker, scrolling and drifting in hue
    bh, bw = 2 * H, 2 * W
    bg = _periodic_noise(rng, bh, bw, 3, sigma=rng.uniform(4.0, 10.0))
    fine = _periodic_noise(rng, bh, bw, 1, sigma=1.5)
    cell = int(rng.integers(16, 40))
    yy, xx = np.mgrid[0:bh, 0:bw]
    checker = (((yy // cell) + (xx // cell)) % 2).astype(np.float64)[..., None]
    bg = 0.55 * bg + 0.25 * fine + 0.2 * checker * rng.uniform(0.3, 0.8, size=3)
    vel = rng.uniform(-3.0, 3.0, size=2)

    # shapes: textured circles / rectangles moving and rotating
    n_shapes = int(rng.integers(2, 5))
    shapes = []
    ty, tx = np.mgrid[0:H, 0:W].astype(np.float64)
    for _ in range(n_shapes):
        size = rng.uniform(0.08, 0.22) * min(H, W)
        tex_kind = int(rng.integers(0, 2))
        tex = _periodic_noise(rng, 64, 64, 3, sigma=rng.uniform(1.0, 3.0))
        shapes.append({
            "kind": int(rng.integers(0, 2)),  # 0 circle, 1 rectangle
            "a": size, "b": size * rng.uniform(0.5, 1.0),
            "p0": rng.uniform([0.2 * H, 0.2 * W], [0.8 * H, 0.8 * W]),
            "v": rng.uniform(-2.5, 2.5, size=2) * min(H, W) / 128,
            "wob": rng.uniform(0, 0.15 * min(H, W)), "wf": rng.uniform(0.05, 0.2),
            "theta0": rng.uniform(0, 2 * math.pi), "omega": rng.uniform(-0.12, 0.12),
            "tex_kind": tex_kind, "tex": tex, "cell": rng.uniform(4, 12),
            "c1": rng.uniform(0, 1, size=3), "c2": rng.uniform(0, 1, size=3),
        })

    for t in range(num_frames):
        oy, ox = (vel * t).round().astype(int)
        frame = np.roll(bg, shift=(oy, ox), axis=(0, 1))[:H, :W].copy()
        frame *= 0.85 + 0.15 * math.sin(0.1 * t)  # slow global brightness change
        for s in shapes:
            # bounce inside the frame
            cy, cx = s["p0"] + s["v"] * t
            cy = _bounce(cy, H)
            cx = _bounce(cx, W)
            cy += s["wob"] * math.sin(s["wf"] * t)
            th = s["theta0"] + s["omega"] * t
            r = max(s["a"], s["b"]) * 1.5 + 2  # bounding box: only render where the shape is
            y0, y1 = max(0, int(cy - r)), min(H, int(cy + r) + 1)
            x0, x1 = max(0, int(cx - r)), min(W, int(cx + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            dy, dx = ty[y0:y1, x0:x1] - cy, tx[y0:y1, x0:x1] - cx
            u = math.cos(th) * dx + math.sin(th) * dy
            v = -math.sin(th) * dx + math.cos(th) * dy
            if s["kind"] == 0:
                dist = np.sqrt((u / s["a"]) ** 2 + (v / s["b"]) ** 2) - 1.0
                dist *= min(s["a"], s["b"])
            else:
                dist = np.maximum(np.abs(u) - s["a"], np.abs(v) - s["b"])
            alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # 1-px anti-aliased edge
            if s["tex_kind"] == 0:
                chk = ((np.floor(u / s["cell"]) + np.floor(v / s["cell"])) % 2)[..., None]
                col = chk * s["c1"] + (1 - chk) * s["c2"]
            else:
                iu = np.floor(u * 0.5).astype(int) % 64
                iv = np.floor(v * 0.5).astype(int) % 64
                col = 0.3 * s["c1"] + 0.7 * s["tex"][iv, iu]
            frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + col * alpha
        yield (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _bounce(x: float, size: float) -> float:
    m = x % (2 * size)
    return m if m < size else 2 * size - m


def make_procedural_clips(
    out_dir: str | os.PathLike,
    num_clips: int = 6,
    num_frames: int = 48,
    size: int | Sequence[int] = (256, 256),
    seed: int = 0,
    fps: int = 24,
) -> list[Path]:
    """Write ``num_clips`` mp4 clips (``size`` = (H, W), even numbers; yuv420p, H.264 when the
    PyAV wheel has libx264, else MPEG-4 Part 2) of textured circles/rectangles moving and rotating
    over a scrolling textured background. Pixel content is fully determined by ``seed``.
    Returns the paths, ``procedural_000.mp4``, ... in ``out_dir``."""
    av = _import_av()
    if av is None:
        raise ImportError("make_procedural_clips needs PyAV (pip install av)")
    H, W = _as_hw(size)
    if H % 2 or W % 2:
        raise ValueError(f"size must be even for yuv420p, got {(H, W)}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    codec = _pick_codec(av)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_clips):
        rng = np.random.default_rng([seed, i])
        path = out / f"procedural_{i:03d}.mp4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
            else:
                stream.bit_rate = 8_000_000
                stream.thread_count = 1
            for arr in _render_clip(rng, num_frames, H, W):
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths
