"""Decoder-only distillation of a Turbo-VAED student from a frozen teacher VAE.

    accelerate launch train_vae/train.py --config ltx --data_dir DIR --output_dir OUT [overrides]
    python train_vae/train.py            # CPU demo: TAEF2 teacher (see train.sh)

Per step, for each micro-batch: latents come from the cache (``--latents_dir``) or from the frozen teacher
encoder; the student decodes them; the frozen teacher runs only up to the deepest aligned block for
the distillation targets (through to the video when the step also matches the teacher's output); the loss
is L1 + LPIPS-VGG + distillation (+ the GAN term from ``disc_start`` on), or, for configs with
``train.phases`` (teacher-derived students), the weights of the current phase (``losses.LossSchedule``).
Settings: ``train_vae/settings.py`` (typed, with help text), then the config's ``train:`` section (``--set KEY=VALUE``
edits any config key), then the command line. ``--init_from RUN`` starts stage 2 from a finished run.

Teacher-derived students (``student: {type: derived}``, ``models/derived``) are first derived from the teacher
on ``calibration_samples`` latent clips of the training set (``--selection``, ``--compensation``); the result
is saved to OUTPUT_DIR/derived/ with ``derivation.json``.

Outputs in OUTPUT_DIR: ``student/`` (EMA weights, ``models.config.load_student``), ``checkpoints/step_N/``
(full training state, written atomically; ``checkpoints/latest`` names the newest), ``log.jsonl``,
``loss.png``, ``final_metrics.json``, and a wandb run (offline unless WANDB_MODE says otherwise).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import this checkout, not train_vae/*.py as top level
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import contextlib
import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from models.cli import ArgumentParser, UserError, check_dir, check_writable_dir, run, user_errors
from models.config import (build_student, check_clip_fits, has_teacher, is_derived, load_config, load_student,
                           load_teacher, resolve_student_dir, teacher_config_of, teacher_frame_rule)
from models.cpu_fast import fast_on
from models.files import atomic_dir, atomic_write, folder_problem
from models.student import StudentDecoder
from train_vae.augment import ColourJitter
from train_vae.data import VideoDataset, VideoIndex, collate_videos, make_procedural_clips, split_files
from train_vae.losses import (DistillationLoss, LossSchedule, PatchDiscriminator3d, ReconstructionLoss,
                              adaptive_weight, generator_adv_loss, hinge_d_loss)
from train_vae.metrics import psnr, to_unit
from train_vae.settings import (TrainSettings, apply_overrides, field_type, from_config, idle_settings,
                                settings_fields)

# ---- small pieces of training state --------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's state, with the usual warm-up (decay grows from 0.1)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.detach().float(), 1 - d)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


@dataclass
class Progress:
    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class Generator(nn.Module):
    """What the generator optimizer trains: the student and the distillation projection heads."""

    def __init__(self, student: StudentDecoder, distill: DistillationLoss | None):
        super().__init__()
        self.student = student
        self.distill = distill

    def forward(self, latents: torch.Tensor):
        blocks = self.distill.student_blocks if self.distill is not None else ()
        out = self.student(latents, return_features=tuple(blocks))
        return out if blocks else (out, {})


def micro_batches(dataset, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1,
                  num_workers: int = 0, collate=None):
    """Micro-batches from global index ``start`` on. Epoch e visits the samples in a permutation seeded by
    (seed, e), split across ranks; so the data position of any step is known, which makes resume exact."""
    n = len(dataset)
    per_epoch = n // (batch_size * world)
    if per_epoch == 0:
        raise ValueError(f"{n} training samples cannot fill one batch of {batch_size} on {world} process(es)")
    epoch, offset = divmod(start, per_epoch)
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        mine = perm[: per_epoch * batch_size * world][rank::world]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # its own generator: a DataLoader iterator otherwise draws its seed from the global RNG, which
        # would shift every later random draw of a resumed run
        loader = DataLoader(Subset(dataset, mine[offset * batch_size:]), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate, drop_last=True,
                            generator=torch.Generator().manual_seed(seed + epoch))
        yield from loader
        epoch, offset = epoch + 1, 0


# ---- settings ------------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="taef2", help="config name (configs/NAME.yaml) or path")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="edit any config key by its dotted path, e.g. --set train.lr=1e-4 "
                         "student.depthwise_kernel_size=3 (YAML values, checked; recorded in OUTPUT_DIR/config.yaml)")
    for f in settings_fields():
        if not f.metadata["cli"]:
            continue
        kind, _ = field_type(f.name)
        text = f"{f.metadata['help']} (default: {f.default}, or the config's train: value)"
        if kind is bool:
            ap.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            ap.add_argument(f"--{f.name}", type=kind, default=None, help=text)
    return ap


def parse_args(argv=None) -> TrainSettings:
    """The run's settings: the config (with ``--set`` applied), its ``train:`` section (and ``train.stage2`` under
    ``--init_from``), then the flags; ValueError naming the value for anything inconsistent."""
    args = vars(build_parser().parse_args(argv))
    args.pop("debug")  # read by models.cli.run, not a training setting
    cfg = apply_overrides(load_config(args.pop("config")), args.pop("overrides"))
    given = {k: v for k, v in args.items() if v is not None}
    s, named = from_config(cfg, given)
    if s.init_from:  # stage 2: the config's train.stage2 recipe over its train: section
        s, named = from_config(cfg, given, stage2=True)
    for line in idle_settings(s, named, is_derived(cfg)):  # said once, at the start; the run goes on without them
        print(line, file=sys.stderr, flush=True)
    if is_derived(cfg):  # a bad layout or derivation setting fails here, before any data or teacher work
        from models.config import default_teacher_config
        from models.derived.pruning import check_derivation_settings, student_kwargs
        student_kwargs(cfg, default_teacher_config(cfg))
        check_derivation_settings(s.selection, s.compensation)
    if "grad_accum" in given and "effective_batch" not in given:
        s.effective_batch = None  # the explicit accumulation wins over the config's target
    elif "grad_accum" in given:
        raise ValueError("--grad_accum and --effective_batch both set the accumulation: pass one of them")
    if s.mixed_precision != "no" and "mixed_precision" not in given and not torch.cuda.is_available():
        print(f"note: config {cfg['name']} trains in {s.mixed_precision} on a GPU; no GPU here, so fp32 "
              f"(--mixed_precision {s.mixed_precision} forces it)", file=sys.stderr, flush=True)
        s.mixed_precision = "no"
    s.output_dir = s.output_dir or f"outputs/{cfg['name']}"
    for key in ("output_dir", "data_dir", "latents_dir", "init_from"):  # from where the command was given
        if getattr(s, key):
            setattr(s, key, str(Path(getattr(s, key)).expanduser().resolve()))
    if s.cache_latents and not s.latents_dir:  # the config asks for a latent cache
        s.latents_dir = str(Path(s.output_dir) / "latents")
    if s.disc_start is None:
        s.disc_start = s.max_steps  # no GAN stage unless asked for
    if s.report_to not in ("wandb", "none"):
        raise ValueError(f"--report_to must be 'wandb' or 'none', got {s.report_to!r}")
    return s


def check_settings(s: TrainSettings) -> None:
    """Every check that needs no teacher, no video decoding and no cache, so a bad request fails in a moment with
    one UserError naming the value, what is expected and how to fix it: the config has a teacher, counts are
    positive, the clip size fits the teacher, the crops fit the clip, folders exist or can be written."""
    cfg = s.cfg
    if not has_teacher(cfg):
        raise UserError(f"config {cfg['name']} has no public teacher to distill from ({cfg['teacher'].get('note', '')}); "
                        f"pick another --config")
    for key in ("max_steps", "batch_size", "grad_accum", "num_holdout", "clips_per_video", "frame_stride",
                "val_every", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(getattr(s, key)) < 1:
            raise UserError(f"--{key} {getattr(s, key)}: must be >= 1")
    if not 0.0 <= s.colour_augment <= 1.0:
        raise UserError(f"--colour_augment {s.colour_augment}: the share of training clips given a random colour "
                        f"transform, must be in [0, 1] (0: none)")
    if s.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"--lr_schedule {s.lr_schedule}: must be constant or cosine")
    with user_errors():
        check_clip_fits(cfg, s.num_frames, s.resolution, s.resolution)
    _, ch, _ = cfg["compression"]
    if s.train_crop and (s.train_crop % ch or s.train_crop > s.resolution):
        raise UserError(f"--train_crop {s.train_crop} must be a multiple of {ch} and at most the clip size "
                        f"{s.resolution}; e.g. {max(ch, min(s.resolution, s.train_crop) // ch * ch)}, or 0 for none")
    if s.train_frames and teacher_frame_rule(cfg).first_frame_alone:
        raise UserError(f"--train_frames {s.train_frames}: needs a teacher without a first frame alone (frame-wise "
                        f"or 4k-frame VAEs), and config {cfg['name']}'s takes 1 + 4k frames; use --train_frames 0")
    if s.data_dir is not None:
        check_dir(s.data_dir, "--data_dir", "video folder")
    check_writable_dir(s.output_dir, "--output_dir")
    if s.latents_dir:
        check_writable_dir(s.latents_dir, "--latents_dir")
    if s.init_from:
        with user_errors():
            resolve_student_dir(s.init_from)


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_problem(folder: Path) -> str | None:
    """None for an intact checkpoint folder, else ``"<file>: <what is wrong>"`` (a truncated or missing file)."""
    return folder_problem(folder, required=("settings.json", "student/config.json"))


def find_checkpoint(ckpt_dir: Path, which: str) -> Path:
    """The checkpoint folder ``--resume`` names, checked before anything is loaded. ``latest``: the one
    ``checkpoints/latest`` points at, or, when that one is damaged or gone, the newest intact older one (with a
    warning naming the damaged file). A folder: that one, intact. UserError otherwise, saying what to pass."""
    if which != "latest":
        path = Path(which).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--resume {which}: no such checkpoint folder; pass 'latest' or a folder such as "
                            f"{ckpt_dir / 'step_000500'}")
        problem = checkpoint_problem(path)
        if problem:
            raise UserError(f"--resume {which}: the checkpoint is damaged ({problem}); pass another one "
                            f"(--resume latest takes the newest intact one)")
        return path
    pointer = ckpt_dir / "latest"
    named = ckpt_dir / pointer.read_text().strip() if pointer.is_file() else None
    found = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), reverse=True) if ckpt_dir.is_dir() else []
    order = ([named] if named is not None else []) + [p for p in found if p != named]
    if not order:
        raise UserError(f"--resume latest: no checkpoint in {ckpt_dir}, nothing to resume; leave out --resume to "
                        f"start a new run, or pass the --output_dir of the run to resume")
    damaged = []
    for path in order:
        problem = "missing" if not path.is_dir() else checkpoint_problem(path)
        if problem is None:
            if damaged:
                print(f"warning: --resume latest: {damaged[0]}; resuming from {path.name}, the newest intact "
                      f"checkpoint", file=sys.stderr, flush=True)
            return path
        damaged.append(f"checkpoint {path.name} is damaged ({problem})" if problem != "missing"
                       else f"checkpoint {path.name} named by {pointer} is missing")
    raise UserError(f"--resume latest: no intact checkpoint in {ckpt_dir} ({'; '.join(damaged)}); leave out "
                    f"--resume to start again")


# ---- data for validation and derivation ----------------------------------------------------------
def holdout_windows(index: VideoIndex, files: list[str], teacher, num_frames: int, resolution: int,
                    frame_stride: int = 1, device: torch.device | str = "cpu"):
    """(clip paths, videos (N, 3, T, H, W) in [-1, 1], their teacher latents): the centred window of every held-out
    file (centre crop, no flip), as validation and final metrics see them."""
    held = VideoDataset(index.data_dir, num_frames=num_frames, resolution=resolution, frame_stride=frame_stride,
                        train=False, files=files, index=index)
    items = [held[i] for i in range(len(held))]
    videos = torch.stack([item["video"] for item in items]).to(device)
    latents = torch.cat([teacher.encode(v[None]) for v in videos])
    return [item["path"] for item in items], videos, latents


def calibration_latents(dataset, teacher, samples: int, frames: int | None, seed: int) -> torch.Tensor:
    """``samples`` latent clips spread evenly over a training set (cached latents, or encoded now), each cut to
    ``frames`` latent frames (a seeded random run; the leading frames for first-frame-alone teachers, whose first latent
    frame is special; all frames if None), for deriving a student. Deterministic; the global RNG is untouched."""
    n = min(samples, len(dataset))
    if n < 1:
        raise ValueError(f"--calibration_samples must be >= 1, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    device = next(teacher.parameters()).device
    clips = []
    for i in torch.linspace(0, len(dataset) - 1, n).round().long().tolist():
        item = dataset[i]
        z = item["latents"] if "latents" in item else teacher.encode(item["video"][None].to(device))[0]
        k = frames or z.shape[1]
        if k > z.shape[1]:
            raise ValueError(f"--calibration_frames {k} exceeds the {z.shape[1]} latent frames of a clip")
        start = 0 if teacher.first_frame_alone else int(torch.randint(z.shape[1] - k + 1, (), generator=gen))
        clips.append(z[:, start:start + k].float().cpu())
    return torch.stack(clips)


# ---- the trainer ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, s: TrainSettings, accelerator: Accelerator | None = None):
        check_settings(s)  # a bad request fails here, before the teacher, the data or the cache are touched
        self.s = s
        self.cfg = s.cfg
        # the schedule counts optimizer steps: by default accelerate would step it once per process per step
        # (an 8-process run would reach the end of its cosine after 1/8 of max_steps)
        self.acc = accelerator or Accelerator(mixed_precision=s.mixed_precision, step_scheduler_with_optimizer=False)
        if s.effective_batch:  # the recipe's batch per optimizer step, whatever the number of processes
            per_step = s.batch_size * self.acc.num_processes
            if s.effective_batch % per_step:
                raise UserError(f"--effective_batch {s.effective_batch} is not a multiple of batch_size {s.batch_size} "
                                f"x {self.acc.num_processes} process(es); change --batch_size or NUM_PROCESSES, or "
                                f"pass --grad_accum")
            s.grad_accum = s.effective_batch // per_step
        self.out = Path(s.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.resume_from = find_checkpoint(self.ckpt_dir, s.resume) if s.resume else None
        if self.acc.is_main_process:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        set_seed(s.seed)
        self.device = self.acc.device
        self.t_start = time.time()
        self.weights = (LossSchedule(s.phases, s.max_steps, s.phase_ramp) if s.phases else
                        LossSchedule.fixed(s.max_steps, s.lpips_weight, s.distill_weight, s.disc_weight,
                                           s.disc_start))
        self.index = self._index_data()
        self.colour_jitter = ColourJitter(s.colour_augment) if s.colour_augment else None
        self.teacher = load_teacher(self.cfg).to(self.device)
        self._setup_data()
        # on CPU, oneDNN forward and backward (models/cpu_fast.py); parameters and checkpoints stay the plain model's
        student = fast_on(self._make_student().to(self.device), self.device)
        distill = self._build_distillation(student) if self.weights.uses("distill") else None
        self.model = Generator(student, distill).to(self.device)
        self.recon = ReconstructionLoss(self.weights.uses("lpips"), s.lpips_frames).to(self.device)
        self.ema = EMA(student, s.ema_decay)
        # copied once: a fresh model's random init would draw from the global RNG at every validation and
        # checkpoint, and a resumed run would then see different random numbers than an uninterrupted one
        self._ema_model = copy.deepcopy(student).eval().requires_grad_(False)
        self.progress = Progress()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=s.lr, betas=s.adam_betas, weight_decay=s.weight_decay)
        self.sched = self._schedule(self.opt)
        self.use_gan = self.weights.uses("adv")
        prepared = [self.model, self.opt, self.sched]
        if self.use_gan:
            self.disc = PatchDiscriminator3d(s.disc_channels).to(self.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=s.disc_lr or s.lr, betas=s.adam_betas)
            # the discriminator's own scaler: never share the generator's (a reference-code defect)
            self.disc_scaler = torch.amp.GradScaler(self.device.type) if s.mixed_precision == "fp16" else None
            prepared += [self.disc, self.disc_opt]
        prepared = self.acc.prepare(*prepared)
        self.model, self.opt, self.sched = prepared[:3]
        if self.use_gan:
            self.disc, self.disc_opt = prepared[3:]
        self.acc.register_for_checkpointing(self.ema, self.progress)
        self.log_path = self.out / "log.jsonl"
        self.history: list[dict] = []

    # -- data
    def _index_data(self) -> VideoIndex:
        """Index the video folder and split it into training and held-out files (before the teacher is loaded:
        an empty or too small folder is a user error)."""
        s = self.s
        data_dir = s.data_dir
        if data_dir is None:
            raise UserError("--data_dir is required (train.sh picks a demo folder when none is given)")
        with user_errors():
            index = VideoIndex(data_dir, num_frames=s.num_frames, frame_stride=s.frame_stride)
        if len(index.entries) <= s.num_holdout:
            raise UserError(f"--data_dir {data_dir}: {len(index.entries)} usable clips, need more than --num_holdout "
                            f"{s.num_holdout} to hold some out for validation; add videos or lower --num_holdout")
        self.train_files, self.holdout_files = split_files(index, s.num_holdout, s.seed)
        return index

    def _setup_data(self) -> None:
        """The training set (the latent cache, built, finished or rebuilt as it needs, or videos encoded on the
        fly) and the held-out windows with their teacher latents and PSNR."""
        s, index, data_dir = self.s, self.index, self.s.data_dir
        if s.latents_dir:
            from train_vae.generate_latents import generate_latents
            from train_vae.latent_dataset import LatentDataset, collate_latents
            latents_dir = Path(s.latents_dir)
            if self.acc.is_main_process:  # a cache of other data, teacher or settings is rebuilt, a partial one finished
                generate_latents(self.cfg, data_dir, latents_dir, num_frames=s.num_frames,
                                 resolution=s.resolution, clips_per_video=s.clips_per_video, seed=s.seed,
                                 files=self.train_files, store_frames=True, teacher=self.teacher, rebuild_stale=True,
                                 frame_stride=s.frame_stride)
            self.acc.wait_for_everyone()
            self.train_set, self.collate = LatentDataset(latents_dir, data_dir), collate_latents
        else:
            self.train_set = VideoDataset(data_dir, num_frames=s.num_frames, resolution=s.resolution,
                                          frame_stride=s.frame_stride, train=True, files=self.train_files,
                                          seed=s.seed, clips_per_video=s.clips_per_video, index=index)
            self.collate = collate_videos
        self.val_clips, self.val_video, self.val_latents = holdout_windows(
            index, self.holdout_files, self.teacher, s.num_frames, s.resolution, s.frame_stride, self.device)
        videos = self.val_video
        teacher_rec = torch.cat([self.teacher.decode(z[None]).clamp(-1, 1) for z in self.val_latents])
        self.teacher_val_psnr = psnr(to_unit(teacher_rec), to_unit(videos)).mean().item()

    def batches(self, start_micro: int):
        return micro_batches(self.train_set, self.s.batch_size, self.s.seed, start_micro,
                             self.acc.process_index, self.acc.num_processes, self.s.num_workers, self.collate)

    def latents_and_video(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's latents (cached, or encoded now) and video. With ``train_crop`` a random square crop
        of both, aligned to the latent grid; with ``train_frames`` a random run of that many latent frames
        (teachers without a first frame alone only: in a 1 + 4k VAE the first latent frame is special). Cheaper steps on the
        same windows; the student is fully convolutional, and validation decodes whole windows."""
        video = batch["video"].to(self.device)
        latents = batch["latents"].to(self.device) if "latents" in batch else self.teacher.encode(video)
        n = self.s.train_frames
        if n and n < latents.shape[2]:
            if self.teacher.first_frame_alone:
                raise ValueError("--train_frames needs a teacher without a first frame alone (frame-wise or 4k-frame "
                                 "VAEs)")
            ct = self.teacher.compression[0]
            a = int(torch.randint(latents.shape[2] - n + 1, ()))
            latents, video = latents[:, :, a:a + n], video[:, :, a * ct:(a + n) * ct]
        crop = self.s.train_crop
        if crop:
            _, ch, cw = self.teacher.compression
            lh, lw = crop // ch, crop // cw
            if crop % ch or crop % cw or lh > latents.shape[3] or lw > latents.shape[4]:
                raise ValueError(f"--train_crop {crop} must be a multiple of {ch} and at most the clip size "
                                 f"{tuple(video.shape[-2:])}")
            top = int(torch.randint(latents.shape[3] - lh + 1, ()))
            left = int(torch.randint(latents.shape[4] - lw + 1, ()))
            latents = latents[..., top:top + lh, left:left + lw]
            video = video[..., top * ch:(top + lh) * ch, left * cw:(left + lw) * cw]
        if self.colour_jitter is not None:  # new colours need new latents: the teacher encodes the changed clip
            video = self.colour_jitter(video)
            with torch.no_grad():
                latents = self.teacher.encode(video)
        return latents, video

    # -- model pieces
    def _make_student(self) -> StudentDecoder:
        """A Turbo-VAED student (random init), or a teacher-derived one: derived from the teacher on calibration
        latents of the training set (saved to OUTPUT_DIR/derived), or, when resuming, rebuilt from the
        checkpoint's config (its weights come with the checkpoint). With ``--init_from RUN`` (stage 2): RUN's
        saved student (its EMA weights), which the EMA then starts from too."""
        if self.s.init_from:
            with user_errors():
                return load_student(self.cfg, self.s.init_from).train()
        if not is_derived(self.cfg):
            return build_student(self.cfg)
        from models.derived import DerivedStudent, derive, student_kwargs
        if self.s.resume:
            folder = self.resume_from / "student"
            return DerivedStudent.from_config(DerivedStudent.load_config(str(folder)))
        s = self.s
        latents = calibration_latents(self.train_set, self.teacher, s.calibration_samples, s.calibration_frames,
                                      s.seed).to(self.device)
        kwargs = student_kwargs(self.cfg, teacher_config_of(self.teacher))
        t0 = time.time()
        student, report = derive(self.teacher, kwargs, latents, s.selection, s.compensation, seed=s.seed,
                                 log=lambda m: tqdm.write(f"derive: {m}"))
        self.derivation = {**report.summary(), "calibration_latents": list(latents.shape),
                           "seconds": round(time.time() - t0, 1)}
        if self.acc.is_main_process:
            with atomic_dir(self.out / "derived") as tmp:
                student.save_pretrained(tmp)
                atomic_write(tmp / "derivation.json", json.dumps(self.derivation, indent=1))
        return student

    def _build_distillation(self, student: StudentDecoder) -> DistillationLoss:
        pairs = [(a["student"], a["teacher"]) for a in self.cfg["align"]]
        if not pairs:
            raise ValueError(f"config {self.cfg['name']} aligns no blocks: use --distill_weight 0")
        z = self.val_latents[:1]
        with torch.no_grad():
            _, sf = student(z, return_features=tuple({s for s, _ in pairs}))
            tf = self.teacher.features(z, sorted({t for _, t in pairs}))
        return DistillationLoss(pairs, {k: v.shape for k, v in sf.items()}, {k: v.shape for k, v in tf.items()},
                                self.s.distill_loss, getattr(student.config, "teacher_channels", None),
                                self.s.distill_head)

    def _schedule(self, opt):
        s = self.s
        total, warm = s.max_steps, s.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if s.lr_schedule == "cosine":  # else constant (check_settings allows no other)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
            return 1.0
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def teacher_features(self, latents: torch.Tensor, blocks: list[str]) -> dict[str, torch.Tensor]:
        """Distillation targets: the teacher decoder runs only up to the deepest of ``blocks`` ("video": all)."""
        return self.teacher.features(latents, blocks)

    @property
    def student(self) -> StudentDecoder:
        return self.acc.unwrap_model(self.model).student

    # -- one optimisation step
    def train_step(self, micro_batches_iter) -> dict[str, float]:
        s, acc = self.s, self.acc
        w = self.weights(self.progress.step)
        gan_on = self.use_gan and w["adv"] > 0
        totals: dict[str, float] = {}
        n = s.grad_accum
        unwrapped = acc.unwrap_model(self.model)
        teacher_blocks = list(unwrapped.distill.teacher_blocks) if unwrapped.distill is not None and w["distill"] else []
        teacher_blocks += ["video"] if w["teacher_l1"] else []
        for i in range(n):
            latents, video = self.latents_and_video(next(micro_batches_iter))
            sync = acc.no_sync(self.model) if i < n - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                rec, sfeats = self.model(latents)
                tfeats = self.teacher_features(latents, teacher_blocks) if teacher_blocks else {}
                losses = self.recon(rec, video, w, teacher_rec=tfeats.pop("video", None))
                nll = losses.pop("nll")
                loss = nll
                if tfeats:
                    d = unwrapped.distill(sfeats, tfeats)
                    losses.update(d)
                    loss = loss + w["distill"] * sum(d.values())
                if gan_on:
                    self.disc.requires_grad_(False)  # the generator's loss must not reach the discriminator
                    g_adv = generator_adv_loss(self.disc(rec))
                    self.disc.requires_grad_(True)
                    lam = adaptive_weight(nll, g_adv, self.student.last_layer_weight)
                    losses["g_adv"], losses["adaptive_weight"] = g_adv, lam
                    loss = loss + w["adv"] * lam * g_adv
            losses["loss"] = loss
            self._check_finite(losses)
            acc.backward(loss / n)
            if gan_on:
                with acc.autocast():
                    d_loss = hinge_d_loss(self.disc(video), self.disc(rec.detach()))
                self._check_finite({"d_loss": d_loss})
                losses["d_loss"] = d_loss
                (self.disc_scaler.scale(d_loss / n) if self.disc_scaler else d_loss / n).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / n
        if s.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if gan_on:
            if self.disc_scaler:
                self.disc_scaler.step(self.disc_opt)
                self.disc_scaler.update()
            else:
                self.disc_opt.step()
            self.disc_opt.zero_grad(set_to_none=True)
        self.ema.update(self.student)
        self.progress.step += 1
        return totals

    def _check_finite(self, losses: dict) -> None:
        bad = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and not torch.isfinite(v).all()}
        if bad:
            raise FloatingPointError(
                f"non-finite loss at step {self.progress.step}: {bad}. Training stopped before this step's "
                f"update; the newest checkpoint in {self.ckpt_dir} is from before it. Lower --lr or check the data.")

    # -- validation, checkpoints, logging
    def ema_student(self) -> StudentDecoder:
        self.ema.copy_to(self._ema_model)
        return self._ema_model

    @torch.no_grad()
    def validate(self, model: StudentDecoder | None = None) -> float:
        model = model or self.ema_student()
        rec = torch.cat([model(z[None]).clamp(-1, 1) for z in self.val_latents])
        return psnr(to_unit(rec), to_unit(self.val_video)).mean().item()

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically (``atomic_dir``: temp folder, then rename), then point ``latest`` at it.
        Every process writes its part (its RNG state) into the folder; the main process makes and renames it."""
        acc = self.acc
        name = f"step_{self.progress.step:06d}"
        final = self.ckpt_dir / name
        with atomic_dir(final, writer=acc.is_main_process) as tmp:
            acc.wait_for_everyone()  # the main process has made the folder before anyone writes to it
            acc.save_state(str(tmp), safe_serialization=False)
            if acc.is_main_process:
                self.ema_student().save_pretrained(tmp / "student")
                atomic_write(tmp / "settings.json", json.dumps(self.s.to_dict(), indent=1))
            acc.wait_for_everyone()  # every process has written its part before the folder is renamed
        if acc.is_main_process:
            atomic_write(self.ckpt_dir / "latest", name)
            done = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())
            for old in done[: max(0, len(done) - self.s.keep_checkpoints)]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def resume(self) -> None:
        self.acc.load_state(str(self.resume_from))
        if self.log_path.is_file():  # keep the log consistent with the restored step
            rows = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= self.progress.step]
            if self.acc.is_main_process:
                atomic_write(self.log_path, "".join(json.dumps(r) + "\n" for r in self.history))
            if self.history:  # wall time goes on from where the interrupted run stopped
                self.t_start = time.time() - self.history[-1].get("elapsed_s", 0.0)

    def log(self, row: dict) -> None:
        row["elapsed_s"] = round(time.time() - self.t_start, 1)  # wall time since the run began (setup included)
        self.history.append(row)
        if self.acc.is_main_process:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.wandb is not None:
                self.wandb.log(row, step=row["step"])

    def plot(self) -> None:
        if not self.acc.is_main_process:
            return
        from train_vae.plots import plot_training
        plot_training(self.history, self.out / "loss.png", self.teacher_val_psnr)

    # -- the loop
    def fit(self) -> dict:
        s, acc = self.s, self.acc
        self.wandb = _init_wandb(s, self.out) if acc.is_main_process and s.report_to == "wandb" else None
        if s.resume:
            self.resume()
        elif acc.is_main_process and self.log_path.exists():
            self.log_path.unlink()  # a fresh run starts a fresh log
        if acc.is_main_process:  # the config as this run resolved it (--set applied, train: as used)
            print(f"effective batch {s.batch_size * s.grad_accum * acc.num_processes} = batch_size {s.batch_size} "
                  f"x grad_accum {s.grad_accum} x {acc.num_processes} process(es)", file=sys.stderr, flush=True)
            atomic_write(self.out / "config.yaml", yaml.safe_dump(resolved_config(s), sort_keys=False))
        start = self.progress.step
        stream = self.batches(start * s.grad_accum)
        if start == 0:
            self.log({"step": 0, "val_psnr": self.validate(), "teacher_val_psnr": self.teacher_val_psnr})
        bar = tqdm(total=s.max_steps, initial=start, disable=not acc.is_main_process, desc="train", unit="step")
        t0, steps_since = time.perf_counter(), 0
        while self.progress.step < s.max_steps:
            losses = self.train_step(stream)
            step, steps_since = self.progress.step, steps_since + 1
            bar.update(1)
            last = step == s.max_steps
            validate = step % s.val_every == 0 or last
            if step % s.log_every == 0 or validate:
                sec = (time.perf_counter() - t0) / steps_since
                row = {"step": step, **{k: round(v, 6) for k, v in losses.items()},
                       "lr": self.sched.get_last_lr()[0], "sec_per_step": round(sec, 4),
                       "phase": self.weights.names[self.weights.phase(step - 1)]}
                if validate:
                    row["val_psnr"] = self.validate()
                    row["teacher_val_psnr"] = self.teacher_val_psnr
                self.log(row)
                bar.set_postfix(loss=f"{losses['loss']:.4f}", val=row.get("val_psnr", ""))
                if "val_psnr" in row:  # drawing the figure costs about as much as a CPU demo step
                    self.plot()
                t0, steps_since = time.perf_counter(), 0
            if step % s.checkpoint_every == 0 or step == s.max_steps:
                self.save_checkpoint()
        bar.close()
        return self.finish()

    def finish(self) -> dict:
        """Save the EMA student and compare it with the teacher on the held-out clips (PSNR, LPIPS-alex), in all
        and clip by clip."""
        from train_vae.lpips import LPIPS
        model = self.ema_student()
        result = {"step": self.progress.step, "num_processes": self.acc.num_processes,
                  "samples_per_step": self.s.batch_size * self.s.grad_accum * self.acc.num_processes,
                  "n_holdout_clips": len(self.holdout_files), "holdout_files": self.holdout_files,
                  "student_params": sum(p.numel() for p in model.parameters()), "settings": self.s.to_dict()}
        if getattr(self, "derivation", None):
            result["derivation"] = self.derivation
        if self.acc.is_main_process:
            with atomic_dir(self.out / "student") as tmp:  # a kill while saving keeps the previous student/ whole
                model.save_pretrained(tmp)
            lpips = LPIPS("alex").to(self.device)
            per_clip = {}
            with torch.no_grad():
                for who, decode in (("teacher", self.teacher.decode), ("student", model)):
                    rec = torch.cat([decode(z[None]).clamp(-1, 1) for z in self.val_latents])
                    per_clip[who] = psnr(to_unit(rec), to_unit(self.val_video))
                    result[f"{who}_psnr"] = per_clip[who].mean().item()
                    result[f"{who}_lpips"] = lpips(rec, self.val_video).mean().item()
            result["psnr_retention"] = result["student_psnr"] / result["teacher_psnr"]
            result["per_clip"] = [{"clip": f, "teacher_psnr": round(t, 3), "student_psnr": round(st, 3),
                                   "retention": round(st / t, 4)}
                                  for f, t, st in zip(self.val_clips, per_clip["teacher"].tolist(),
                                                      per_clip["student"].tolist())]
            result["wall_s"] = round(time.time() - self.t_start, 1)
            atomic_write(self.out / "final_metrics.json", json.dumps(result, indent=1))
            if self.wandb is not None:
                self.wandb.summary.update(result)
                self.wandb.finish()
        self.acc.wait_for_everyone()
        return result


def resolved_config(s: TrainSettings) -> dict:
    """The config a run used: its file with ``--set`` applied and ``train:`` holding every setting as resolved."""
    train = {k: v for k, v in s.to_dict().items() if k != "config"}
    return {k: v for k, v in s.cfg.items() if k not in ("train", "path")} | {"train": train}


def _init_wandb(s: TrainSettings, out: Path):
    try:
        import wandb
        os.environ.setdefault("WANDB_MODE", "offline")
        return wandb.init(project="turbo-vaed", name=out.name, dir=str(out), config=s.to_dict())
    except Exception as e:  # logging must never stop training
        print(f"wandb disabled: {e}", file=sys.stderr)
        return None


def demo_data_dir(output_dir: str) -> str:
    """The demo's data: $TURBO_VAED_ASSETS/clips if set, else procedural clips generated once."""
    assets = os.environ.get("TURBO_VAED_ASSETS")
    if assets and (Path(assets) / "clips").is_dir():
        return str(Path(assets) / "clips")
    folder = Path(output_dir) / "procedural_clips"
    if not any(folder.glob("*.mp4")):
        make_procedural_clips(folder, num_clips=12, num_frames=48, size=(256, 256))
    return str(folder)


def main(argv=None) -> dict:
    """Train from the command line ``argv``. A user error (bad flag value, missing folder, nothing to resume, ...)
    raises UserError before the teacher is loaded; ``run(main)`` prints it as one line with exit code 2."""
    with user_errors():
        s = parse_args(argv)
    check_settings(s)  # before the demo's procedural clips are made (Trainer checks again, for callers in Python)
    if s.data_dir is None:
        s.data_dir = demo_data_dir(s.output_dir)
    trainer = Trainer(s)
    result = trainer.fit()
    if trainer.acc.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "holdout_files"}, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(run(main))
