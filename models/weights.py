"""One place that finds pretrained weight files.

``resolve_weight(name, path=None)`` looks, in order, at
  1. ``path`` given explicitly by the caller (used as is: a user's own file, not hash-checked),
  2. ``$TURBO_VAED_ASSETS/<relpath>``,
  3. the default assets folder ``<cache>/assets/<relpath>`` (cache: ``$TURBO_VAED_CACHE``, default
     ``~/.cache/turbo_vaed``), the folder ``scripts/fetch_assets.py`` builds by default,
  4. a fetch from the file's public source into that folder (``models.fetch``: the same download,
     sha256 check and conversion as ``scripts/fetch_assets.py``).
``name`` is a weight name of the asset registry (``models.assets``), ``relpath`` its path there
(``weights/...``). Files found in 2-3 must match the registry's sha256. Offline
(``HF_HUB_OFFLINE=1`` or ``TURBO_VAED_OFFLINE=1``), a missing file raises ``WeightNotFoundError``
naming the file, the places it can be put and the command that fetches it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .assets import ASSETS, Asset, cache_dir, default_assets_dir, fetch_command
from .fetch import Fetcher, FetchError, sha256_of

__all__ = ["REGISTRY", "WeightHashError", "WeightNotFoundError", "cache_dir", "resolve_weight", "sha256_of"]


class WeightNotFoundError(FileNotFoundError):
    """A weight file could not be found locally nor fetched."""


class WeightHashError(RuntimeError):
    """A weight file exists but its sha256 is not the registry's."""


REGISTRY: dict[str, Asset] = {a.name: a for a in ASSETS if a.name}


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TURBO_VAED_OFFLINE"))


def _check_hash(root: Path, entry: Asset) -> None:
    path = root / entry.relpath
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise WeightHashError(
            f"{path}: sha256 {digest[:16]}... is not the expected {entry.sha256[:16]}... of '{entry.relpath}'. "
            f"The file is corrupt or a different version: `{fetch_command(root)}` replaces it, "
            "or pass the intended file explicitly."
        )


def resolve_weight(name: str, path: str | os.PathLike | None = None) -> Path:
    """Return the local path of weight file ``name`` (a key of ``REGISTRY``), see module docstring."""
    if name not in REGISTRY:
        raise KeyError(f"unknown weight file '{name}'; known: {sorted(REGISTRY)}")
    entry = REGISTRY[name]
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightNotFoundError(f"weight file for '{name}' not found at the given path {p}")
        return p
    roots = []
    assets = os.environ.get("TURBO_VAED_ASSETS")
    if assets:
        roots.append(Path(assets).expanduser())
    roots.append(default_assets_dir())
    for root in roots:
        c = root / entry.relpath
        if c.is_file():
            _check_hash(root, entry)
            return c
    where = " or ".join(str(r / entry.relpath) for r in roots)
    if _offline():
        raise WeightNotFoundError(
            f"weight file '{entry.relpath}' is missing ({where}) and downloads are disabled (offline); "
            f"fetch it with `{fetch_command(roots[0])}` or set TURBO_VAED_ASSETS to an assets folder holding it."
        )
    print(f"fetching {entry.relpath} into {default_assets_dir()} ...", file=sys.stderr)
    try:
        with Fetcher(default_assets_dir()) as f:
            return f.fetch(entry)
    except (FetchError, OSError) as e:
        raise WeightNotFoundError(
            f"could not fetch '{entry.relpath}': {e}. Put the file at {where}, or build an assets folder with "
            f"`{fetch_command(None)}` (`--mirror` for a local copy of the sources)."
        ) from e
