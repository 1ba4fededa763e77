"""Export a Turbo-VAED student to ONNX, check it, and compare ONNX Runtime with PyTorch.

    python scripts/export_onnx.py --config ltx --resolution 256x256 --frames 17 --output ltx.onnx
    python scripts/export_onnx.py --config hunyuan --student runs/hy/student --resolution 720x1280 --frames 17 \\
        --output hy.onnx --dynamic_frames

Input ``latents`` (1, C, T', H', W'), output ``video`` (1, 3, frames, H, W). Fixed shapes, or with
``--dynamic_frames`` a dynamic latent frame axis (>= 2 latent frames). After export: ``onnx.checker``,
one ONNX Runtime run on random latents compared with PyTorch (max abs error printed; exit 1 above
``--atol``, default 1e-3 on [-1, 1] output). ``--benchmark`` also times both, interleaved.
Sizes must be multiples of the student's spatial compression; ``--crop`` instead decodes the next
multiple and centre-crops inside the graph (e.g. 720x1280 from the 32x LTX student).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (UserError, export_arguments, export_model, export_onnx, load_student, ort_session,  # noqa: E402
                     parse_resolution, set_threads)

from models.cli import check_output_file, run, user_errors  # noqa: E402
from models.config import load_config  # noqa: E402


def main(argv=None) -> int:
    """The exit code: 0, 1 (a failed check of the result), or 2 with one line for a user error (``models.cli.run``)."""
    return run(_main, argv)


def _main(argv=None) -> int:
    p = export_arguments(__doc__.split("\n")[0], "output .onnx file")
    p.add_argument("--dynamic_frames", action="store_true", help="dynamic latent frame axis")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-3, help="max abs error allowed against PyTorch")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--benchmark", action="store_true", help="time ONNX Runtime and PyTorch (interleaved medians)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    set_threads(args.threads)
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); pip install onnx onnxscript "
                        f"onnxruntime") from None
    with user_errors():
        check_output_file(args.output, "--output")
        cfg = load_config(args.config)
        height, width = parse_resolution(args.resolution)
        frames = args.frames or cfg["num_frames"]
        student = load_student(cfg, args.student)
        if args.crop and args.dynamic_frames:
            raise UserError("--crop works with fixed shapes only; leave out --dynamic_frames")
        model, z = export_model(student, frames, height, width, crop=args.crop)

    t0 = time.perf_counter()
    path = export_onnx(model, z, args.output, dynamic_frames=args.dynamic_frames, opset=args.opset)
    print(f"exported {path} ({path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - t0:.1f} s: "
          f"latents {tuple(z.shape)} -> video (1, 3, {frames}, {height}, {width})"
          + (" with a dynamic frame axis" if args.dynamic_frames else ""))
    onnx.checker.check_model(str(path))
    print("onnx.checker: ok")

    sess = ort_session(path, args.threads)
    checks = [z]
    if args.dynamic_frames:  # one more frame count through the same graph
        checks.append(torch.randn(z.shape[0], z.shape[1], z.shape[2] + 1, *z.shape[3:]))
    worst = 0.0
    for zz in checks:
        out = sess.run(None, {"latents": zz.numpy()})[0]
        with torch.inference_mode():
            ref = model(zz).numpy()
        if out.shape != ref.shape:
            print(f"error: ONNX Runtime output {out.shape} != PyTorch {ref.shape}", file=sys.stderr)
            return 1
        err = float(np.abs(out - ref).max())
        worst = max(worst, err)
        print(f"latents {tuple(zz.shape)} -> video {out.shape}: max abs error ONNX Runtime vs PyTorch {err:.2e}")
    if args.benchmark:
        zn = z.numpy()
        runs = {"pytorch": lambda: model(z), "onnxruntime": lambda: sess.run(None, {"latents": zn})}
        times = {k: [] for k in runs}
        with torch.inference_mode():
            for r in range(args.repeats + 1):
                for k, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    if r:
                        times[k].append((time.perf_counter() - t) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"latency (median of {args.repeats}, {torch.get_num_threads()} threads): PyTorch {med['pytorch']:.0f} ms, "
              f"ONNX Runtime {med['onnxruntime']:.0f} ms ({med['pytorch'] / med['onnxruntime']:.2f}x)")
    if worst > args.atol:
        print(f"error: ONNX Runtime differs from PyTorch by {worst:.2e} > {args.atol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
