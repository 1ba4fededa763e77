"""Streaming decode (models/streaming.py): every student config decodes chunk by chunk of latent frames to the
one-pass video (<= 1e-4), yields frames before the clip has been fed, and keeps only a few frames per temporal
conv between chunks."""
from __future__ import annotations

import pytest
import torch

from conftest import narrow_student

from models.config import config_names
from models.streaming import Chain, Frames, Residual, TemporalConv, Trim


@pytest.mark.parametrize("name", config_names())
def test_streaming_equals_one_pass(name):
    student = narrow_student(name)
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
    student = narrow_student("hunyuan", pixel_shuffle=shuffle)
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
    student = narrow_student(name)
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


@pytest.mark.parametrize(("name", "short"), [("ltx", 48), ("hunyuan", 96)])
def test_memory_does_not_grow_with_clip_length(name, short):
    """Decoding a clip twice as long keeps the same state between chunks (counted in whole storages, so a kept
    view of a larger tensor counts that tensor) and hands the video over in pieces of at most MAX_FRAMES frames,
    even at the end of a clip that a non-causal student's receptive field spans. ``short`` is past the receptive
field of the narrow student (below it, frames reach the high-resolution stages only at the clip's end and the
state between chunks is still growing towards its bound)."""
    from models.streaming import MAX_FRAMES
    student = narrow_student(name)
    held, sizes = {}, {}
    for t in (short, 2 * short):
        z = torch.randn(1, student.config.latent_channels, t, 2, 2)
        state, held[t], sizes[t], frames = student.stream(), 0, [], 0
        with torch.no_grad():
            for start in range(0, t, student.default_chunk):
                for piece in state.pieces(z[:, :, start:start + student.default_chunk], start + student.default_chunk >= t):
                    sizes[t].append(piece.shape[2])
                    frames += piece.shape[2]
                held[t] = max(held[t], state.state_bytes())
        assert frames == student.num_output_frames(t)
        assert max(sizes[t]) <= MAX_FRAMES, f"{name}: a piece of {max(sizes[t])} frames"
        assert state.state_bytes() == 0  # nothing is kept once the clip has ended
    assert 0 < held[2 * short] <= held[short], \
        f"{name}: state between chunks {held[short]} B at {short} latent frames, {held[2 * short]} B at {2 * short}"


def test_stream_keeps_no_piece_it_has_handed_on():
    """Once the caller drops a piece, it is freed while the stream is still suspended: no stage (nor the chain
    or the student's stream) holds a reference to what it has yielded."""
    import gc
    import weakref
    student = narrow_student("ltx")
    z = torch.randn(1, student.config.latent_channels, 8, 2, 2)
    with torch.no_grad():
        stream = student.decode_stream(z)
        piece = next(stream)
        first, ref = piece.shape[2], weakref.ref(piece)
        del piece
        gc.collect()
        assert ref() is None, "a suspended stage keeps the piece it handed on alive"
        assert first + sum(p.shape[2] for p in stream) == student.num_output_frames(8)


def test_pieces_are_capped_in_bytes(monkeypatch):
    """With ``PIECE_BYTES`` below one frame, every piece between stages is a single frame and the video still
    equals the one-pass decode."""
    import models.streaming as streaming
    student = narrow_student("ltx")
    z = torch.randn(1, student.config.latent_channels, 5, 2, 2)
    with torch.no_grad():
        ref = student(z)
        monkeypatch.setattr(streaming, "PIECE_BYTES", 1)
        pieces = list(student.decode_stream(z))
    assert {p.shape[2] for p in pieces} == {1}
    torch.testing.assert_close(torch.cat(pieces, dim=2), ref, atol=1e-4, rtol=0)
