"""Columns of a stride-1 convolution taken straight from the unpadded planes.

When every dimension but the first keeps its size (``O[1:] == S[1:]``: stride 1 and
``lo + hi = d*(k-1)`` there, the usual "same" padding), the input and the output share
one flat grid: output ``l`` (flat, row-major) reads input ``l + off_t`` through tap
``t``, ``off_t = sum((t_i*d_i - lo_i) * prod(S[i+1:]))``.  So each tap's column row is
one contiguous run of the *unpadded* input, with no padded copy to make and no
positions to drop afterwards: the product lands in the output as it is laid out.  Two
things are fixed up: reads past either end of the plane are zeros, and reads that
wrapped around a row (a shift in a later dimension carried into the next row) are
zeroed, one strided assignment per kernel index with a shift.

The same geometry read backwards (``sign=-1``: ``G[t, i] = gy[i - off_t]``) gives the
columns of the output gradient on the input's grid, from which the fused backward
takes both gradients.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..spec import ConvSpec


def applicable(spec: ConvSpec, S, O) -> bool:
    """Stride 1, non-negative padding, and every dimension after the first keeps its size."""
    return (all(s == 1 for s in spec.stride)
            and all(lo >= 0 and hi >= 0 for lo, hi in spec.padding)
            and tuple(O[1:]) == tuple(S[1:]) and all(o > 0 for o in O))


class Grid:
    """Tap offsets and shifts on the flat grid of ``S`` (rows: the first dimension)."""

    def __init__(self, spec: ConvSpec, S, sign: int = 1) -> None:
        r = len(S)
        self.S = tuple(S)
        self.k = tuple(spec.kernel_size)
        self.xs = [math.prod(S[i + 1:]) for i in range(r)]
        self.row = self.xs[0]
        # per dimension, per kernel index: the shift of the read (sign: forwards or back)
        self.shift = [[sign * (t * d - lo) for t in range(k)]
                      for k, d, (lo, _) in zip(self.k, spec.dilation, spec.padding)]
        self.step = [sign * d * x for d, x in zip(spec.dilation, self.xs)]  # per kernel index
        self.first = sum(s[0] * x for s, x in zip(self.shift, self.xs))  # offset of tap 0
        self.offs = [self.first + sum(t * st for t, st in zip(tap, self.step))
                     for tap in np.ndindex(*self.k)]

    def scratch_size(self, n: int, c: int, nrows: int) -> int:
        """Elements :meth:`tile_columns` needs for ``n x c`` planes and ``nrows`` rows:
        the columns and the run with its margins."""
        L = nrows * self.row
        return n * c * ((len(self.offs) + 1) * L + sum(self.margins()))

    def tile_columns(self, src: np.ndarray, length: int, rows: slice,
                     buf: np.ndarray) -> np.ndarray:
        """:meth:`columns` of the rows ``rows`` in the front of ``buf`` (the rest of it is
        the scratch), as ``(n, c, kk, rows*row)``."""
        n, c = src.shape[:2]
        nr = rows.stop - rows.start
        cols = buf[: n * c * len(self.offs) * nr * self.row].reshape(
            n, c, len(self.offs), nr * self.row)
        return self.columns(src, length, rows.start, nr, cols, buf[cols.size:])

    def margins(self) -> tuple[int, int]:
        """Elements read before the first and after the last position of a run."""
        return max(0, -min(self.offs)), max(0, max(self.offs))

    def columns(self, src: np.ndarray, length: int, row0: int, nrows: int,
                out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """``out[:, :, j, l] = src[:, :, row0*row + l + off_j]`` for ``l < nrows*row``
        (zero outside ``[0, length)`` and where the read wrapped around a row).

        ``src``: ``(n, c, F)`` (F >= length); ``out``: ``(n, c, kk, nrows*row)``;
        ``scratch``: at least ``n*c*(nrows*row + sum(margins()))`` elements, where the
        run and its margins are copied first (zeros outside ``[0, length)``), so that one
        strided copy takes every tap's run."""
        L = nrows * self.row
        if not out.flags.c_contiguous or out.shape[2:] != (len(self.offs), L):
            raise ValueError(f"out must be C-contiguous (n, c, {len(self.offs)}, {L})")
        base = row0 * self.row
        before, after = self.margins()
        n, c = src.shape[:2]
        span = before + L + after
        buf = scratch[: n * c * span].reshape(n, c, span)
        a, b = base - before, base + L + after  # the source range the taps read
        lo, hi = max(a, 0), min(b, length)
        if lo > a:
            buf[..., :lo - a] = 0
        if hi < b:
            buf[..., max(0, hi - a):] = 0
        if hi > lo:
            buf[..., lo - a:hi - a] = src[..., lo:hi]
        item = buf.strides[-1]
        view = as_strided(buf[..., before + self.first:], (n, c) + self.k + (L,),
                          buf.strides[:2] + tuple(s * item for s in self.step) + (item,),
                          writeable=False)
        np.copyto(out.reshape(view.shape), view)  # a view: out is contiguous
        self._zero_wrapped(out, nrows)
        return out

    def _zero_wrapped(self, out: np.ndarray, nrows: int) -> None:
        r = len(self.S)
        if r < 2:
            return
        v = out.reshape(out.shape[:2] + self.k + (nrows,) + self.S[1:])
        lead = (slice(None),) * 2
        for i in range(1, r):
            for t, s in enumerate(self.shift[i]):
                if s == 0:
                    continue
                bad = slice(0, min(-s, self.S[i])) if s < 0 else slice(max(0, self.S[i] - s), None)
                kern = tuple(t if a == i else slice(None) for a in range(r))
                spatial = (slice(None),) * i + (bad,)  # rows, then dims 1..i
                v[lead + kern + spatial] = 0
