"""Loading the per-teacher YAML configs of ``configs/`` and building the models they describe."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from .student import TurboVAED
from .teachers import Teacher, build_teacher, diffusers_class

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
REQUIRED = ("name", "teacher", "latent_channels", "compression", "num_frames", "student", "align")


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> dict:
    """A config by name (``ltx``) or path (``configs/ltx.yaml``), checked for required keys."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"config '{name_or_path}' not found (looked at {p}); known: {config_names()}")
    cfg = yaml.safe_load(p.read_text())
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"config {p} lacks keys {missing}")
    if cfg["student"]["latent_channels"] != cfg["latent_channels"]:
        raise ValueError(f"config {p}: student latent_channels {cfg['student']['latent_channels']} != "
                         f"latent_channels {cfg['latent_channels']}")
    cfg["path"] = str(p)
    return cfg


def build_student(cfg: dict, **overrides) -> TurboVAED:
    return TurboVAED(**{**cfg["student"], **overrides})


def load_teacher(cfg: dict, random_init: bool = False, init_config: dict | None = None) -> Teacher:
    return build_teacher(cfg["teacher"], init_config=init_config, random_init=random_init)


def has_teacher(cfg: dict) -> bool:
    return cfg["teacher"]["class"] != "none"


def teacher_decoder_params(cfg: dict) -> int:
    """Decoder parameters of the teacher's default config, counted on the meta device (no weights)."""
    cls_name = cfg["teacher"]["class"]
    if cls_name == "none":
        return int(float(cfg["teacher"]["decoder_params"]))
    if cls_name == "TAEF2":
        from .taef2 import taef2_decoder
        return sum(p.numel() for p in taef2_decoder().parameters())
    with torch.device("meta"):
        vae = diffusers_class(cls_name)()
    return sum(p.numel() for p in vae.decoder.parameters())
