"""Streaming decode: a student decodes a clip chunk by chunk of latent frames with per-layer temporal state,
and the frames it returns equal the one-pass decode's.

A decoder is rebuilt as a pipeline of ``Stream`` stages, each with ``push(x, last) -> frames or None`` on
video tensors (B, C, T, H, W) that arrive in order along T:
  * ``Frames(fn)``: a per-frame function (norms, activations, 1x1 convs, pixel shuffles, 2D convs);
  * ``TemporalConv(fn, front, back)``: a conv with ``k = front + back + 1`` temporal taps and "same" output,
    ``fn`` being the conv on input already padded in time. It keeps the last ``k - 1`` input frames between
    pushes and pads the clip's two ends as the one-pass conv does (replicate or zeros), so a non-causal conv
    answers ``back`` frames late and a causal one (``back = 0``) at once: a per-layer cache with lookahead;
  * ``Residual(main, skip)``: ``main(x) + skip(x)``, the skip frames waiting in a queue for the delayed main path;
  * ``Trim(n)``: drops the first ``n`` frames of the stream (causal temporal upsamplers);
  * ``Chain(stages)``: runs the stages in order, cutting what a stage returns into pieces of at most
    ``MAX_FRAMES`` frames for the stages after it.
Memory is that of one piece per stage plus ``k - 1`` frames per temporal conv: bounded in the clip length,
whatever the receptive field (20 latent frames for the LTX student: a halo of recomputed frames would be the
whole clip). The cut matters at the clip's end, where every conv hands over the frames it held back, so the
last stages would otherwise see a receptive field's worth of frames at once. A non-causal student answers
once the chunks fed have passed its receptive field; a causal one at once.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Tensor = torch.Tensor
MAX_FRAMES = 16  # frames of one piece between the stages of a Chain


class Stream:
    def push(self, x: Tensor | None, last: bool) -> Tensor | None:
        """Feed the next frames ``x`` (None: none); ``last``: the clip ends here. Returns the frames now ready."""
        raise NotImplementedError


class Frames(Stream):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def push(self, x, last):
        return None if x is None else self.fn(x)


class TemporalConv(Stream):
    def __init__(self, fn: Callable[[Tensor], Tensor], front: int, back: int, zeros: bool = False):
        self.fn, self.front, self.back, self.zeros = fn, front, back, zeros
        self.buffer: Tensor | None = None
        self.started = False

    def _pad(self, frame: Tensor, n: int) -> list[Tensor]:
        return [torch.zeros_like(frame) if self.zeros else frame] * n

    def push(self, x, last):
        if x is not None:
            if not self.started:
                x = torch.cat(self._pad(x[:, :, :1], self.front) + [x], dim=2) if self.front else x
                self.started = True
            self.buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=2)
        if last and self.back and self.buffer is not None:
            self.buffer = torch.cat([self.buffer] + self._pad(self.buffer[:, :, -1:], self.back), dim=2)
        k1 = self.front + self.back
        if self.buffer is None or self.buffer.shape[2] <= k1:
            if last and self.buffer is not None:
                raise RuntimeError("a temporal conv ended its stream with frames it could not convolve (internal)")
            return None
        out = self.fn(self.buffer)
        self.buffer = self.buffer[:, :, self.buffer.shape[2] - k1:] if k1 and not last else None
        return out


class Residual(Stream):
    def __init__(self, main: Stream, skip: Callable[[Tensor], Tensor] | None = None):
        self.main, self.skip = main, skip
        self.queue: list[Tensor] = []

    def push(self, x, last):
        if x is not None:
            self.queue.append(x if self.skip is None else self.skip(x))
        y = self.main.push(x, last)
        if y is None:
            return None
        n, parts = y.shape[2], []
        while n:
            head = self.queue[0]
            take = min(n, head.shape[2])
            parts.append(head[:, :, :take])
            if take == head.shape[2]:
                self.queue.pop(0)
            else:
                self.queue[0] = head[:, :, take:]
            n -= take
        skip = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return y.add_(skip) if not y.requires_grad else y + skip


class Trim(Stream):
    def __init__(self, n: int):
        self.left = n

    def push(self, x, last):
        if x is None or not self.left:
            return x
        drop = min(self.left, x.shape[2])
        self.left -= drop
        return x[:, :, drop:] if drop < x.shape[2] else None


class Chain(Stream):
    def __init__(self, stages: Sequence[Stream]):
        self.stages = [s for stage in stages for s in (stage.stages if isinstance(stage, Chain) else [stage])]

    def push(self, x, last):
        return self._run(0, x, last)

    def _run(self, i: int, x: Tensor | None, last: bool) -> Tensor | None:
        if i == len(self.stages):
            return x
        y = self.stages[i].push(x, last)
        if y is None:
            return self._run(i + 1, None, True) if last else None
        pieces = y.split(MAX_FRAMES, dim=2)
        outs = [self._run(i + 1, p, last and j == len(pieces) - 1) for j, p in enumerate(pieces)]
        outs = [o for o in outs if o is not None]
        return None if not outs else outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class StudentStream:
    """Decode state of one clip: ``push(latents, last)`` with consecutive chunks of latent frames (B, C, t, H', W')
    returns the video frames (B, 3, n, H, W) ready so far (n may be 0: None); ``last`` flushes the rest."""

    def __init__(self, stream: Stream, prepare: Callable[[Tensor], Tensor] = lambda x: x,
                 finish: Callable[[Tensor], Tensor] = lambda x: x):
        self.stream, self.prepare, self.finish = stream, prepare, finish
        self.done = False

    def push(self, latents: Tensor, last: bool) -> Tensor | None:
        if self.done:
            raise RuntimeError("this clip's stream has ended (last=True was pushed); start a new one")
        self.done = last
        out = self.stream.push(self.prepare(latents), last)
        return None if out is None else self.finish(out)
