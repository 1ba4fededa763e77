"""Deriving a student from its teacher: calibrate, select channels, slice, replace operators, compensate.

``derive(teacher, student_config, latents)`` turns a frozen teacher (``models.teachers.Teacher``) into a
``DerivedStudent`` with the configured widths and operators, ready to train:

1. **Calibrate.** The teacher's decoder, rebuilt as this project's graph with the teacher's weights (equal to
   the teacher), decodes the calibration latents; a pre-hook on every conv that reads a pruned channel group
   accumulates the mean and covariance of its input channels.
2. **Select** the channels each group keeps:
   ``independence`` (default): greedy, the channel whose variance is least explained by the channels already
     kept (pivoted Cholesky of the covariance summed over the group's readers): channels that carry what the
     kept ones do not;
   ``l1``: largest L1 norm of the filters that write the group; ``random``: a seeded random subset.
3. **Slice** every tagged parameter (``channels.param_dims``) to the kept channels: a pruned teacher.
4. **Replace** the operators of each stage (``operators.init_from_dense``: rank-1 SVD per input channel for
   depthwise-separable convs, temporal sum for per-frame 2D convs).
5. **Compensate**:
   ``refit`` (default): every conv of the student, in forward order, is refit by least squares to reproduce
     the teacher's output of the same conv (kept output channels) from the student's *actual* input, so each
     layer also absorbs the error of the layers before it (one pass; a depthwise-separable conv refits its
     pointwise part). Convs with more than ``max_refit_features`` inputs (C_in x taps) keep their weights;
   ``fold``: the dropped channels of each group are predicted from the kept ones by least squares on the
     teacher's activations (x_D ~ A x_K + b), and A, b are folded into every conv that reads the group;
   ``none``: slicing only.

Everything random is drawn from generators seeded by ``seed``; the global RNG is untouched (a resumed
training run must see the same random numbers as an uninterrupted one).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channels import CONV_TYPES, expand, param_dims, readers, writers
from .operators import Conv3d, DepthwiseSeparable, FrameConv, init_from_dense
from .student import FAMILIES, DerivedStudent, check_layout

SELECTIONS = ("independence", "l1", "random")
RIDGE = 1e-3  # refit: ridge weight relative to the mean input energy
COMPENSATIONS = ("refit", "fold", "none")


@dataclass
class Derivation:
    """What ``derive`` did: kept channels per group, factorisation errors, refit statistics."""
    selection: str
    compensation: str
    keep: dict[str, list[int]] = field(default_factory=dict)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)   # group: (teacher, student)
    factorization_error: dict[str, float] = field(default_factory=dict)  # conv: relative kernel error (dw)
    refit_error: dict[str, tuple[float, float]] = field(default_factory=dict)  # conv: rel. error before, after
    skipped_refit: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        pruned = {g: w for g, w in self.widths.items() if w[0] != w[1]}
        out = {"selection": self.selection, "compensation": self.compensation,
               "channels_teacher": sum(w[0] for w in self.widths.values()),
               "channels_student": sum(w[1] for w in self.widths.values()), "pruned_groups": len(pruned)}
        if self.factorization_error:
            out["mean_factorization_error"] = sum(self.factorization_error.values()) / len(self.factorization_error)
        if self.refit_error:
            before = [b for b, _ in self.refit_error.values()]
            after = [a for _, a in self.refit_error.values()]
            out["mean_refit_error_before"] = sum(before) / len(before)
            out["mean_refit_error_after"] = sum(after) / len(after)
        if self.skipped_refit:
            out["skipped_refit"] = self.skipped_refit
        return out


# ---- the student's layout from a config -----------------------------------------------------------------
def _resolve_widths(family: str, teacher_config: dict, section: dict) -> tuple[dict, dict, dict]:
    """Stream widths, inner widths and operators from a config's ``student:`` ratios (see configs/flash_*.yaml)."""
    graph_cls = FAMILIES[family]
    full_w, full_i = graph_cls.teacher_widths(teacher_config)
    out = []
    for key, full in (("widths", full_w), ("inner", full_i)):
        names = tuple(full)
        ratios = dict(section.get(key) or {})
        unknown = sorted(set(ratios) - set(names))
        if unknown:
            raise ValueError(f"student.{key}: the {family} decoder has no {', '.join(unknown)}; it has "
                             f"{', '.join(names)}")
        widths = {}
        for name in names:
            r = float(ratios.get(name, 1.0))
            n = int(round(full[name] * r))
            if not 0 < r <= 1 or n < 1:
                raise ValueError(f"student.{key}.{name}: width ratio {r} of {full[name]} teacher channels leaves "
                                 f"{'no channel' if n < 1 else f'{n} channels'}; use a ratio in "
                                 f"[{1 / full[name]:.4g}, 1]")
            widths[name] = n
        out.append(widths)
    ops = {s: "dense" for s in graph_cls.stages} | dict(section.get("operators") or {})
    check_layout(graph_cls, teacher_config, *out, ops)  # an unknown stage or operator: the one check of every student
    out.append(ops)
    return tuple(out)


def student_kwargs(cfg: dict, teacher_config: dict) -> dict:
    """``DerivedStudent`` arguments for a config with ``student: {type: derived, ...}``."""
    section = cfg["student"]
    family = section.get("family")
    if family not in FAMILIES:
        raise ValueError(f"config {cfg.get('name')}: student.family must be one of {sorted(FAMILIES)}, got {family!r}")
    widths, inner, ops = _resolve_widths(family, teacher_config, section)
    return dict(family=family, teacher_config=teacher_config, widths=widths, inner=inner, operators=ops,
                latent_channels=cfg["latent_channels"])


def check_derivation_settings(selection: str, compensation: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"unknown channel selection '{selection}'; choose from {', '.join(SELECTIONS)}")
    if compensation not in COMPENSATIONS:
        raise ValueError(f"unknown compensation '{compensation}'; choose from {', '.join(COMPENSATIONS)}")


# ---- the teacher as a graph ------------------------------------------------------------------------------
def teacher_graph_student(teacher, family: str, teacher_config: dict, latent_channels: int) -> DerivedStudent:
    """The teacher decoder as a full-width, all-dense ``DerivedStudent`` holding the teacher's weights (and its
    latent normalisation): it decodes exactly like the teacher."""
    model = DerivedStudent(family=family, teacher_config=teacher_config, latent_channels=latent_channels)
    model.decoder.load_state_dict(FAMILIES[family].teacher_state(teacher), strict=True)
    mean = getattr(teacher, "latent_mean", None)
    if mean is not None:
        model.latent_mean.copy_(mean.reshape(-1))
        model.latent_scale.copy_(teacher.latent_scale.reshape(-1))
    return model.eval().requires_grad_(False)


# ---- calibration statistics -------------------------------------------------------------------------------
class _Moments:
    """Running mean and covariance of the channels of a conv's input (over sampled positions)."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, None, None

    def add(self, x: torch.Tensor, gen: torch.Generator, max_positions: int = 4096) -> None:
        v = x.detach().transpose(0, 1).reshape(x.shape[1], -1)
        if v.shape[1] > max_positions:
            v = v[:, torch.randint(v.shape[1], (max_positions,), generator=gen).to(v.device)]
        v = v.double().cpu()
        self.n += v.shape[1]
        self.s1 = v.sum(1) if self.s1 is None else self.s1 + v.sum(1)
        self.s2 = v @ v.T if self.s2 is None else self.s2 + v @ v.T

    def mean_cov(self, centred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        second = self.s2 / self.n
        return (mean, second - torch.outer(mean, mean)) if centred else (torch.zeros_like(mean), second)


@torch.no_grad()
def reader_moments(model: DerivedStudent, latents: Iterable[torch.Tensor], modules: list[str],
                   gen: torch.Generator) -> dict[str, _Moments]:
    """Input moments of the named convs while ``model`` decodes ``latents`` (batches)."""
    mods = dict(model.decoder.named_modules())
    stats = {m: _Moments() for m in modules}
    hooks = [mods[m].register_forward_pre_hook(lambda mod, args, m=m: stats[m].add(args[0], gen)) for m in modules]
    try:
        for z in latents:
            model(z)
    finally:
        for h in hooks:
            h.remove()
    return stats


# ---- selection ----------------------------------------------------------------------------------------------
def pivoted_selection(cov: torch.Tensor, k: int) -> list[int]:
    """Greedy pivoted Cholesky: repeatedly keep the channel with the largest variance left unexplained by the
    channels kept so far, then remove its contribution (Schur complement). Sorted indices."""
    r = cov.clone().double()
    kept: list[int] = []
    for _ in range(k):
        d = r.diagonal().clone()
        if kept:
            d[kept] = -float("inf")
        c = int(torch.argmax(d))
        kept.append(c)
        if r[c, c] > 1e-12:
            r -= torch.outer(r[:, c], r[c, :]) / r[c, c]
    return sorted(kept)


def select_channels(method: str, group: str, channels: int, k: int, *, cov: torch.Tensor | None = None,
                    l1: torch.Tensor | None = None, seed: int = 0) -> list[int]:
    if k >= channels:
        return list(range(channels))
    if method == "independence":
        return pivoted_selection(cov, k)
    if method == "l1":
        return sorted(torch.topk(l1, k).indices.tolist())
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(group.encode()))
    return sorted(torch.randperm(channels, generator=gen)[:k].tolist())


def _writer_l1(state: dict, module: str, channels: int, layout) -> torch.Tensor:
    """L1 norm of every output filter of a writer, summed over the copies of each channel (``layout``)."""
    w = state.get(f"{module}.weight", state.get(f"{module}.pointwise.weight"))
    per_row = w.abs().reshape(w.shape[0], -1).sum(1).double()
    if layout is None:
        return per_row
    kind, r = layout
    return per_row.reshape(channels, r).sum(1) if kind == "interleaved" else per_row.reshape(r, channels).sum(0)


# ---- slicing and fold compensation -------------------------------------------------------------------------
def slice_state(state: dict, dims: dict, keep: dict[str, torch.Tensor], widths: dict[str, int]) -> dict:
    out = dict(state)
    for key, ds in dims.items():
        t = out[key]
        for d in ds:
            t = t.index_select(d.dim, expand(keep[d.group], widths[d.group], d.layout).to(t.device))
        out[key] = t
    return out


@torch.no_grad()
def fold_compensation(state: dict, group_readers: list[str], keep: torch.Tensor, channels: int,
                      moments: dict[str, _Moments], ridge: float = 1e-4) -> None:
    """In place on the full-width ``state``: fold x_D ~ A x_K + b of each reader's input into its weights."""
    dropped = torch.tensor(sorted(set(range(channels)) - set(keep.tolist())), dtype=torch.long)
    if len(dropped) == 0:
        return
    for r in group_readers:
        wkey, bkey = f"{r}.weight", f"{r}.bias"
        has_bias = bkey in state
        mean, cov = moments[r].mean_cov(centred=has_bias)  # without a bias the mean cannot be absorbed
        ckk, cdk = cov[keep][:, keep], cov[dropped][:, keep]
        lam = ridge * ckk.diagonal().mean().clamp_min(1e-12)
        a = torch.linalg.solve(ckk + lam * torch.eye(len(keep), dtype=cov.dtype), cdk.T).T  # (D, K)
        b = mean[dropped] - a @ mean[keep]
        w = state[wkey].double()
        wd = w[:, dropped].reshape(w.shape[0], len(dropped), -1)
        w[:, keep] += torch.einsum("odt,dk->okt", wd, a).reshape(w[:, keep].shape)
        state[wkey] = w.to(state[wkey].dtype)
        if has_bias:
            state[bkey] = state[bkey] + torch.einsum("odt,d->o", wd, b).to(state[bkey].dtype)


# ---- operator replacement --------------------------------------------------------------------------------------
@torch.no_grad()
def replace_operators(dense: DerivedStudent, target: DerivedStudent, report: Derivation) -> None:
    """Copy ``dense`` into ``target`` (same widths, other operators): replaced convs are initialised from the
    dense kernels (``init_from_dense``), everything else is copied."""
    dense_mods = dict(dense.decoder.named_modules())
    replaced = set()
    for name, m in target.decoder.named_modules():
        src = dense_mods.get(name)
        if isinstance(m, (DepthwiseSeparable, FrameConv)) and src is not None and type(src) is not type(m):
            err = init_from_dense(m, src.weight, src.bias)
            if err is not None:
                report.factorization_error[name] = err
            replaced.add(name)
    state = dense.state_dict()  # every tensor but the replaced convs' (set above) comes from the dense student
    target.load_state_dict({k: v if any(k.startswith(f"decoder.{r}.") for r in replaced) else state[k]
                            for k, v in target.state_dict().items()}, strict=True)


# ---- refit compensation -----------------------------------------------------------------------------------------
def _patches(module: nn.Module, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The input patch each sampled output position of ``module`` reads: (S, C_in * taps)."""
    if isinstance(module, Conv3d):
        x = module.time_pad(x)
        k = module.weight.shape[2:]
    elif isinstance(module, FrameConv):
        k = (1,) + tuple(module.weight.shape[2:])
    else:  # nn.Conv2d / nn.Conv3d (pointwise, or TAEF2's / Wan's 2D convs)
        k = tuple(module.weight.shape[2:])
    spatial = k[-2:]
    x = F.pad(x, (spatial[1] // 2, spatial[1] // 2, spatial[0] // 2, spatial[0] // 2))
    if x.ndim == 4:
        n, yy, xx = pos
        taps = [x[n, :, yy + dy, xx + dx] for dy in range(k[0]) for dx in range(k[1])]
    else:
        n, tt, yy, xx = pos
        taps = [x[n, :, tt + dt, yy + dy, xx + dx] for dt in range(k[0]) for dy in range(k[1]) for dx in range(k[2])]
    return torch.stack(taps, dim=-1).reshape(len(n), -1)


def _refit_targets(student: DerivedStudent) -> dict[str, tuple[nn.Module, str, tuple]]:
    """{student conv name: (the module to refit, teacher conv name, (out group, layout))}."""
    out = {}
    for name, m in student.decoder.named_modules():
        tags = getattr(m, "channel_tags", None)
        if tags is None or tags["channels"] is not None:
            continue
        if isinstance(m, DepthwiseSeparable):
            out[name] = (m.pointwise, name, (tags["out"], tags["layout"]))
        elif isinstance(m, CONV_TYPES):
            out[name] = (m, name, (tags["out"], tags["layout"]))
    return out


@torch.no_grad()
def refit(student: DerivedStudent, teacher_model: DerivedStudent, latents: torch.Tensor,
          keep: dict[str, torch.Tensor], report: Derivation, samples: int = 16384, ridge: float = RIDGE,
          max_features: int = 4096, gen: torch.Generator | None = None) -> None:
    """Sequential least-squares refit of every conv of ``student`` (see module docstring), in one pass over
    ``latents`` (one batch)."""
    gen = gen or torch.Generator().manual_seed(0)
    targets = _refit_targets(student)
    tmods = dict(teacher_model.decoder.named_modules())
    positions: dict[tuple, tuple] = {}
    teacher_out: dict[str, torch.Tensor] = {}

    def sample(shape: tuple) -> tuple:
        if shape not in positions:
            positions[shape] = tuple(torch.randint(s, (samples,), generator=gen) for s in shape)
        return positions[shape]

    def keep_out(name: str, channels: int) -> torch.Tensor | None:
        group, layout = targets[name][2]
        if group is None:
            return None
        full = teacher_model.decoder.group_widths[group]
        return expand(keep[group], full, layout) if full != student.decoder.group_widths[group] else None

    hooks = []
    for name in targets:
        def grab(mod, args, output, name=name):
            shape = (output.shape[0],) + tuple(output.shape[2:])
            pos = [p.to(output.device) for p in sample(shape)]
            rows = output.movedim(1, -1)[tuple(pos)]  # (S, C_out)
            idx = keep_out(name, output.shape[1])
            teacher_out[name] = (rows if idx is None else rows[:, idx.to(rows.device)]).double()
        hooks.append(tmods[name].register_forward_hook(grab))
    try:
        teacher_model(latents)
    finally:
        for h in hooks:
            h.remove()

    def fit(mod, args, name):
        module = targets[name][0]
        x = args[0]
        w = module.weight
        feats = w.shape[1] * w[0, 0].numel()
        if feats > max_features:
            report.skipped_refit.append(name)
            return
        # stride-1 "same" convs: the output has the input's non-channel shape
        pos = [p.to(x.device) for p in positions[(x.shape[0],) + tuple(x.shape[2:])]]
        a = _patches(module, x, tuple(pos)).double()
        y = teacher_out[name].to(a.device)
        if module.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
        w_old = torch.cat([w.reshape(w.shape[0], -1).double()] + ([module.bias[:, None].double()]
                                                                  if module.bias is not None else []), 1)
        before = ((a @ w_old.T - y).norm() / y.norm().clamp_min(1e-12)).item()
        gram = a.T @ a
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        # ridge towards the current (teacher-derived) weights, not towards zero: where the calibration data says
        # little, the layer stays the teacher's
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        sol = torch.linalg.solve(gram + lam * eye, a.T @ y + lam * w_old.T)
        after = ((a @ sol - y).norm() / y.norm().clamp_min(1e-12)).item()
        if module.bias is not None:
            module.bias.copy_(sol[-1])
            sol = sol[:-1]
        w.copy_(sol.T.reshape(w.shape))
        report.refit_error[name] = (before, after)

    hooks = []
    for name, (module, _, _) in targets.items():
        hooks.append(module.register_forward_pre_hook(lambda mod, args, name=name: fit(mod, args, name)))
    try:
        student(latents)
    finally:
        for h in hooks:
            h.remove()


# ---- the whole derivation ------------------------------------------------------------------------------------
@torch.no_grad()
def derive(teacher, kwargs: dict, latents: torch.Tensor, selection: str = "independence",
           compensation: str = "refit", seed: int = 0, calibration_batch: int | None = None, ridge: float = RIDGE,
           log: Callable[[str], None] = lambda s: None) -> tuple[DerivedStudent, Derivation]:
    """A ``DerivedStudent(**kwargs)`` initialised from ``teacher`` with calibration ``latents`` (B, C, T', H',
    W'), normalised as the diffusion model sees them. ``calibration_batch``: latents per statistics batch
    (the refit always sees them all at once)."""
    check_derivation_settings(selection, compensation)
    gen = torch.Generator().manual_seed(seed)
    device = latents.device
    full = teacher_graph_student(teacher, kwargs["family"], kwargs["teacher_config"], kwargs["latent_channels"])
    full = full.to(device)
    full_widths = dict(full.decoder.group_widths)
    dense_layout = dict(kwargs, operators={s: "dense" for s in kwargs["operators"]})
    pruned = DerivedStudent(**dense_layout).to(device)
    widths = dict(pruned.decoder.group_widths)
    report = Derivation(selection, compensation, widths={g: (full_widths[g], widths[g]) for g in full_widths})
    to_prune = [g for g in full_widths if widths[g] < full_widths[g]]
    group_readers = readers(full.decoder)
    batches = list(latents.split(calibration_batch or len(latents)))
    moments = {}
    if to_prune and (selection == "independence" or compensation == "fold"):
        log(f"calibrating {len(to_prune)} channel groups on {len(latents)} latent clips")
        modules = sorted({r for g in to_prune for r in group_readers.get(g, [])})
        moments = reader_moments(full, batches, modules, gen)
    state = {k: v.clone() for k, v in full.decoder.state_dict().items()}
    group_writers = writers(full.decoder)
    keep = {}
    for g, n in full_widths.items():
        k = widths[g]
        cov = l1 = None
        if k < n and selection == "independence":
            cov = sum(moments[r].mean_cov()[1] for r in group_readers[g])
        if k < n and selection == "l1":
            l1 = sum(_writer_l1(state, w, n, layout) for w, layout in group_writers[g])
        keep[g] = torch.tensor(select_channels(selection, g, n, k, cov=cov, l1=l1, seed=seed), dtype=torch.long)
        report.keep[g] = keep[g].tolist()
    if compensation == "fold":
        for g in to_prune:
            fold_compensation(state, group_readers[g], keep[g], full_widths[g], moments)
    pruned.decoder.load_state_dict(slice_state(state, param_dims(full.decoder), keep, full_widths), strict=True)
    pruned.latent_mean.copy_(full.latent_mean)
    pruned.latent_scale.copy_(full.latent_scale)
    student = DerivedStudent(**kwargs).to(device)
    replace_operators(pruned, student, report)
    changed = bool(to_prune) or kwargs["operators"] != dense_layout["operators"]
    if compensation == "refit" and changed:
        log(f"refitting {len(_refit_targets(student))} convs on {len(latents)} latent clips")
        refit(student, full, latents, keep, report, ridge=ridge, gen=gen)
    stage_groups = student.decoder.stage_output_groups
    student.register_to_config(teacher_channels={s: report.keep[g] for s, g in stage_groups.items()})
    return student.eval(), report
