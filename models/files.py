"""Writing files and folders atomically, and telling an intact file from a truncated or corrupt one.

One home for both, shared by every entry point: a run killed at any moment leaves either the old or the
new version of what it was writing, never half of one, and a file that is half there anyway (copied
partly, truncated by a full disk) is named with what is wrong with it before anything tries to load it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

__all__ = ["CheckpointMismatchError", "read_state_dict", "load_strict", "atomic_file", "atomic_write", "atomic_dir",
           "file_problem", "folder_problem"]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not match the module built to hold them (missing, unexpected or mis-shaped keys,
    or config settings the model does not take): students, teachers (TAEF2), LPIPS and I3D weights alike."""


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a ``torch.save`` weight file (``weights_only``, on the CPU; a ``{"state_dict": ...}``
    checkpoint is unwrapped). CheckpointMismatchError when it holds something else."""
    import torch  # noqa: PLC0415 - this module is imported by code that needs no torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return dict(sd)


def load_strict(module, state: Mapping, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch is a CheckpointMismatchError that starts with
    ``what`` (e.g. "FILE is not a taef2_decoder state dict") and keeps torch's list of keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{what}: {e}") from e


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (so the temporary files named after it may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    except OSError:
        return False
    return True


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_file(out / "loss.png") as tmp: fig.savefig(tmp, format="png")``: for writers that take a path
    (matplotlib, PyAV, ``safetensors.torch.save_file``). ``tmp`` is ``.<name>.<pid>.tmp`` in the same folder, so a
    writer that picks its format by the extension must be told the format. When the block finishes the file is
    fsync'd and renamed onto ``path``: readers see the old file or the whole new one. An exception leaves ``path``
    as it was and removes ``tmp``; the pid in the name lets a later run tell the leftovers of a killed writer from
    those of a live one (``generate_latents.clean_stale_tmp``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` through ``atomic_file``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, writer: bool = True) -> Iterator[Path]:
    """``with atomic_dir(out / "student") as tmp: model.save_pretrained(tmp)``: the folder is written as
    ``.<name>.tmp`` next to ``path`` and replaces ``path`` only when the block finishes; an exception (or a
    kill) leaves ``path`` as it was. The old folder is removed just before the rename.

    Several processes writing one folder (a distributed checkpoint): one passes ``writer=True`` and makes, renames
    (or on an exception removes) the folder; the others pass ``writer=False`` and only get its path. The caller
    synchronises them: no process writes before the writer has entered the block, and the writer leaves it only
    after every process has written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if not writer:
        yield tmp
        return
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def file_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` reads as what its extension says, else what is wrong, in words. Cheap: it reads
    the index of the file (zip central directory of torch files, safetensors header and size), not its data.
    Torch checkpoints (``.bin .pt .pth .pkl`` written by ``torch.save``) are zip archives whose directory sits
    at the end of the file, so a truncated one has none."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif suffix in (".bin", ".pt", ".pth", ".pkl"):
            if not zipfile.is_zipfile(path):
                return f"not a complete torch file ({size} bytes, no zip directory at its end: truncated?)"
            with zipfile.ZipFile(path) as z:
                z.infolist()
        elif suffix == ".json":
            json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - any failure to read the index is the answer
        reason = " ".join(str(e).split())[:160]
        return f"unreadable ({type(e).__name__}: {reason}; truncated or not a {suffix[1:]} file?)"
    return None


def folder_problem(folder: str | os.PathLike, required: tuple[str, ...] = ()) -> str | None:
    """None when every file under ``folder`` passes ``file_problem`` and the ``required`` relative paths exist;
    else ``"<file>: <problem>"`` for the first bad one."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: not a folder"
    for rel in required:
        if not (folder / rel).is_file():
            return f"{folder / rel}: missing"
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            problem = file_problem(p)
            if problem:
                return f"{p}: {problem}"
    return None
