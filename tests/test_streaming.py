"""Streaming decode (models/streaming.py): every student config decodes chunk by chunk of latent frames to the
one-pass video (<= 1e-4), yields frames before the clip has been fed, and keeps only a few frames per temporal
conv between chunks."""
from __future__ import annotations

import pytest
import torch

from models.config import build_student, config_names, is_derived, load_config
from models.streaming import Chain, Frames, Residual, TemporalConv, Trim

SMALL = {"block_out_channels": [16, 16, 16, 16, 16]}  # the config's layout, narrow blocks


def small_student(name: str):
    cfg = load_config(name)
    torch.manual_seed(0)
    student = build_student(cfg) if is_derived(cfg) else build_student(cfg, **SMALL)
    return student.eval()


@pytest.mark.parametrize("name", config_names())
def test_streaming_equals_one_pass(name):
    student = small_student(name)
    ct, ch, cw = student.compression
    t = max(4, 12 // ct)
    z = torch.randn(1, student.config.latent_channels, t, 2, 2 if ch == 32 else 3)
    with torch.no_grad():
        one = student(z)
        assert one.shape == student.output_shape(z.shape)
        for chunk in (1, 3, t):
            streamed = student.decode(z, chunk=chunk)
            assert streamed.shape == one.shape
            err = (streamed - one).abs().max().item()
            assert err <= 1e-4, f"{name}, chunk {chunk}: max |stream - one pass| = {err:.2e}"


@pytest.mark.parametrize("shuffle", ["classic", "interpolate"])
def test_streaming_equals_one_pass_for_every_upsampler(shuffle):
    torch.manual_seed(0)
    student = build_student(load_config("hunyuan"), **SMALL, pixel_shuffle=shuffle).eval()
    z = torch.randn(1, 16, 4, 2, 3)
    with torch.no_grad():
        one = student(z)
        assert one.shape == student.output_shape(z.shape)
        for chunk in (1, 3):
            assert (student.decode(z, chunk=chunk) - one).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name,frames", [("taef2", 32), ("flash_wan", 4), ("flash_taef2", 4)])
def test_frames_come_out_while_the_clip_is_fed(name, frames):
    """A causal student answers each chunk at once; a non-causal one once the chunks have passed its receptive
    field (the taef2 student's: about 24 frames), long before the clip ends."""
    student = small_student(name)
    z = torch.randn(1, student.config.latent_channels, frames, 2, 2)
    state, parts, ready_after = student.stream(), [], []
    with torch.no_grad():
        for k in range(frames):
            out = state.push(z[:, :, k:k + 1], last=k == frames - 1)
            if out is not None:
                parts.append(out)
                ready_after.append(k)
        one = student(z)
    assert ready_after[0] < frames - 1 and len(parts) > 1
    torch.testing.assert_close(torch.cat(parts, dim=2), one, atol=1e-4, rtol=0)
    with pytest.raises(RuntimeError, match="has ended"):
        state.push(z[:, :, :1], last=True)
    with torch.no_grad():
        streamed = list(student.decode_stream(z, chunk=2))
    torch.testing.assert_close(torch.cat(streamed, dim=2), one, atol=1e-4, rtol=0)


def test_temporal_conv_state_stays_bounded():
    """A 5-tap replicate-padded conv fed one frame at a time keeps at most 4 frames and answers 2 frames late."""
    x = torch.randn(1, 2, 9, 1, 1)
    w = torch.randn(3, 2, 5, 1, 1)
    conv = TemporalConv(lambda v: torch.nn.functional.conv3d(v, w), 2, 2)
    ref = torch.nn.functional.conv3d(torch.cat([x[:, :, :1]] * 2 + [x] + [x[:, :, -1:]] * 2, dim=2), w)
    outs = []
    for k in range(9):
        y = conv.push(x[:, :, k:k + 1], last=k == 8)
        assert conv.buffer is None or conv.buffer.shape[2] <= 4
        outs.append(0 if y is None else y.shape[2])
        if y is not None:
            assert sum(outs) <= k + 1 - 2 or k == 8
    assert sum(outs) == 9
    conv = TemporalConv(lambda v: torch.nn.functional.conv3d(v, w), 2, 2)
    got = torch.cat([o for o in (conv.push(x[:, :, :4], False), conv.push(x[:, :, 4:], True)) if o is not None], dim=2)
    torch.testing.assert_close(got, ref)


def test_residual_and_trim_align_frames():
    x = torch.arange(6.0).view(1, 1, 6, 1, 1)
    w = torch.ones(1, 1, 3, 1, 1)
    stage = Chain([Residual(TemporalConv(lambda v: torch.nn.functional.conv3d(v, w), 1, 1)), Trim(2),
                   Frames(lambda v: v * 2)])
    parts = [stage.push(x[:, :, k:k + 2], last=k == 4) for k in (0, 2, 4)]
    got = torch.cat([p for p in parts if p is not None], dim=2)
    padded = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
    want = ((torch.nn.functional.conv3d(padded, w) + x) * 2)[:, :, 2:]
    torch.testing.assert_close(got, want)
