"""Shared pytest fixtures.

Importing this file puts the test session offline (no hub downloads, no wandb uploads).
Tests reach the shared data/weights through ``TURBO_VAED_ASSETS`` (see ../shared/README.md);
the ``assets_dir`` fixture FAILS (not skips) when it is unset or wrong, so a misconfigured CI
run can never pass silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
if os.environ.get("TURBO_VAED_ASSETS"):
    # absolute, so subprocesses started in other folders (torchrun tests) find the assets too
    os.environ["TURBO_VAED_ASSETS"] = str(Path(os.environ["TURBO_VAED_ASSETS"]).expanduser().resolve())


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    value = os.environ.get("TURBO_VAED_ASSETS")
    if not value:
        pytest.fail(
            "TURBO_VAED_ASSETS is not set: point it at the shared assets folder "
            "(e.g. TURBO_VAED_ASSETS=/work/shared/assets)",
            pytrace=False,
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"TURBO_VAED_ASSETS={value!r} is not an existing directory", pytrace=False)
    return path
