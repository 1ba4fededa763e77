"""Streaming decode: a student decodes a clip chunk by chunk of latent frames with per-layer temporal state,
and the frames it returns equal the one-pass decode's.

A decoder is rebuilt as a pipeline of ``Stream`` stages, each with ``pieces(x, last)`` yielding the frames
ready after it is fed ``x`` (``push``: the same in one tensor), on video tensors (B, C, T, H, W) that arrive
in order along T:
  * ``Frames(fn)``: a per-frame function (norms, activations, 1x1 convs, pixel shuffles, 2D convs);
  * ``TemporalConv(fn, front, back)``: a conv with ``k = front + back + 1`` temporal taps and "same" output,
    ``fn`` being the conv on input already padded in time. It keeps the last ``k - 1`` input frames between
    pushes and pads the clip's two ends as the one-pass conv does (replicate or zeros), so a non-causal conv
    answers ``back`` frames late and a causal one (``back = 0``) at once: a per-layer cache with lookahead;
  * ``Residual(main, skip)``: ``main(x) + skip(x)``, the skip frames waiting in a queue for the delayed main path;
  * ``Trim(n)``: drops the first ``n`` frames of the stream (causal temporal upsamplers);
  * ``Chain(stages)``: runs the stages in order, cutting what a stage yields into pieces of at most
    ``MAX_FRAMES`` frames and ``PIECE_BYTES`` bytes, each taken through the stages after it (and yielded) before
    the next is made.
A stage holds no reference to a piece it has handed on (hence the ``out.pop()`` before each ``yield``: a
suspended generator would otherwise keep its input and output alive while the stages after it run). Memory is
that of the pieces in flight plus ``k - 1`` frames per temporal conv (copies, never views that would keep a
whole piece alive): bounded in the clip length, whatever the receptive field (20 latent frames for the
LTX student: a halo of recomputed frames would be the whole clip). Pieces matter at the clip's end, where
every conv hands over the frames it held back: a non-causal student whose receptive field spans the clip
answers only then, with every frame of the video, which come out piece by piece instead of all at once. A
non-causal student answers once the chunks fed have passed its receptive field; a causal one at once.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

Tensor = torch.Tensor
MAX_FRAMES = 16  # frames of one piece between the stages of a Chain
PIECE_BYTES = 4 * 2**20  # and bytes (at least one frame): bounds the pieces in flight at high resolution


def _own(x: Tensor) -> Tensor:
    """``x``, or a copy of it when it is a view into a larger tensor: what a stage keeps between pushes must not
    keep alive the whole piece (or padded conv input) it was sliced from."""
    return x if x.untyped_storage().nbytes() <= x.nbytes else x.clone()


def piece_frames(y: Tensor) -> int:
    """Frames per piece of ``y`` (B, C, T, H, W): at most ``MAX_FRAMES`` and ``PIECE_BYTES``, at least one."""
    per_frame = y[:, :, :1].numel() * y.element_size()
    return max(1, min(MAX_FRAMES, PIECE_BYTES // max(1, per_frame)))


class Stream:
    def pieces(self, x: Tensor | None, last: bool) -> Iterator[Tensor]:
        """Feed the next frames ``x`` (None: none); ``last``: the clip ends here. Yields the frames now ready,
        in order, a piece at a time (the stage's state is up to date once the iterator is exhausted)."""
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of memory the stage holds between pushes (whole storages: a kept view counts its base)."""
        return 0

    def push(self, x: Tensor | None, last: bool) -> Tensor | None:
        """``pieces`` in one tensor (None: no frame ready)."""
        out = list(self.pieces(x, last))
        return None if not out else out[0] if len(out) == 1 else torch.cat(out, dim=2)


class Frames(Stream):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def pieces(self, x, last):
        if x is not None:
            out = [self.fn(x)]
            del x
            yield out.pop()


class TemporalConv(Stream):
    def __init__(self, fn: Callable[[Tensor], Tensor], front: int, back: int, zeros: bool = False):
        self.fn, self.front, self.back, self.zeros = fn, front, back, zeros
        self.buffer: Tensor | None = None
        self.started = False

    def state_bytes(self):
        return 0 if self.buffer is None else self.buffer.untyped_storage().nbytes()

    def _pad(self, frame: Tensor, n: int) -> list[Tensor]:
        return [torch.zeros_like(frame) if self.zeros else frame] * n

    def pieces(self, x, last):
        if x is not None:
            if not self.started:
                x = torch.cat(self._pad(x[:, :, :1], self.front) + [x], dim=2) if self.front else x
                self.started = True
            self.buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=2)
            del x
        if last and self.back and self.buffer is not None:
            self.buffer = torch.cat([self.buffer] + self._pad(self.buffer[:, :, -1:], self.back), dim=2)
        k1 = self.front + self.back
        if self.buffer is None or self.buffer.shape[2] <= k1:
            if last and self.buffer is not None:
                raise RuntimeError("a temporal conv ended its stream with frames it could not convolve (internal)")
            if self.buffer is not None:
                self.buffer = _own(self.buffer)
            return
        out = [self.fn(self.buffer)]
        self.buffer = _own(self.buffer[:, :, self.buffer.shape[2] - k1:]) if k1 and not last else None
        yield out.pop()


class Residual(Stream):
    def __init__(self, main: Stream, skip: Callable[[Tensor], Tensor] | None = None):
        self.main, self.skip = main, skip
        self.queue: list[Tensor] = []

    def state_bytes(self):
        storages = {q.untyped_storage().data_ptr(): q.untyped_storage().nbytes() for q in self.queue}
        return sum(storages.values()) + self.main.state_bytes()

    def _take(self, n: int) -> Tensor:
        """The next ``n`` skip frames off the queue."""
        parts = []
        while n:
            head = self.queue[0]
            take = min(n, head.shape[2])
            parts.append(head[:, :, :take])
            if take == head.shape[2]:
                self.queue.pop(0)
            else:
                self.queue[0] = head[:, :, take:]
            n -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def pieces(self, x, last):
        if x is not None:
            self.queue.append(x if self.skip is None else self.skip(x))
        main_out = self.main.pieces(x, last)
        del x
        for y in main_out:
            skip = self._take(y.shape[2])
            out = [y.add_(skip) if not y.requires_grad else y + skip]
            del y, skip
            yield out.pop()
        self.queue = [_own(q) for q in self.queue]


class Trim(Stream):
    def __init__(self, n: int):
        self.left = n

    def pieces(self, x, last):
        if x is None:
            return
        drop = min(self.left, x.shape[2])
        self.left -= drop
        if drop < x.shape[2]:
            out = [x[:, :, drop:] if drop else x]
            del x
            yield out.pop()


class Chain(Stream):
    def __init__(self, stages: Sequence[Stream]):
        self.stages = [s for stage in stages for s in (stage.stages if isinstance(stage, Chain) else [stage])]

    def state_bytes(self):
        return sum(s.state_bytes() for s in self.stages)

    def pieces(self, x, last):
        return self._run(0, x, last)

    def _run(self, i: int, x: Tensor | None, last: bool) -> Iterator[Tensor]:
        """Stage ``i`` and the ones after it: each piece a stage yields goes on in pieces of ``piece_frames``
        frames, and is through the last stage before the stage makes its next; the clip's end follows them."""
        if i == len(self.stages):
            if x is not None:
                out = [x]
                del x
                yield out.pop()
            return
        stage_out = self.stages[i].pieces(x, last)
        del x  # references held here while later stages run would keep whole pieces alive
        pieces: list[Tensor] = []  # at the clip's end the newest one waits, to go on together with the end
        for y in stage_out:
            pieces.extend(y.split(piece_frames(y), dim=2))
            del y
            while len(pieces) > (1 if last else 0):
                yield from self._run(i + 1, pieces.pop(0), False)
        if last:
            yield from self._run(i + 1, pieces.pop() if pieces else None, True)


class StudentStream:
    """Decode state of one clip: ``pieces(latents, last)`` with consecutive chunks of latent frames (B, C, t, H', W')
    yields the video frames (B, 3, n, H, W) as they become ready (none, or several pieces of at most ``MAX_FRAMES``
    frames); ``push`` returns them in one tensor (None: none yet); ``last`` flushes the rest."""

    def __init__(self, stream: Stream, prepare: Callable[[Tensor], Tensor] = lambda x: x,
                 finish: Callable[[Tensor], Tensor] = lambda x: x):
        self.stream, self.prepare, self.finish = stream, prepare, finish
        self.done = False

    def pieces(self, latents: Tensor, last: bool) -> Iterator[Tensor]:
        if self.done:
            raise RuntimeError("this clip's stream has ended (last=True was pushed); start a new one")
        self.done = last
        for out in self.stream.pieces(self.prepare(latents), last):
            out = [self.finish(out)]  # a list popped by the yield: this frame keeps no piece it has handed on
            yield out.pop()

    def state_bytes(self) -> int:
        """Memory the decode keeps between chunks (every temporal conv's last frames, every residual's queue)."""
        return self.stream.state_bytes()

    def push(self, latents: Tensor, last: bool) -> Tensor | None:
        out = list(self.pieces(latents, last))
        return None if not out else out[0] if len(out) == 1 else torch.cat(out, dim=2)
