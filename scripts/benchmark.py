"""Decode speed of teacher vs student on the same latents (paper Table 3, speed columns).

    python scripts/benchmark.py --config ltx --resolution 256 --frames 17 --device cpu --threads 2 --json out.json
    python scripts/benchmark.py --all --resolution 256 --frames 17 --device cpu --repeats 3 --threads 2 --json all.json
    python scripts/benchmark.py --all --device cuda --dtype fp16 --json speed.json   # paper's speed columns

Per config: the teacher decoder from its default diffusers config with random weights (``--teacher SRC``
loads real ones; speed does not depend on them) and the student (random, or ``--student DIR``) decode the
same latents for a video of F frames at HxW. After ``--warmup`` rounds, ``--repeats`` rounds run
interleaved (teacher, student, teacher, ...): median latency, FPS (output frames / s), peak memory (CUDA
max allocated, or peak RSS growth on CPU), parameters and multiply-accumulates per clip (torch's FLOP
counter / 2, counted on the meta device). Teachers run as diffusers ships them: fp32 (or ``--dtype``),
eval, ``torch.inference_mode``; HunyuanVideo in its default framewise-tiled mode and in one pass.
A size that is not a multiple of the spatial compression (720x1280 for the 32x LTX and DC-AE students) is
decoded at the next multiple (736x1280) and centre-cropped, as the exports do (``decoded`` in the results); the
teacher decodes the same latents. Student-only configs (dcae: no public teacher) and ``--student_only`` report the
student alone. The student's time and peak memory (``student_peak_mb``) are those of ``student.decode``, which
decodes as a stream of ``student_chunk`` latent frames at a time (``models/streaming.py``) into the video it
returns (``student_video_mb`` of the peak is that video: it grows with the clip whatever the decode holds
besides); ``--student_only`` also times ``decode_stream`` with each piece dropped as it comes (``student_stream_*``:
what a writer of frames holds, without the returned video). ``--frames 121`` vs ``--frames 17`` shows what a
long clip costs. On CPU the benchmark pins glibc's mmap threshold (``pin_mmap_threshold``) so peak RSS follows
the tensors alive.

On CPU in float32 the speed-up is reported twice, each side with the same tricks: both sides plain PyTorch
(the ``speedup`` keys: the architecture alone), and both sides through the CPU transform
``models.cpu_fast.cpu_fast`` (oneDNN for every conv, fused norms; the ``cpu_fast`` entry: what a CPU user gets).
The four decoders run interleaved in one loop.

Single-config runs also time the student's decoupled vs classic 3D pixel shuffle (same weights up to a
channel permutation, same output) in PyTorch and in ONNX Runtime (``--skip_shuffle`` to leave out).
``--all`` runs every config at each ``--resolution`` (default 512x512 and 720x1280) and writes a markdown table
per size and the paper's speed table (parameters, teacher and student FPS at each size, speed-up) (``--markdown``,
default next to ``--json``). ``--dtype fp16`` / ``bf16`` on ``--device cuda`` is the paper's GPU setting.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (UserError, classic_twin, count_macs, export_onnx, latent_shape, load_student,  # noqa: E402
                     meta_copy, ort_session, parse_resolution, set_threads, temp_dir)

from diffusers.utils import logging as diffusers_logging  # noqa: E402

from models.cli import ArgumentParser, run, user_errors  # noqa: E402
from models.config import config_names, has_teacher, load_config, load_teacher  # noqa: E402
from models.cpu_fast import cpu_fast  # noqa: E402
from models.student import TurboVAED  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---- measuring ----------------------------------------------------------------------------------
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc (macOS, musl): peak memory on CPU is not reported
    _LIBC = None
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024


def pin_mmap_threshold() -> str:
    """Give every allocation of at least 128 KiB its own mapping, returned to the system when freed (glibc's
    default raises this threshold as large blocks are freed, up to 32 MiB, and keeps what it frees in its heap).
    Then the peak RSS measures the tensors a decode holds, not the allocator's history. Users get the same
    (and a lower peak) with ``MALLOC_MMAP_THRESHOLD_=131072``. Returns how CPU memory was measured."""
    if _LIBC is None or not _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return "allocator default"
    return f"glibc, mmap threshold pinned at {MMAP_THRESHOLD // 1024} KiB"


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """out["mb"] = peak memory growth during the block: CUDA max allocated above the start, or on CPU the
    peak resident set size above the start (Linux: VmHWM reset through /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        torch.cuda.synchronize(device)
        out["mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    try:
        _LIBC.malloc_trim(0)  # hand freed heap memory back, so earlier runs do not hide this one's growth
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        start = _proc_status_kb("VmRSS")
    except (OSError, AttributeError):
        start = None
    yield
    out["mb"] = None if start is None else (_proc_status_kb("VmHWM") - start) / 1024


def measure(runners: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """Run every callable in turn (interleaved), ``warmup`` + ``repeats`` rounds; medians of the repeats."""
    ms = {k: [] for k in runners}
    mem = {k: [] for k in runners}
    for r in range(warmup + repeats):
        for name, fn in runners.items():
            gc.collect()
            box: dict = {}
            with peak_memory(device, box):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = (time.perf_counter() - t0) * 1e3
            if r >= warmup:
                ms[name].append(dt)
                mem[name].append(box["mb"])
            print(f"  {'warmup' if r < warmup else 'repeat'} {r + 1 - (warmup if r >= warmup else 0)}: "
                  f"{name} {dt:.0f} ms", file=sys.stderr, flush=True)
    return {k: {"ms": statistics.median(ms[k]), "all_ms": [round(x, 1) for x in ms[k]],
                "peak_mb": None if None in mem[k] else max(mem[k])} for k in runners}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- teacher modes --------------------------------------------------------------------------------
def teacher_modes(teacher) -> dict:
    """{mode: settings} for the teacher's decode: "default" as diffusers ships it, plus "single pass"
    when the default tiles frames (HunyuanVideo's ``use_framewise_decoding``)."""
    vae = getattr(teacher, "vae", None)
    if vae is not None and getattr(vae, "use_framewise_decoding", False):
        return {"default": {"use_framewise_decoding": True}, "single pass": {"use_framewise_decoding": False}}
    return {"default": {}}


def teacher_decode_fn(teacher, settings: dict):
    def run(z):
        for k, v in settings.items():
            setattr(teacher.vae, k, v)
        with torch.inference_mode():
            return teacher.decode(z)
    return run


def teacher_macs(teacher, settings: dict, z: torch.Tensor) -> int:
    """On the meta device (no compute); if the decoder cannot run there, one real decode is counted."""
    try:
        vae = getattr(teacher, "vae", None)
        if vae is not None:
            meta = meta_copy(vae)
            for k, v in settings.items():
                setattr(meta, k, v)
            return count_macs(lambda x: meta.decode(x, return_dict=False), z.to("meta"))
        return count_macs(meta_copy(teacher).decode, z.to("meta"))
    except Exception:  # noqa: BLE001 - any meta-device failure: count a real run instead
        return count_macs(teacher_decode_fn(teacher, settings), z)


def _to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device)
    return module if dtype == torch.float32 else module.to(dtype)


# ---- one config -----------------------------------------------------------------------------------
def bench_config(name: str, args, height: int, width: int, student_dir: str | None) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = load_config(name)
    student = _to(load_student(cfg, student_dir), device, dtype)
    frames, note = args.frames or cfg["num_frames"], ""
    _, ch, cw = student.compression
    dec_h, dec_w = -(-height // ch) * ch, -(-width // cw) * cw  # the next size the student decodes, then cropped
    try:
        shape = latent_shape(student, frames, dec_h, dec_w)
    except UserError:
        if not args.all or args.frames is None:
            raise
        frames, note = cfg["num_frames"], f"{cfg['num_frames']} frames ({args.frames} not producible)"
        shape = latent_shape(student, frames, dec_h, dec_w)
    top, left = (dec_h - height) // 2, (dec_w - width) // 2

    def crop(video: torch.Tensor) -> torch.Tensor:  # centre crop to the requested size (a view: no copy)
        return video[..., top:top + height, left:left + width]
    torch.manual_seed(0)
    z = torch.randn(shape, device=device, dtype=dtype)
    res = {"config": name, "resolution": f"{height}x{width}", "decoded": f"{dec_h}x{dec_w}", "frames": frames,
           "latent_shape": list(shape),
           "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "repeats": args.repeats,
           "warmup": args.warmup, "teacher_mode": "diffusers default: eval, torch.inference_mode, " + args.dtype,
           "student_params": n_params(student), "student_chunk": student.default_chunk, "memory": args.memory,
           "note": note}

    teacher, modes = None, {}
    if args.student_only:
        res["note"] = (note + "; " if note else "") + "student only (--student_only)"
    elif has_teacher(cfg):
        try:
            tcfg = dict(cfg, teacher=dict(cfg["teacher"], source=args.teacher)) if args.teacher else cfg
            teacher = _to(load_teacher(tcfg, random_init=args.teacher is None), device, dtype).eval()
            modes = teacher_modes(teacher)
            if args.teacher_mode == "default":
                modes = {"default": modes["default"]}
            res["teacher_weights"] = args.teacher or "random (default config)"
        except Exception as e:  # e.g. TAEF2 weights not available: report the student alone
            res["note"] = (note + "; " if note else "") + f"teacher unavailable: {e}".split("\n")[0]
    else:
        res["note"] = (note + "; " if note else "") + "no public teacher: student only"

    both_sides = {"": (teacher, student)}
    if device.type == "cpu" and dtype == torch.float32:  # the same CPU transform on both sides, timed in the same loop
        both_sides[FAST] = (None if teacher is None else cpu_fast(copy.deepcopy(teacher)),
                           cpu_fast(copy.deepcopy(student)))
    runners = {}
    for side, (t_model, s_model) in both_sides.items():
        runners.update({f"teacher ({m}){side}": (lambda fn: (lambda: crop(fn(z))))(teacher_decode_fn(t_model, s))
                        for m, s in modes.items()})
        runners[f"student{side}"] = (lambda model: (lambda: crop(student_decode(model, z))))(s_model)
        if args.student_only:
            runners[f"student (stream){side}"] = (lambda model: (lambda: student_stream(model, z)))(s_model)
    print(f"[{name}] latents {tuple(shape)} -> video {frames}x{dec_h}x{dec_w}"
          f"{f' cropped to {height}x{width}' if (dec_h, dec_w) != (height, width) else ''}, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr, flush=True)
    timing = measure(runners, args.warmup, args.repeats, device)

    if FAST in both_sides:
        res["cpu_fast"] = fast_side(timing, modes, frames)
    s = timing["student"]
    video_mb = math.prod(student.output_shape(shape)) * z.element_size() / 2**20  # in every decode's peak
    res.update(student_ms=s["ms"], student_fps=frames * 1e3 / s["ms"], student_peak_mb=s["peak_mb"],
               student_video_mb=video_mb, student_all_ms=s["all_ms"],
               student_macs=count_macs(meta_copy(student), z.to("meta")))
    res.update(stream_fields(timing, ""))
    if teacher is not None:
        res["teacher_params"] = teacher.decoder_parameters()
        res["teacher_modes"] = {}
        for m, settings in modes.items():
            t = timing[f"teacher ({m})"]
            macs = teacher_macs(teacher, settings, z)
            res["teacher_modes"][m] = {"ms": t["ms"], "all_ms": t["all_ms"], "fps": frames * 1e3 / t["ms"],
                                       "peak_mb": t["peak_mb"], "macs": macs, "speedup": t["ms"] / s["ms"],
                                       "speedup_paired": statistics.median(  # per round: teacher run / next student run
                                           a / b for a, b in zip(t["all_ms"], s["all_ms"])),
                                       "mac_ratio": macs / res["student_macs"]}
        d = res["teacher_modes"]["default"]
        res.update(teacher_ms=d["ms"], teacher_fps=d["fps"], teacher_peak_mb=d["peak_mb"], teacher_macs=d["macs"],
                   speedup=d["speedup"], speedup_paired=d["speedup_paired"], mac_ratio=d["mac_ratio"])
    else:
        res.update(teacher_ms=None, teacher_fps=None, teacher_peak_mb=None, teacher_macs=None, teacher_params=None,
                   speedup=None, speedup_paired=None, mac_ratio=None)
        if cfg["teacher"]["class"] == "none":
            res["teacher_params"] = int(float(cfg["teacher"].get("decoder_params", 0))) or None
    del teacher
    gc.collect()
    if not args.skip_shuffle and not args.all and isinstance(student, TurboVAED):  # the decoupled shuffle is Turbo-VAED's
        res["shuffle"] = shuffle_comparison(student, z, args)
    return res


FAST = " cpu_fast"  # runner-name suffix of the decoders through models.cpu_fast


def student_decode(student, z: torch.Tensor) -> torch.Tensor:
    """The decode users get: a stream of ``student.default_chunk`` latent frames at a time."""
    with torch.inference_mode():
        return student.decode(z)


def student_stream(student, z: torch.Tensor) -> int:
    """The decode of a user who writes frames out as they come (``decode_stream``): no whole video is kept, so
    its peak memory is what streaming holds. Returns the frame count."""
    with torch.inference_mode():
        return sum(piece.shape[2] for piece in student.decode_stream(z))


def stream_fields(timing: dict, side: str) -> dict:
    """``student_stream_ms`` / ``student_stream_peak_mb`` of one side's stream runner (none without ``--student_only``)."""
    t = timing.get("student (stream)" + side)
    return {} if t is None else {"student_stream_ms": t["ms"], "student_stream_peak_mb": t["peak_mb"]}


def fast_side(timing: dict, modes: dict, frames: int) -> dict:
    """Student time, peak memory and speed-ups with ``cpu_fast`` on both sides."""
    s = timing["student" + FAST]
    out = {"student_ms": s["ms"], "student_fps": frames * 1e3 / s["ms"], "student_all_ms": s["all_ms"],
           "student_peak_mb": s["peak_mb"], "teacher_modes": {}, **stream_fields(timing, FAST)}
    for m in modes:
        t = timing[f"teacher ({m}){FAST}"]
        out["teacher_modes"][m] = {"ms": t["ms"], "all_ms": t["all_ms"], "speedup": t["ms"] / s["ms"],
                                   "speedup_paired": statistics.median(a / b for a, b in zip(t["all_ms"], s["all_ms"]))}
    return out


def shuffle_comparison(student: TurboVAED, z: torch.Tensor, args) -> dict:
    """Decoupled vs classic 3D pixel shuffle inside the student, in PyTorch and ONNX Runtime (CPU)."""
    classic = classic_twin(student)
    with torch.inference_mode():
        diff = (student(z) - classic(z)).abs().max().item()
    runners = {}
    for label, model in (("decoupled", student), ("classic", classic)):
        runners[f"pytorch {label}"] = (lambda m: (lambda: m(z)))(model)
    out = {"max_abs_diff_decoupled_vs_classic": diff}
    with temp_dir() as tmp:
        if args.device == "cpu" and args.dtype == "fp32":
            zc = z.cpu().numpy()
            for label, model in (("decoupled", student), ("classic", classic)):
                print(f"  exporting the {label} student to ONNX...", file=sys.stderr, flush=True)
                sess = ort_session(export_onnx(model, z.cpu(), Path(tmp) / f"{label}.onnx"), torch.get_num_threads())
                runners[f"onnxruntime {label}"] = (lambda s: (lambda: s.run(None, {"latents": zc})))(sess)
        else:
            out["note"] = "ONNX Runtime timing only with --device cpu --dtype fp32"
        with torch.inference_mode():
            timing = measure(runners, args.warmup, args.repeats, torch.device(args.device))
    out.update({f"{k.replace(' ', '_')}_ms": v["ms"] for k, v in timing.items()})
    if "onnxruntime_decoupled_ms" in out:
        out["onnxruntime_vs_pytorch"] = out["pytorch_decoupled_ms"] / out["onnxruntime_decoupled_ms"]
    return out


# ---- reporting ------------------------------------------------------------------------------------
def _fmt(x, unit="", nd=0):
    return "-" if x is None else f"{x:,.{nd}f}{unit}"


def print_single(res: dict) -> None:
    print(f"\n{res['config']}: {res['frames']} frames at {res['resolution']}, {res['device']} {res['dtype']}, "
          f"{res['threads']} threads, median of {res['repeats']} (interleaved, after {res['warmup']} warm-up)")
    rows = [(f"teacher ({m})", res["teacher_params"], t["macs"], t["ms"], t["fps"], t["peak_mb"], t["speedup"],
             t["mac_ratio"]) for m, t in res.get("teacher_modes", {}).items()]
    rows.append(("student", res["student_params"], res["student_macs"], res["student_ms"], res["student_fps"],
                 res["student_peak_mb"], None, None))
    if "student_stream_ms" in res:
        rows.append(("student (stream)", res["student_params"], res["student_macs"], res["student_stream_ms"],
                     res["frames"] * 1e3 / res["student_stream_ms"], res["student_stream_peak_mb"], None, None))
    print(f"{'':22s} {'params':>12s} {'GMACs':>10s} {'ms':>10s} {'FPS':>8s} {'peak MB':>9s} {'student x':>10s} "
          f"{'MAC ratio':>10s}")
    for label, p, macs, ms, fps, mb, sp, mr in rows:
        print(f"{label:22s} {_fmt(p / 1e6, 'M', 2):>12s} {_fmt(macs / 1e9, '', 1):>10s} {_fmt(ms):>10s} "
              f"{_fmt(fps, '', 2):>8s} {_fmt(mb):>9s} {_fmt(sp, 'x', 2):>10s} {_fmt(mr, 'x', 2):>10s}")
    print(f"the student's decode returns a {res['student_video_mb']:,.1f} MB video (part of its peak)")
    fast = res.get("cpu_fast", {"teacher_modes": {}})
    if "student_ms" in fast:
        print(f"student through cpu_fast: {fast['student_ms']:.0f} ms ({res['student_ms'] / fast['student_ms']:.2f}x "
              f"the plain student), peak {_fmt(fast['student_peak_mb'])} MB"
              + (f"; stream {fast['student_stream_ms']:.0f} ms, peak {_fmt(fast['student_stream_peak_mb'])} MB"
                 if "student_stream_ms" in fast else ""))
    for m, t in res.get("teacher_modes", {}).items():
        print(f"speedup vs teacher ({m}), both plain: {t['speedup']:.2f}x from medians, {t['speedup_paired']:.2f}x "
              f"median of per-round ratios")
        if m in fast["teacher_modes"]:
            f = fast["teacher_modes"][m]
            print(f"speedup vs teacher ({m}), both cpu_fast: {f['speedup']:.2f}x from medians, "
                  f"{f['speedup_paired']:.2f}x median of per-round ratios (teacher {f['ms']:.0f} ms, "
                  f"student {fast['student_ms']:.0f} ms)")
    if res.get("note"):
        print(f"note: {res['note']}")
    sh = res.get("shuffle")
    if sh:
        print(f"pixel shuffle inside the student (max |decoupled - classic| = {sh['max_abs_diff_decoupled_vs_classic']:.2e}):")
        for k, v in sh.items():
            if k.endswith("_ms"):
                print(f"  {k[:-3].replace('_', ' '):28s} {v:10.0f} ms")
        if "onnxruntime_vs_pytorch" in sh:
            print(f"  ONNX Runtime vs PyTorch (decoupled): {sh['onnxruntime_vs_pytorch']:.2f}x")


def markdown_table(results: list[dict]) -> str:
    head = ("| config | teacher mode | teacher params | student params | teacher GMACs | student GMACs | MAC ratio "
            "| teacher ms | student ms | teacher FPS | student FPS | speedup | paired | teacher peak MB | student peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        modes = r.get("teacher_modes") or {"-": None}
        for m, t in modes.items():
            t = t or {}
            lines.append(
                f"| {r['config']} | {m} | {_fmt((r.get('teacher_params') or 0) / 1e6 or None, 'M', 1)} | "
                f"{_fmt(r['student_params'] / 1e6, 'M', 2)} | {_fmt(t.get('macs') and t['macs'] / 1e9, '', 0)} | "
                f"{_fmt(r['student_macs'] / 1e9, '', 1)} | {_fmt(t.get('mac_ratio'), 'x', 1)} | {_fmt(t.get('ms'))} | "
                f"{_fmt(r['student_ms'])} | {_fmt(t.get('fps'), '', 2)} | {_fmt(r['student_fps'], '', 2)} | "
                f"{_fmt(t.get('speedup'), 'x', 1)} | {_fmt(t.get('speedup_paired'), 'x', 1)} | {_fmt(t.get('peak_mb'))} | "
                f"{_fmt(r['student_peak_mb'])} |")
    r0 = results[0] if results else {}
    lines.append(f"\n{r0.get('resolution')}, {r0.get('device')} {r0.get('dtype')}, {r0.get('threads')} threads, median "
                 f"of {r0.get('repeats')} interleaved runs (paired: median over rounds of teacher / student time); "
                 f"teachers: diffusers default (eval, inference_mode), random weights; MACs from torch's FLOP counter.")
    fast = [f"| {r['config']} | {m} | {_fmt(t['ms'])} | {_fmt(r['cpu_fast']['student_ms'])} | "
            f"{_fmt(t['speedup'], 'x', 1)} | {_fmt(t['speedup_paired'], 'x', 1)} |"
            for r in results if r.get("cpu_fast") for m, t in r["cpu_fast"]["teacher_modes"].items()]
    if fast:
        lines += ["\nBoth sides through the CPU transform (models/cpu_fast.py), same runs:\n",
                  "| config | teacher mode | teacher ms | student ms | speedup | paired |", "|---|---|---|---|---|---|", *fast]
    notes = [f"{r['config']}: {r['note']}" for r in results if r.get("note")]
    return "\n".join(lines + [f"- {n}" for n in notes])


def speed_table(per_size: dict[str, list[dict]]) -> str:
    """The paper's speed columns (Table 3/4): teacher and student decoder parameters, FPS of each at every size,
    student speed-up; one row per config (teachers in diffusers' default mode)."""
    sizes = list(per_size)
    by_config: dict[str, dict] = {}
    for size, results in per_size.items():
        for r in results:
            by_config.setdefault(r["config"], {"params": (r.get("teacher_params"), r["student_params"])})[size] = r
    head = "| config | teacher params | student params | " + " | ".join(
        f"teacher FPS {s} | student FPS {s} | speed-up {s}" for s in sizes) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in by_config.items():
        tp, sp = row["params"]
        cells = [name, _fmt(tp and tp / 1e6, "M", 1), _fmt(sp / 1e6, "M", 1)]
        for s in sizes:
            r = row.get(s, {})
            cells += [_fmt(r.get("teacher_fps"), "", 2), _fmt(r.get("student_fps"), "", 2), _fmt(r.get("speedup"), "x", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    r0 = next((r for rs in per_size.values() for r in rs), {})
    lines.append(f"\n{r0.get('frames')} frames (the config's unless --frames), {r0.get('device')} {r0.get('dtype')}, median of "
                 f"{r0.get('repeats')} interleaved runs; FPS = output frames / s; sizes that are not multiples of the "
                 f"student's compression are decoded at the next multiple and centre-cropped.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="config name (configs/*.yaml) or path")
    which.add_argument("--all", action="store_true", help="every config, one markdown table")
    p.add_argument("--student", help="trained student: save_pretrained folder or checkpoint folder with student/")
    p.add_argument("--teacher", help="teacher weights (hub id or local dir); default: random weights")
    p.add_argument("--resolution", nargs="+", help="H or HxW of the decoded video (--all: one or more; default "
                                                   "512x512 720x1280, the paper's speed columns)")
    p.add_argument("--frames", type=int, help="frames of the decoded video (default: the config's num_frames)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch (and ONNX Runtime) CPU threads")
    p.add_argument("--student_only", action="store_true", help="leave out the teacher")
    p.add_argument("--teacher_mode", default="all", choices=["all", "default"],
                   help="teacher decode modes to time: all (HunyuanVideo: framewise default and single pass) "
                        "or only diffusers' default")
    p.add_argument("--skip_shuffle", action="store_true", help="leave out the decoupled vs classic shuffle timing")
    p.add_argument("--json", help="write results here")
    p.add_argument("--markdown", help="with --all: write the table here (default: next to --json)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    diffusers_logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.config and len(args.resolution or []) != 1:
        p.error("--config takes one --resolution (H or HxW)")
    sizes = [parse_resolution(r) for r in (args.resolution or ["512x512", "720x1280"])]
    args.memory = pin_mmap_threshold() if args.device == "cpu" else "CUDA max allocated"
    if args.config:
        with user_errors():
            load_config(args.config)  # an unknown config fails here, in one line
    if args.all:
        per_size = {}
        for height, width in sizes:
            results = per_size[f"{height}x{width}"] = []
            for name in config_names():
                try:
                    results.append(bench_config(name, args, height, width, None))
                except UserError as e:
                    print(f"[{name}] skipped: {e}", file=sys.stderr)
        table = "\n\n".join([speed_table(per_size)] + [markdown_table(r) for r in per_size.values()])
        print(table)
        md = args.markdown or (str(Path(args.json).with_suffix(".md")) if args.json else None)
        if md:
            Path(md).write_text(table + "\n")
        out = {"settings": vars(args), "results": [r for rs in per_size.values() for r in rs]}
    else:
        out = bench_config(args.config, args, *sizes[0], args.student)
        print_single(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
