"""Shared pytest fixtures.

Importing this file puts the test session offline (no hub downloads, no wandb uploads).
Tests reach the data/weights through ``TURBO_VAED_ASSETS``: the project's shared assets folder
(``../shared/assets``) or one built from public sources by ``python scripts/fetch_assets.py DIR``
(layout and sources: ``models/assets.py``). The ``assets_dir`` fixture FAILS (not skips) when it is
unset or wrong, so a misconfigured CI run can never pass silently; ``asset(relpath)`` returns one
file of it and FAILS, naming the file and the command that fetches it, when the file is missing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from models.assets import fetch_command, missing_message

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("TURBO_VAED_HIDE_DECORD", "") not in ("", "0"):
    # the suite as it runs where decord is not installed, subprocesses included (see tests/no_decord/decord.py)
    _hide = str(Path(__file__).resolve().parent / "no_decord")
    sys.path.insert(0, _hide)
    os.environ["PYTHONPATH"] = os.pathsep.join([_hide, *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ["WANDB_MODE"] = "offline"
if os.environ.get("TURBO_VAED_ASSETS"):
    # absolute, so subprocesses started in other folders (torchrun tests) find the assets too
    os.environ["TURBO_VAED_ASSETS"] = str(Path(os.environ["TURBO_VAED_ASSETS"]).expanduser().resolve())


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    value = os.environ.get("TURBO_VAED_ASSETS")
    if not value:
        pytest.fail(
            "TURBO_VAED_ASSETS is not set: point it at an assets folder, the project's shared one "
            f"(TURBO_VAED_ASSETS=../shared/assets) or one built with `{fetch_command()}`",
            pytrace=False,
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"TURBO_VAED_ASSETS={value!r} is not an existing directory; build it with "
                    f"`{fetch_command(path)}` or point it at ../shared/assets", pytrace=False)
    return path


@pytest.fixture(scope="session")
def asset(assets_dir):
    """``asset("clips/x.mp4")`` -> the file's path in the assets folder; a missing file fails the test
    with its name and the command that fetches it."""
    def get(relpath: str) -> Path:
        path = assets_dir / relpath
        if not path.is_file():
            pytest.fail(missing_message(relpath, assets_dir), pytrace=False)
        return path
    return get


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """4 procedural training clips of 12 frames at 64x64: the data of the tiny training runs."""
    from train_vae.data import make_procedural_clips
    d = tmp_path_factory.mktemp("clips")
    make_procedural_clips(d, num_clips=4, num_frames=12, size=(64, 64), seed=3)
    return d


def narrow_student(name: str, **turbo_overrides):
    """The student of config ``name`` in the config's layout with 16-channel blocks and ``turbo_overrides`` (a
    teacher-derived config's own student, already small, as it is); 32x students keep 64 channels into their 2D
    upsamplers, as the ltx config does (an RMSNorm over the 1 or 4 channels they would leave is ill-conditioned).
    Eval mode, seeded."""
    from models.config import build_student, is_derived, load_config

    cfg = load_config(name)
    torch.manual_seed(0)
    if is_derived(cfg):
        return build_student(cfg).eval()
    last = 64 if cfg["student"]["num_upsamplers_2d"] else 16
    return build_student(cfg, **{"block_out_channels": [16] * 4 + [last], **turbo_overrides}).eval()
