"""One place that finds pretrained weight files.

``resolve_weight(name, path=None)`` looks, in order, at
  1. ``path`` given explicitly by the caller (used as is: a user's own file, not hash-checked),
  2. ``$TURBO_VAED_ASSETS/weights/<relpath>``,
  3. the user cache ``$TURBO_VAED_CACHE`` (default ``~/.cache/turbo_vaed``)``/<relpath>``,
  4. a download from the file's canonical URL into that cache.
Files found in 2-4 must match one of the registry's sha256 digests. Offline (``HF_HUB_OFFLINE=1`` or
``TURBO_VAED_OFFLINE=1``), or when a file has no public URL, a missing file raises
``WeightNotFoundError`` naming the file and every place it can be put.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class WeightNotFoundError(FileNotFoundError):
    """A weight file could not be found locally nor downloaded."""


class WeightHashError(RuntimeError):
    """A weight file exists but its sha256 matches none of the known digests."""


@dataclass(frozen=True)
class WeightFile:
    relpath: str  # path under ``<assets>/weights`` and under the user cache
    sha256: tuple[str, ...]  # accepted digests (full hex) or, for torchvision files, hex prefixes
    url: str | None  # canonical download location; None if the file is not published as such
    note: str = ""


REGISTRY: dict[str, WeightFile] = {
    "taef2_encoder": WeightFile(
        "taef2/taef2_encoder.pth",
        ("10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",),
        "https://github.com/madebyollin/taesd/raw/main/taef2_encoder.pth",
    ),
    "taef2_decoder": WeightFile(
        "taef2/taef2_decoder.pth",
        ("0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",),
        "https://github.com/madebyollin/taesd/raw/main/taef2_decoder.pth",
    ),
    # torchvision ImageNet backbones: the features-only files of the shared assets, or the full
    # torchvision checkpoints (whose file names carry a sha256 prefix, checked like torch.hub does).
    "alexnet": WeightFile(
        "lpips/alexnet_features_imagenet.pth",
        ("780c3f7cc3e90bb0f20d0006e83eb9c7b612f30288b3df12385607e40b46bdee", "7be5be79"),
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    "vgg16": WeightFile(
        "lpips/vgg16_features_imagenet.pth",
        ("d7bc3aeeb30784bff320cd233a811f0a4dabf66d6818fe7f48479e1cb35999f6", "397923af"),
        "https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "lpips_alex": WeightFile(
        "lpips/lpips_v0.1_alex_linear.pth",
        ("df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",),
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
    ),
    "lpips_vgg": WeightFile(
        "lpips/lpips_v0.1_vgg_linear.pth",
        ("a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",),
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    ),
    "i3d_kinetics400": WeightFile(
        "i3d/i3d_kinetics400_tfhub_piergiaj_layout.pt",
        ("6be2c42d80ba6a0ae8fc391805c4596f3ed16924753a9381af92c10a826ce5d1",),
        None,
        note="I3D RGB Kinetics-400 (TF-Hub weights) converted to the InceptionI3d state-dict layout",
    ),
    "kinetics400_labels": WeightFile(
        "i3d/kinetics400_label_map.txt",
        ("e9f2806fe9109b851a80a74841244f6f8c9d10917fa0229cd82bab67f2f8e28f",),
        None,
    ),
}


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TURBO_VAED_OFFLINE"))


def cache_dir() -> Path:
    return Path(os.environ.get("TURBO_VAED_CACHE", Path.home() / ".cache" / "turbo_vaed"))


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _check_hash(path: Path, entry: WeightFile) -> None:
    digest = sha256_of(path)
    if not any(digest.startswith(accepted) for accepted in entry.sha256):
        raise WeightHashError(
            f"{path}: sha256 {digest[:16]}... matches none of the known digests "
            f"{[d[:16] for d in entry.sha256]} for '{entry.relpath}'. The file is corrupt or a different "
            "version; delete it or pass the intended file explicitly."
        )


def _download(entry: WeightFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        _check_hash(Path(tmp), entry)
        os.replace(tmp, dest)  # atomic: a crash never leaves a half-written file at dest
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    candidates = []
    assets = os.environ.get("TURBO_VAED_ASSETS")
    if assets:
        candidates.append(Path(assets) / "weights" / entry.relpath)
    cached = cache_dir() / entry.relpath
    candidates.append(cached)
    for c in candidates:
        if c.is_file():
            _check_hash(c, entry)
            return c
    where = " or ".join(str(c) for c in candidates)
    if entry.url is None:
        raise WeightNotFoundError(
            f"weight file '{entry.relpath}' ({entry.note or name}) is not published for download; "
            f"put it at {where}, set TURBO_VAED_ASSETS to a folder holding weights/{entry.relpath}, "
            "or pass its path explicitly."
        )
    if _offline():
        raise WeightNotFoundError(
            f"weight file '{entry.relpath}' is missing and downloads are disabled (offline). "
            f"Download {entry.url} and put it at {where}, or set TURBO_VAED_ASSETS."
        )
    try:
        _download(entry, cached)
    except (OSError, WeightHashError) as e:  # URLError is an OSError
        raise WeightNotFoundError(
            f"could not download '{entry.relpath}' from {entry.url} ({e}); put the file at {where}."
        ) from e
    return cached
