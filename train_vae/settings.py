"""Training settings: one typed record with help text for every field, shared by ``train.py``'s command line,
a config's ``train:`` section and the ``settings`` recorded in ``final_metrics.json`` and checkpoints.

Precedence: the field defaults below, then the config's ``train:`` section (``--set train.KEY=VALUE`` edits that
section), then (for ``--init_from``) its ``train.stage2`` overlay, then the explicit flags.

``--set KEY=VALUE`` edits any config key by its dotted path (``train.lr=1e-4``, ``student.depthwise_kernel_size=3``,
``teacher.decode_timestep=0.05``); values are YAML (``[1, 2]``, ``true``, ``null``) and are checked against the
field's type (``train.*``) or the value they replace, so a typo or a bad value is one line before any work.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["TrainSettings", "apply_overrides", "clip_size", "coerce", "field_type", "from_config", "idle_settings",
           "parse_override", "settings_fields"]


def _f(default, help: str, cli: bool = True):
    """A settings field with its ``--help`` text; ``cli=False``: set in the config's ``train:`` section only."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, "cli": cli})
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class TrainSettings:
    # data and outputs
    data_dir: str | None = _f(None, "folder of training videos (train.sh: the shared clips or procedural ones)")
    output_dir: str | None = _f(None, "where the run writes student/, checkpoints/, logs (default outputs/CONFIG)")
    latents_dir: str | None = _f(None, "folder of cached teacher latents (generate_latents.py), built if missing")
    cache_latents: bool = _f(False, "encode the training clips once into OUTPUT_DIR/latents (with their frames)")
    resolution: int = _f(256, "square clip size in pixels (short side resized, centre/random crop)")
    num_frames: int | None = _f(None, "frames per clip (default: the config's num_frames)")
    frame_stride: int = _f(1, "take every k-th frame of the source video")
    clips_per_video: int = _f(4, "training windows drawn from each video per epoch")
    num_holdout: int = _f(3, "videos held out for validation and final_metrics.json")
    train_crop: int | None = _f(None, "train on random square crops of this size (latent multiples); 0/None: whole")
    train_frames: int | None = _f(None, "train on random runs of this many latent frames (non-causal teachers)")
    colour_augment: float = _f(0.0, "share of training crops given a random hue / saturation / gamma, re-encoded "
                                    "by the teacher (train_vae/augment.py); 0: none")
    num_workers: int = _f(0, "DataLoader worker processes")
    # optimisation
    max_steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(1, "clips per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step (effective batch = batch x accumulation x processes)")
    effective_batch: int | None = _f(None, "clips per optimizer step; sets grad_accum to effective_batch / "
                                              "(batch_size x processes) (an explicit --grad_accum wins)")
    lr: float = _f(2e-4, "AdamW learning rate")
    lr_schedule: str = _f("constant", "constant or cosine (after warm-up)")
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps")
    adam_betas: tuple = _f((0.9, 0.95), "AdamW betas (b1, b2)", cli=False)
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: none)")
    ema_decay: float = _f(0.999, "EMA decay of the saved student")
    mixed_precision: str = _f("no", "no, fp16 or bf16 (accelerate autocast; bf16 is the GPU recipe)")
    seed: int = _f(0, "seed of the data order, crops and initialisation")
    # loss (Turbo-VAED's fixed weights; configs with train.phases set them per phase instead)
    lpips_weight: float = _f(1.0, "weight of LPIPS-VGG in the loss (0: LPIPS is not computed)")
    lpips_frames: int | None = _f(None, "LPIPS on this many frames drawn from the batch (None: all); "
                                        "only with lpips_weight > 0")
    distill_weight: float = _f(1.0, "weight of the feature distillation loss (0: no projection heads)")
    distill_loss: str = _f("l1", "distillation distance: l1 (paper Eq. 4) or mse; only with distill_weight > 0")
    distill_head: str = _f("two_layer", "projection head: two_layer (two 1x1x1 convs, paper Table 7) or linear; "
                                        "only with distill_weight > 0")
    disc_start: int | None = _f(None, "step where the GAN stage starts (None: no GAN; 0 with --init_from: stage 2)")
    disc_weight: float = _f(0.05, "weight of the adversarial loss; only with disc_start set")
    disc_channels: int = _f(32, "width of the 3D PatchGAN discriminator; only with disc_start set")
    disc_lr: float | None = _f(None, "discriminator learning rate (None: lr); only with disc_start set")
    phases: list | None = _f(None, "per-phase loss weights (teacher-derived students, losses.LossSchedule)", cli=False)
    phase_ramp: float = _f(0.0, "fraction of max_steps over which a phase's weights blend in; only with train.phases "
                                "in the config")
    # stage 2
    init_from: str | None = _f(None, "stage 2: a finished run's folder (its student/, EMA weights) to start from, "
                                        "with a fresh discriminator and optimizer; applies train.stage2")
    stage2: dict | None = _f(None, "settings that --init_from lays over this section (the stage-2 recipe)", cli=False)
    # teacher-derived students (models/derived) only
    selection: str = _f("independence", "channel selection of a derived student: independence, l1 or random")
    compensation: str = _f("refit", "weight compensation of a derived student: refit, fold or none")
    calibration_samples: int = _f(16, "latent clips the derivation sees")
    calibration_frames: int | None = _f(None, "latent frames of each calibration clip (None: all)")
    # bookkeeping
    resume: str | None = _f(None, "'latest' or a checkpoint folder to continue this run from")
    val_every: int = _f(100, "validate the EMA student every N steps")
    log_every: int = _f(10, "log losses every N steps")
    checkpoint_every: int = _f(500, "write a checkpoint every N steps")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    report_to: str = _f("wandb", "wandb (offline unless WANDB_MODE says otherwise) or none")
    # the resolved config (with --set applied); not a setting of its own
    cfg: dict = field(default_factory=dict, repr=False, metadata={"help": "", "cli": False, "internal": True})

    def to_dict(self) -> dict:
        """The settings as JSON-able data (the config by name; ``resolved_config`` records it whole)."""
        d = {f.name: getattr(self, f.name) for f in settings_fields()}
        d["adam_betas"] = list(self.adam_betas)
        return d | {"config": self.cfg.get("name")}


# settings of the fixed (Turbo-VAED) loss weights, which a config with train.phases sets per phase instead
FIXED_WEIGHT_SETTINGS = ("lpips_weight", "distill_weight", "disc_weight", "disc_start")
# settings of the teacher-derived student's initialisation (models/derived), meaningless for Turbo-VAED
DERIVATION_SETTINGS = ("selection", "compensation", "calibration_samples", "calibration_frames")
# settings that do nothing unless another one is set, in runs with the fixed (Turbo-VAED) loss weights:
# {setting: (the one it needs, test of the settings, how to set it)}; train.py warns once when one is given alone
_GAN_ON = ("disc_start", lambda s: s.disc_start is not None, "e.g. --disc_start 0")
_DISTILL_ON = ("distill_weight", lambda s: s.distill_weight > 0, "--distill_weight > 0")
NEEDS = {
    "disc_weight": _GAN_ON,
    "disc_channels": _GAN_ON,
    "disc_lr": _GAN_ON,
    "lpips_frames": ("lpips_weight", lambda s: s.lpips_weight > 0, "--lpips_weight > 0"),
    "distill_loss": _DISTILL_ON,
    "distill_head": _DISTILL_ON,
    "phase_ramp": ("train.phases", lambda s: bool(s.phases), "a config with train.phases, e.g. flash_taef2"),
}


def idle_settings(s: TrainSettings, named: set[str], derived: bool) -> list[str]:
    """The rules for settings given (``named``: config section or flags) that do nothing in this run, in one place.
    Settings that cannot mean anything in this config raise ValueError: fixed loss weights
    (``FIXED_WEIGHT_SETTINGS``) where ``train.phases`` sets the weights, derivation settings
    (``DERIVATION_SETTINGS``) for a Turbo-VAED student (``derived`` False). Settings that need another one
    (``NEEDS``) come back as warning lines; the run goes on without them."""
    def refuse(keys: tuple[str, ...], message: str) -> None:
        given = ", ".join("--" + k for k in keys if k in named)
        if given:
            raise ValueError(message.format(flags=given))

    name = s.cfg.get("name")
    if s.phases:
        refuse(FIXED_WEIGHT_SETTINGS, f"config {name} sets its loss weights per phase (train.phases); "
                                      "{flags} do nothing there: edit the phases instead")
    if not derived:
        refuse(DERIVATION_SETTINGS, "{flags} set how a teacher-derived student is initialised; "
                                    f"config {name} has a Turbo-VAED student (use a flash_* config)")
    if s.phases:  # NEEDS speaks of the fixed weights' settings
        return []
    return [f"warning: {k} {getattr(s, k)} does nothing in this run: it needs {need} ({how})"
            for k, (need, on, how) in NEEDS.items() if k in named and not on(s)]

_TYPES = typing.get_type_hints(TrainSettings)
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def settings_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainSettings) if not f.metadata.get("internal")]


def field_type(name: str):
    t = _TYPES[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return (args[0] if args else t), type(None) in typing.get_args(t)


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as training setting ``name``'s type; ValueError naming ``where`` (the flag or key) otherwise."""
    if name not in _TYPES or name == "cfg":
        known = ", ".join(f.name for f in settings_fields())
        raise ValueError(f"{where}: no training setting {name!r}; known: {known}")
    kind, optional = field_type(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: {name} cannot be null; expected {kind.__name__}")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if kind is tuple and isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    if kind in (list, dict) and isinstance(value, kind):
        return value
    want = "[b1, b2]" if kind is tuple else kind.__name__
    raise ValueError(f"{where}: {value!r} is not a valid {name} (expected {want}{' or null' if optional else ''})")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=VALUE"`` -> (["a", "b"], VALUE parsed as YAML)."""
    key, eq, raw = item.partition("=")
    if not eq or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {item}: expected KEY=VALUE with a dotted config key, e.g. train.lr=1e-4 or "
                         f"student.depthwise_kernel_size=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; on a command line it is a number
    return key.split("."), value


def _student_params(cfg: dict) -> set[str]:
    """Constructor arguments a config's student section may carry."""
    from models.config import is_derived
    if is_derived(cfg):
        return set(cfg["student"])  # a derived student's layout keys are all in its config
    from models.student import TurboVAED
    return {p for p in inspect.signature(TurboVAED.__init__).parameters if p != "self"}


def _same_kind(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not (isinstance(old, int) and isinstance(new, float))
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    return type(old) is type(new)


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    """A copy of ``cfg`` with each ``KEY=VALUE`` of ``items`` applied (see the module docstring). ValueError with
    one line for an unknown key or a value of the wrong type."""
    cfg = copy.deepcopy(cfg)
    for item in items:
        path, value = parse_override(item)
        if path[0] == "train":
            if len(path) != 2:
                raise ValueError(f"--set {item}: train settings are one level deep (train.KEY)")
            cfg.setdefault("train", {})[path[1]] = coerce(path[1], value, f"--set {item}")
            continue
        node = cfg
        for i, part in enumerate(path[:-1]):
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {item}: config {cfg['name']} has no section {'.'.join(path[:i + 1])}")
            node = node[part]
        key = path[-1]
        allowed = _student_params(cfg) if path[:-1] == ["student"] else set(node)
        if key not in node and key not in allowed:
            raise ValueError(f"--set {item}: config {cfg['name']} has no key {'.'.join(path)}; known here: "
                             f"{', '.join(sorted(allowed))}")
        if key in node and not _same_kind(node[key], value):
            raise ValueError(f"--set {item}: {value!r} is a {type(value).__name__}, {'.'.join(path)} is a "
                             f"{type(node[key]).__name__} (now {node[key]!r})")
        node[key] = value
    if items:
        cfg["overrides"] = list(cfg.get("overrides", [])) + list(items)
    return cfg


def from_config(cfg: dict, given: dict | None = None, stage2: bool = False) -> tuple[TrainSettings, set[str]]:
    """The settings of config ``cfg`` (its ``train:`` section over the defaults, then its ``train.stage2`` overlay
    when ``stage2``, then ``given``; ``num_frames`` unset: the config's ``num_frames``), and the names set explicitly
    (section, overlay or ``given``)."""
    section = dict(cfg.get("train") or {})
    overlay = dict(section.get("stage2") or {}) if stage2 else {}
    given = dict(given or {})
    values = {}
    for source, where in ((section, f"config {cfg['name']} train"), (overlay, f"config {cfg['name']} train.stage2"),
                          (given, "command line")):
        for k, v in source.items():
            values[k] = coerce(k, v, f"{where}: {k}")
    s = TrainSettings(**values, cfg=cfg)
    s.num_frames = s.num_frames or cfg.get("num_frames")
    return s, set(values)


def clip_size(cfg: dict) -> tuple[int, int]:
    """(frames, square size in pixels) of the clips config ``cfg`` trains on (``from_config``: its ``train:``
    section, else the config's ``num_frames`` and the default resolution). The default of every entry point that
    takes clips (latent caches, validation, tables, derivation), so they see the clips training does."""
    s, _ = from_config(cfg)
    return int(s.num_frames), int(s.resolution)
