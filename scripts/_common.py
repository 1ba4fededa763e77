"""Helpers shared by scripts/benchmark.py, export_onnx.py and export_coreml.py.

Student loading (``--student DIR``: a ``save_pretrained`` folder, or a training checkpoint folder that
holds one under ``student/``), resolution parsing, latent shapes with clear errors, the classic-shuffle
twin of a student, ONNX export and ONNX Runtime sessions.
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/x.py` from anywhere

from models.blocks import classic_to_decoupled_permutation  # noqa: E402
from models.cli import ArgumentParser, UserError  # noqa: E402
from models.config import load_student as load_config_student  # noqa: E402
from models.student import StudentDecoder, TurboVAED  # noqa: E402


def parse_resolution(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"720x1280"`` -> (720, 1280) (height x width)."""
    parts = str(text).lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise UserError(f"resolution must be H or HxW (e.g. 256 or 720x1280), got '{text}'") from None
    if len(parts) > 2 or h <= 0 or w <= 0:
        raise UserError(f"resolution must be H or HxW with positive sizes, got '{text}'")
    return h, w


def load_student(cfg: dict, student_dir: str | None = None) -> StudentDecoder:
    """``models.config.load_student`` with its errors as UserError (one line for the user)."""
    try:
        return load_config_student(cfg, student_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def valid_sizes(student: TurboVAED, frames: int, height: int, width: int) -> str:
    """A hint naming the nearest frame count and sizes the student can produce."""
    _, ch, cw = student.compression
    counts = [student.num_output_frames(t) for t in range(1, 64)]
    f_near = min(counts, key=lambda n: (abs(n - frames), n))
    def near(x, m):
        lo = max(m, x // m * m)
        return f"{lo}" if lo == x else f"{lo} or {lo + m}"
    return f"nearest valid: {f_near} frames, height {near(height, ch)}, width {near(width, cw)}"


def latent_shape(student: TurboVAED, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    """``student.latent_shape_for`` with a UserError that also names the nearest valid request."""
    try:
        return student.latent_shape_for(frames, height, width, batch)
    except ValueError as e:
        raise UserError(f"cannot decode {frames} frames at {height}x{width}: {e}; "
                           f"{valid_sizes(student, frames, height, width)}") from None


def count_macs(fn, *args) -> int:
    """Multiply-accumulates of ``fn(*args)`` (torch's FLOP counter counts 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module with parameters on the meta device (shapes only), for counting MACs without compute."""
    if hasattr(type(module), "from_config") and hasattr(module, "config"):
        with torch.device("meta"):
            return type(module).from_config(module.config).eval()
    return copy.deepcopy(module).to("meta").eval()


def classic_twin(student: TurboVAED) -> TurboVAED:
    """The same student with the classic (rank-8) 3D pixel shuffle, computing the same function: each
    upsampler's expansion conv gets its output channels permuted (``classic_to_decoupled_permutation``)."""
    if not isinstance(student, TurboVAED):
        raise UserError("the classic 3D pixel shuffle is a Turbo-VAED ablation; this student is "
                           f"a {type(student).__name__}")
    cfg = {k: v for k, v in student.config.items() if not k.startswith("_")}
    twin = TurboVAED(**{**cfg, "pixel_shuffle": "classic"}).to(next(student.parameters()).device).eval()
    state = dict(student.state_dict())
    for i, block in enumerate(student.up_blocks):
        if block.upsampler is None:
            continue
        c = block.upsampler.conv.conv.out_channels // (block.upsampler.factors[0] * block.upsampler.factors[1]
                                                       * block.upsampler.factors[2])
        inverse = torch.argsort(classic_to_decoupled_permutation(c, block.upsampler.factors))
        for name in ("weight", "bias"):
            key = f"up_blocks.{i}.upsampler.conv.conv.{name}"
            state[key] = state[key][inverse]
    twin.load_state_dict(state)
    return twin


class Cropped(torch.nn.Module):
    """Decode a larger video and centre-crop it to ``height`` x ``width`` (e.g. 720x1280 from a 32x student,
    which decodes 736x1280). Fixed shapes only."""

    def __init__(self, student: TurboVAED, height: int, width: int):
        super().__init__()
        self.student, self.height, self.width = student, height, width

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        video = self.student(latents)
        top, left = (video.shape[3] - self.height) // 2, (video.shape[4] - self.width) // 2
        return video[:, :, :, top:top + self.height, left:left + self.width]


def export_model(student: TurboVAED, frames: int, height: int, width: int, crop: bool = False):
    """(module to export, example latents) for a request; with ``crop``, sizes that are not multiples of the
    spatial compression are decoded at the next multiple and centre-cropped."""
    _, ch, cw = student.compression
    if not crop:
        try:
            return student, torch.randn(latent_shape(student, frames, height, width))
        except UserError as e:
            if height % ch or width % cw:
                raise UserError(f"{e}; or pass --crop to decode {-(-height // ch) * ch}x{-(-width // cw) * cw} "
                                   f"and centre-crop it to {height}x{width}") from None
            raise
    big_h, big_w = -(-height // ch) * ch, -(-width // cw) * cw
    z = torch.randn(latent_shape(student, frames, big_h, big_w))
    return (Cropped(student, height, width) if (big_h, big_w) != (height, width) else student), z


def export_onnx(model: torch.nn.Module, latents: torch.Tensor, path: str | Path, dynamic_frames: bool = False,
                opset: int = 18) -> Path:
    """ONNX export (torch.export-based exporter) with input ``latents`` and output ``video``, weights inside
    the file; ``dynamic_frames`` makes the latent frame axis (and so the video's) dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {"latents": {2: torch.export.Dim("latent_frames", min=2, max=1024)}} if dynamic_frames else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.eval(), (latents,), input_names=["latents"], output_names=["video"],
                                    dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False)
    program.save(str(path), external_data=False)
    return path


def ort_session(path: str | Path, threads: int | None = None):
    """ONNX Runtime CPU session; its worker threads do not spin, so PyTorch in the same process keeps its
    speed (spinning threads slow PyTorch down when both are timed in turn)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_arguments(description: str, output_help: str):
    """An argument parser with the options both export scripts take (config, student, size, output, crop)."""
    p = ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="config name (configs/*.yaml) or path")
    p.add_argument("--student", help="trained student: save_pretrained folder or checkpoint folder with student/")
    p.add_argument("--resolution", required=True, help="HxW (or H) of the decoded video")
    p.add_argument("--frames", type=int, help="frames of the decoded video (default: the config's num_frames)")
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--crop", action="store_true", help="decode the next producible size and centre-crop")
    return p


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="turbo_vaed_")


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
