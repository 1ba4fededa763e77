"""Loading the per-teacher YAML configs of ``configs/`` and building or loading the models they describe."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from .files import folder_problem
from .frames import FrameRule
from .student import StudentDecoder, TurboVAED
from .teachers import DIFFUSERS_CLASSES, Teacher, build_teacher, diffusers_class

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
STUDENT_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes next to config.json
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
    if not is_derived(cfg) and cfg["student"]["latent_channels"] != cfg["latent_channels"]:
        raise ValueError(f"config {p}: student latent_channels {cfg['student']['latent_channels']} != "
                         f"latent_channels {cfg['latent_channels']}")
    cfg["path"] = str(p)
    return cfg


def is_derived(cfg: dict) -> bool:
    """A teacher-derived student (``student: {type: derived}``, models/derived) rather than a Turbo-VAED one."""
    return cfg["student"].get("type", "turbo") == "derived"


def teacher_config_dict(vae_config) -> dict:
    """A diffusers VAE config as plain JSON-able data (what a ``DerivedStudent`` records of its teacher)."""
    return json.loads(json.dumps({k: v for k, v in dict(vae_config).items() if not k.startswith("_")}))


def default_teacher_config(cfg: dict) -> dict:
    """The config's teacher VAE config with diffusers' defaults (no weights needed); {} for TAEF2."""
    cls_name = cfg["teacher"]["class"]
    if cls_name == "TAEF2":
        return {}
    with torch.device("meta"):
        return teacher_config_dict(diffusers_class(cls_name)().config)


def teacher_config_of(teacher: Teacher) -> dict:
    vae = getattr(teacher, "vae", None)
    return {} if vae is None else teacher_config_dict(vae.config)


def build_student(cfg: dict, teacher_config: dict | None = None, **overrides) -> StudentDecoder:
    """The config's student with random weights (``overrides`` replace constructor arguments). Derived students
    take their layout from ``teacher_config`` (default: the teacher class's default config);
    ``models.derived.derive`` initialises one from a teacher."""
    if is_derived(cfg):
        from .derived import DerivedStudent, student_kwargs
        tc = default_teacher_config(cfg) if teacher_config is None else teacher_config
        return DerivedStudent(**{**student_kwargs(cfg, tc), **overrides})
    return TurboVAED(**{**cfg["student"], **overrides})


def resolve_student_dir(path: str | os.PathLike) -> Path:
    """The ``save_pretrained`` folder a ``--student`` path points at: the folder itself when it holds
    ``config.json``, else its ``student/`` subfolder when that holds one. Raises FileNotFoundError
    naming what was looked for (and any checkpoints found under the folder) otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"student path {str(p)!r} does not exist (expected a save_pretrained folder, "
                                f"a folder with a student/ subfolder, or the word 'teacher')")
    if p.is_dir() and (p / "config.json").is_file():
        return p
    if p.is_dir() and (p / "student" / "config.json").is_file():
        return p / "student"
    hint = ""
    ckpts = sorted(p.glob("checkpoints/*/student/config.json")) if p.is_dir() else []
    if ckpts:
        hint = (f"; it has {len(ckpts)} checkpoint(s), e.g. pass {str(ckpts[-1].parent.parent)!r} "
                f"(the latest) to evaluate its EMA weights")
    raise FileNotFoundError(
        f"no student found in {str(p)!r}: it is neither a save_pretrained folder (config.json + "
        f"diffusion_pytorch_model.safetensors) nor a folder with a student/ subfolder holding one "
        f"(training output or checkpoint folder){hint}")


def student_classes() -> dict[str, type[StudentDecoder]]:
    """The student decoder classes of this project by class name."""
    from .derived import DerivedStudent
    return {"TurboVAED": TurboVAED, "DerivedStudent": DerivedStudent}


def student_class(folder: str | os.PathLike) -> type[StudentDecoder]:
    """The class a ``save_pretrained`` folder was written by (its config's ``_class_name``)."""
    name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name", "TurboVAED")
    classes = student_classes()
    if name not in classes:
        raise ValueError(f"{folder} holds a {name}, not a student decoder of this project ({sorted(classes)})")
    return classes[name]


def load_student(cfg: dict, path: str | os.PathLike | None = None) -> StudentDecoder:
    """The config's student with random weights (``path`` None), or the trained one at ``path`` (a
    ``save_pretrained`` folder, or a training output / checkpoint folder holding one under ``student/``),
    loaded strictly. ValueError if it does not read the config's latent space. Eval mode."""
    if path is None:
        return build_student(cfg).eval()
    folder = resolve_student_dir(path)
    problem = folder_problem(folder, required=("config.json", STUDENT_WEIGHTS))
    if problem:  # diffusers would bury this under a long chained traceback that never names the file
        raise ValueError(f"student at {str(folder)!r} is damaged: {problem}; copy it again or take another "
                         f"checkpoint's student/")
    student = student_class(folder).from_pretrained(str(folder))
    want_ch, want_comp = int(cfg["latent_channels"]), tuple(int(v) for v in cfg["compression"])
    if student.config.latent_channels != want_ch or tuple(student.compression) != want_comp:
        raise ValueError(
            f"student at {str(folder)!r} decodes {student.config.latent_channels}-channel latents with compression "
            f"{tuple(student.compression)}, but config {cfg.get('name')!r} has {want_ch} channels and compression "
            f"{want_comp}: wrong --config for this student?")
    return student.eval()


def load_teacher(cfg: dict, random_init: bool = False, init_config: dict | None = None) -> Teacher:
    return build_teacher(cfg["teacher"], init_config=init_config, random_init=random_init)


def has_teacher(cfg: dict) -> bool:
    return cfg["teacher"]["class"] != "none"


def teacher_frame_rule(cfg: dict) -> FrameRule:
    """From the config alone: the diffusers video VAEs take 1 + t*k frames (first frame alone); TAEF2 works frame
    by frame."""
    return FrameRule(int(cfg["compression"][0]), cfg["teacher"]["class"] in DIFFUSERS_CLASSES)


def check_clip_fits(cfg: dict, num_frames: int, height: int, width: int) -> None:
    """ValueError naming the nearest valid values unless the config's teacher can encode clips of ``num_frames``
    frames at ``height`` x ``width``, decided from the config alone (before any weights are loaded): sizes must
    be multiples of the spatial compression; the diffusers video VAEs take 1 + t*k frames (first frame alone), TAEF2 (per
    frame) any count."""
    ct, ch, cw = (int(v) for v in cfg["compression"])
    rule = teacher_frame_rule(cfg)
    teacher = f"the {cfg['name']} teacher (compression {ct}x{ch}x{cw})"
    if not rule.fits(num_frames):
        lo = rule.nearest(num_frames)
        raise ValueError(f"--num_frames {num_frames}: {teacher} takes {rule.describe()} frames; "
                         f"use e.g. {lo} or {lo + ct}")
    for flag, size, m in (("height", height, ch), ("width", width, cw)):
        if size < m or size % m:
            lo = max(m, size // m * m)
            raise ValueError(f"--resolution: {flag} {size} is not a multiple of {m}, the spatial compression of "
                             f"{teacher}; use e.g. {lo} or {lo + m}")


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
