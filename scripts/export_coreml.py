"""Export a Turbo-VAED student to a Core ML ML program (.mlpackage).

    python scripts/export_coreml.py --config ltx --resolution 256x256 --frames 17 --output ltx.mlpackage
    python scripts/export_coreml.py --config hunyuan --resolution 512x512 --frames 17 --output hy.mlpackage \\
        --enumerated_shapes 512x512,720x1280

Input ``latents`` (1, C, T', H', W'), output ``video`` (1, 3, frames, H, W); fixed shapes per export, or
``--enumerated_shapes`` (one model, several latent sizes; the first is the default). Precision fp16
(default) or fp32, ``--deployment_target`` iOS17 by default. After conversion the package is reopened and
its input/output shapes, op-type histogram and largest tensor rank are printed; the decoupled student
must stay at rank <= 5 (Core ML rejects rank > 5 with dynamic shapes). ``--pixel_shuffle classic``
exports the same student with the classic rank-8 shuffle for comparison. ``--crop`` decodes the next
producible size and centre-crops (fixed shapes).

``--benchmark`` (macOS only: Core ML prediction needs macOS) loads the package once per compute-unit setting
(``ALL``, ``CPU_AND_NE``, ``CPU_AND_GPU``, ``CPU_ONLY``; ``--compute_units`` picks some), runs ``--warmup``
predictions, then ``--repeats`` timed ones, and prints the median latency and FPS of each (``--json`` keeps them).
On an iPhone, time the package with Xcode's Core ML performance report (README, "iPhone timing").
"""
from __future__ import annotations

import collections
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (UserError, classic_twin, export_arguments, export_model, latent_shape, load_student,  # noqa: E402
                     parse_resolution)

from models.cli import run, user_errors  # noqa: E402
from models.config import load_config  # noqa: E402

MAX_RANK = 5


def import_coremltools():
    """coremltools, or a UserError saying how to get it."""
    try:
        import coremltools as ct
    except ImportError as e:
        raise UserError(f"Core ML export needs coremltools, which is not installed ({e}): "
                           f"pip install 'coremltools>=8' (conversion runs on Linux and macOS; "
                           f"prediction on macOS only)") from None
    return ct


def convert(model: torch.nn.Module, latents: torch.Tensor, precision: str = "fp16", target: str = "iOS17",
            enumerated: list[tuple[int, ...]] | None = None):
    """Trace ``model`` on ``latents`` and convert it to an ML program (input ``latents``, output ``video``)."""
    ct = import_coremltools()
    if not hasattr(ct.target, target):
        raise UserError(f"unknown deployment target '{target}'; e.g. iOS16, iOS17, iOS18, macOS14")
    shape = ct.EnumeratedShapes(shapes=[list(s) for s in enumerated], default=list(enumerated[0])) if enumerated \
        else tuple(latents.shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), latents, check_trace=False)
        return ct.convert(traced, inputs=[ct.TensorType(name="latents", shape=shape)],
                          outputs=[ct.TensorType(name="video")], convert_to="mlprogram",
                          compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                          minimum_deployment_target=getattr(ct.target, target))


def describe(path: str | Path) -> dict:
    """Input/output shapes, op-type histogram (``const`` counted apart), op count and largest tensor rank
    of a saved .mlpackage, read from its spec."""
    ct = import_coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    hist, ranks = collections.Counter(), [0]

    def walk(block):
        for op in block.operations:
            hist[op.type] += 1
            ranks.extend(o.type.tensorType.rank for o in op.outputs if o.type.HasField("tensorType"))
            for b in op.blocks:
                walk(b)

    main = spec.mlProgram.functions["main"]
    walk(main.block_specializations[main.opset])

    def io(features):
        out = {}
        for f in features:
            arr = f.type.multiArrayType
            shapes = [list(s.shape) for s in arr.enumeratedShapes.shapes] if arr.HasField("enumeratedShapes") else []
            out[f.name] = {"shape": list(arr.shape), **({"enumerated": shapes} if shapes else {})}
        return out

    consts = hist.pop("const", 0)
    return {"inputs": io(spec.description.input), "outputs": io(spec.description.output),
            "ops": dict(hist.most_common()), "op_count": sum(hist.values()), "const_count": consts,
            "max_rank": max(ranks)}


COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def time_compute_units(load, feed: dict, units: list[str], warmup: int, repeats: int, frames: int,
                       clock=time.perf_counter) -> dict:
    """{unit: median_ms, fps, all_ms, load_s} for each compute-unit setting: ``load(unit)`` gives a model with
    ``predict(feed)``; ``warmup`` untimed predictions (the first compiles for the device), then ``repeats`` timed."""
    out = {}
    for unit in units:
        t0 = clock()
        model = load(unit)
        load_s = clock() - t0
        for _ in range(warmup):
            model.predict(feed)
        times = []
        for _ in range(repeats):
            t = clock()
            model.predict(feed)
            times.append((clock() - t) * 1e3)
        ms = statistics.median(times)
        out[unit] = {"median_ms": ms, "fps": frames * 1e3 / ms, "all_ms": [round(x, 2) for x in times],
                     "load_s": round(load_s, 2)}
        print(f"  {unit:12s} median {ms:8.1f} ms over {repeats} (after {warmup} warm-up), {frames * 1e3 / ms:7.1f} FPS, "
              f"load {load_s:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv=None) -> int:
    p = export_arguments(__doc__.split("\n")[0], "output .mlpackage")
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--deployment_target", default="iOS17")
    p.add_argument("--enumerated_shapes", help="comma-separated HxW list, e.g. 512x512,720x1280 (one model)")
    p.add_argument("--pixel_shuffle", default="decoupled", choices=["decoupled", "classic"],
                   help="classic: the same student with the rank-8 3D pixel shuffle (for comparison)")
    p.add_argument("--benchmark", action="store_true",
                   help="time predictions for each compute-unit setting (macOS only: Core ML prediction needs macOS)")
    p.add_argument("--compute_units", nargs="+", default=list(COMPUTE_UNITS), choices=COMPUTE_UNITS,
                   help="with --benchmark: the settings to time (default: all four)")
    p.add_argument("--warmup", type=int, default=3, help="with --benchmark: untimed predictions per setting")
    p.add_argument("--repeats", type=int, default=10, help="with --benchmark: timed predictions per setting")
    p.add_argument("--json", help="with --benchmark: write the timings here")
    args = p.parse_args(argv)
    with user_errors():
        ct = import_coremltools()
        cfg = load_config(args.config)
        height, width = parse_resolution(args.resolution)
        frames = args.frames or cfg["num_frames"]
        student = load_student(cfg, args.student)
        if args.pixel_shuffle == "classic":
            student = classic_twin(student)
        model, z = export_model(student, frames, height, width, crop=args.crop)
        enumerated = None
        if args.enumerated_shapes:
            if model is not student:
                raise UserError("--crop works with fixed shapes only; leave out --enumerated_shapes")
            sizes = [parse_resolution(s) for s in args.enumerated_shapes.split(",")]
            enumerated = [latent_shape(student, frames, h, w) for h, w in sizes]
            z = torch.randn(enumerated[0])
        t0 = time.perf_counter()
    try:
        mlmodel = convert(model, z, args.precision, args.deployment_target, enumerated)
    except (ValueError, RuntimeError, NotImplementedError) as e:  # e.g. the classic shuffle's rank-8 reshape
        print(f"error: Core ML conversion failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out))
    print(f"saved {out} ({args.pixel_shuffle} shuffle, {args.precision}, {args.deployment_target}) "
          f"in {time.perf_counter() - t0:.1f} s")

    info = describe(out)
    for kind in ("inputs", "outputs"):
        for name, d in info[kind].items():
            print(f"{kind[:-1]} {name}: {d['shape']}" + (f", enumerated {d['enumerated']}" if "enumerated" in d else ""))
    print(f"ops: {info['op_count']} (+ {info['const_count']} const); largest rank {info['max_rank']}")
    for op, n in info["ops"].items():
        print(f"  {op:24s} {n}")
    if info["max_rank"] > MAX_RANK and args.pixel_shuffle == "decoupled":
        print(f"error: a tensor of rank {info['max_rank']} > {MAX_RANK} in the converted model", file=sys.stderr)
        return 1

    if args.benchmark:
        if platform.system() != "Darwin":
            print(f"--benchmark: Core ML prediction needs macOS (this machine runs {platform.system()}), so nothing "
                  f"was timed; conversion and inspection are done. Time {out} on a Mac with the same command, or on "
                  f"an iPhone with Xcode's Core ML performance report (README, \"iPhone timing\").")
            return 0
        print(f"Core ML prediction of {out} ({frames} frames, {platform.machine()} {platform.mac_ver()[0]}):")
        timings = time_compute_units(
            lambda unit: ct.models.MLModel(str(out), compute_units=getattr(ct.ComputeUnit, unit)),
            {"latents": z.numpy().astype("float32")}, args.compute_units, args.warmup, args.repeats, frames)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": str(out), "frames": frames, "resolution": args.resolution,
                                                   "precision": args.precision, "machine": platform.platform(),
                                                   "compute_units": timings}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
