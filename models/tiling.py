"""Tiled decoding: decode latents in overlapping spatial (and temporal) tiles so memory stays bounded.

``tiled_decode(decode_fn, latents, compression, tile_latent, overlap_latent, first_frame_alone)`` cuts latents
``(B, C, T', H', W')`` into a grid of overlapping tiles, decodes each with ``decode_fn`` and blends the
decoded tiles with linear ramps over the overlaps (weights normalised to sum to 1 everywhere). The
result has the shape of a full decode: ``(B, 3, T, H' * ch, W' * cw)`` with ``T = T' * ct``
(``first_frame_alone=False``) or ``T = 1 + (T' - 1) * ct`` (``first_frame_alone=True``).

* Tiles along a dimension start every ``tile - overlap`` latents; the last tile is moved back to end
  at the border, so every tile has the full tile size (its overlap with the previous one may grow).
* Spatially, latent ``[s, e)`` decodes to pixels ``[s * c, e * c)``.
* Temporally (only when a clip has more latent frames than the tile): latent frames (every frame in a group of ct)
  ``[s, e)`` decode to frames ``[s * ct, e * ct)``. For first-frame-alone decoders a tile starting at ``s > 0``
  treats latent ``s`` as its first (image) frame, so its first decoded frame is dropped (as diffusers'
  temporal tiling does) and the rest are frames ``[1 + s * ct, 1 + (e - 1) * ct)``: latent ``s`` acts
  as context only, so ``overlap_latent[0] >= 2`` is needed for a blend.
* A decoder that acts pointwise on the latent grid (e.g. a 1x1 conv + nearest upsampling) gives
  exactly the full decode (up to float rounding); decoders with receptive fields or global
  normalisation give a close approximation whose error falls as the overlap grows.

The output and one tile's output are the only full-precision buffers; the weight normaliser is the
outer product of three 1-D sums (the tile grid is separable), so no full-size weight tensor is kept.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = ["tiled_decode", "tile_spans", "needs_tiling", "default_tiles"]


def tile_spans(size: int, tile: int | None, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` latent tiles covering ``[0, size)``; one tile when ``tile`` is None or
    covers everything."""
    if size < 1:
        raise ValueError(f"cannot tile an empty dimension (size {size})")
    if tile is None or tile >= size:
        return [(0, size)]
    tile = int(tile)
    overlap = int(overlap)
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    stride = tile - overlap
    spans = []
    start = 0
    while True:
        if start + tile >= size:
            spans.append((max(0, size - tile), size))
            break
        spans.append((start, start + tile))
        start += stride
    return spans


def _out_span(span: tuple[int, int], factor: int, first_frame_alone: bool, first: bool) -> tuple[int, int, int]:
    """(out_start, out_end, frames_to_drop) of a latent span along time; ``factor`` = ct."""
    s, e = span
    if not first_frame_alone:
        return s * factor, e * factor, 0
    if first:  # s == 0: latent 0 -> frame 0, then ct frames per latent
        return 0, 1 + (e - 1) * factor, 0
    return 1 + s * factor, 1 + (e - 1) * factor, 1


def _ramp_weights(spans_out: list[tuple[int, int]], index: int, dtype, device) -> torch.Tensor:
    """1-D blend weights of tile ``index`` over its output span: linear ramps over the overlaps with
    its neighbours, 1 elsewhere. Ramps are strictly positive, so the normaliser never vanishes."""
    s, e = spans_out[index]
    n = e - s
    w = torch.ones(n, dtype=torch.float64)
    if index > 0:
        ov = min(spans_out[index - 1][1] - s, n)
        if ov > 0:
            w[:ov] *= (torch.arange(ov, dtype=torch.float64) + 0.5) / ov
    if index + 1 < len(spans_out):
        ov = min(e - spans_out[index + 1][0], n)
        if ov > 0:
            w[n - ov:] *= (ov - 0.5 - torch.arange(ov, dtype=torch.float64)) / ov
    return w.to(dtype=dtype, device=device)


def _norm_1d(spans_out: list[tuple[int, int]], total: int) -> torch.Tensor:
    acc = torch.zeros(total, dtype=torch.float64)
    for i, (s, e) in enumerate(spans_out):
        acc[s:e] += _ramp_weights(spans_out, i, torch.float64, "cpu")
    if (acc <= 0).any():
        raise RuntimeError("tiles do not cover the output (internal error)")
    return acc


def needs_tiling(latent_shape: Sequence[int], compression: Sequence[int], max_pixels: int = 256 * 256,
                 max_frames: int | None = None) -> bool:
    """Whether a decode of ``latent_shape`` exceeds ``max_pixels`` per frame (or ``max_frames`` frames)."""
    _, _, t, h, w = latent_shape
    ct, ch, cw = compression
    if h * ch * w * cw > max_pixels:
        return True
    return max_frames is not None and t * ct > max_frames


def default_tiles(compression: Sequence[int], tile_pixels: int = 256, overlap_pixels: int = 64,
                  tile_frames: int | None = None, overlap_frames: int | None = None
                  ) -> tuple[tuple[int | None, int, int], tuple[int, int, int]]:
    """``(tile_latent, overlap_latent)`` for tiles of about ``tile_pixels`` output pixels square (and
    ``tile_frames`` output frames, None = no temporal tiling) in a latent space of ``compression``."""
    ct, ch, cw = compression
    th = max(1, tile_pixels // ch)
    tw = max(1, tile_pixels // cw)
    oh = min(th - 1, max(0, math.ceil(overlap_pixels / ch)))
    ow = min(tw - 1, max(0, math.ceil(overlap_pixels / cw)))
    if tile_frames is None:
        tt, ot = None, 0
    else:
        tt = max(2, math.ceil(tile_frames / ct))
        want = overlap_frames if overlap_frames is not None else max(ct, tile_frames // 4)
        ot = min(tt - 1, max(1, math.ceil(want / ct)))
    return (tt, th, tw), (ot, oh, ow)


@torch.no_grad()
def tiled_decode(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    compression: Sequence[int],
    tile_latent: Sequence[int | None] = (None, 32, 32),
    overlap_latent: Sequence[int] = (0, 8, 8),
    first_frame_alone: bool = False,
    out_device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Decode ``latents`` (B, C, T', H', W') tile by tile; returns what ``decode_fn(latents)`` would.

    ``tile_latent`` / ``overlap_latent``: (T, H, W) tile sizes and overlaps in latent units (a tile
    size of None = the whole dimension). ``first_frame_alone``: time follows ``1 + (T' - 1) * ct`` (``models.frames.FrameRule``).
    ``out_device``: where the blended output is kept (default: the latents' device), e.g. "cpu" to
    keep a GPU's memory for the decoder. ``progress(done, total)`` is called after each tile.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, T, H, W), got shape {tuple(latents.shape)}")
    ct, ch, cw = (int(c) for c in compression)
    b, _, t, h, w = latents.shape
    tt, th, tw = tile_latent
    ot, oh, ow = overlap_latent
    t_spans = tile_spans(t, tt, ot)
    h_spans = tile_spans(h, th, oh)
    w_spans = tile_spans(w, tw, ow)
    if len(t_spans) * len(h_spans) * len(w_spans) == 1:
        out = decode_fn(latents)
        return out if out_device is None else out.to(out_device)

    t_out = [_out_span(sp, ct, first_frame_alone, i == 0) for i, sp in enumerate(t_spans)]
    h_out = [(s * ch, e * ch) for s, e in h_spans]
    w_out = [(s * cw, e * cw) for s, e in w_spans]
    T = t_out[-1][1]
    H, W = h * ch, w * cw
    t_rng = [(s, e) for s, e, _ in t_out]
    norm_t, norm_h, norm_w = _norm_1d(t_rng, T), _norm_1d(h_out, H), _norm_1d(w_out, W)

    dev = torch.device(out_device) if out_device is not None else latents.device
    out = None
    total = len(t_spans) * len(h_spans) * len(w_spans)
    done = 0
    for i, (ts, te) in enumerate(t_spans):
        os_, oe, drop = t_out[i]
        for j, (hs, he) in enumerate(h_spans):
            for k, (ws, we) in enumerate(w_spans):
                tile = decode_fn(latents[:, :, ts:te, hs:he, ws:we])
                tile = tile[:, :, drop:]
                want = (oe - os_, (he - hs) * ch, (we - ws) * cw)
                if tuple(tile.shape[2:]) != want:
                    raise ValueError(
                        f"decoded tile of latents {(te - ts, he - hs, we - ws)} has (T, H, W) {tuple(tile.shape[2:])} "
                        f"after dropping {drop} frame(s), expected {want} for compression {tuple(compression)} "
                        f"(first_frame_alone={first_frame_alone}); check the compression and first_frame_alone arguments")
                if out is None:
                    out = torch.zeros((b, tile.shape[1], T, H, W), dtype=tile.dtype, device=dev)
                tile = tile.to(dev)
                wt = _ramp_weights(t_rng, i, tile.dtype, dev).view(1, 1, -1, 1, 1)
                wh = _ramp_weights(h_out, j, tile.dtype, dev).view(1, 1, 1, -1, 1)
                ww = _ramp_weights(w_out, k, tile.dtype, dev).view(1, 1, 1, 1, -1)
                out[:, :, os_:oe, hs * ch:he * ch, ws * cw:we * cw] += tile * (wt * wh * ww)
                del tile
                done += 1
                if progress is not None:
                    progress(done, total)
    plane = (norm_h.view(-1, 1) * norm_w.view(1, -1)).to(dtype=out.dtype, device=dev)
    for f in range(T):  # frame by frame: no full-size temporary
        out[:, :, f] /= plane * float(norm_t[f])
    return out
