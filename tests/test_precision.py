"""Half precision: every student config decodes in bfloat16 on CPU close to its float32 decode, and the norms
keep float16 activations from overflowing."""
from __future__ import annotations

import copy

import pytest
import torch

from models.blocks import ChannelLayerNorm, RMSNorm
from models.config import build_student, config_names, is_derived, load_config
from models.derived.wan import RMSNorm as WanRMSNorm


@pytest.mark.parametrize("name", config_names())
def test_bf16_decode_is_finite_and_close_to_fp32(name):
    cfg = load_config(name)
    torch.manual_seed(0)
    # narrow blocks; 32x students keep 64 channels into their 2D upsamplers (64 -> 16 -> 4), as the ltx config does
    last = 64 if not is_derived(cfg) and cfg["student"]["num_upsamplers_2d"] else 16
    student = (build_student(cfg) if is_derived(cfg) else build_student(cfg, block_out_channels=[16] * 4 + [last])).eval()
    ct, ch, _ = student.compression
    z = torch.randn(1, student.config.latent_channels, 3, 2, 2 if ch == 32 else 3)
    with torch.no_grad():
        ref = student.decode(z)
        half = copy.deepcopy(student).to(torch.bfloat16)
        out = half.decode(z.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, f"{name}: relative error of the bf16 decode {rel:.3f}"


@pytest.mark.parametrize("norm", [RMSNorm(), ChannelLayerNorm(8), WanRMSNorm(8)])
def test_norms_do_not_overflow_in_fp16(norm):
    x = torch.randn(1, 8, 2, 3, 3) * 1000  # squares far above float16's 65504
    want = norm(x)
    got = norm.to(torch.float16)(x.to(torch.float16))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)
