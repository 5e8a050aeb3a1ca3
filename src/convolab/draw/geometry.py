"""What a picture of a convolution shows, computed without drawing anything.

The picture follows Dumoulin & Visin's guide.  A *canvas* is the grid the kernel
slides over:

* conv: the zero-padded input (``pad_lo + S + pad_hi`` cells); the window of output
  ``o`` starts at canvas cell ``o*stride``.
* conv_transpose: the equivalent direct convolution.  ``stride-1`` zeros are
  inserted between input cells, ``dilation*(k-1) - pad_lo`` cells of padding go on the
  low side and ``dilation*(k-1) - pad_hi + output_padding`` on the high side (negative
  amounts crop), and a stride-1 convolution with the *flipped* kernel runs over it.

Every axis is independent, so a 2-D picture is the product of two :class:`Axis`.
The output sizes come from :class:`convolab.spec.ConvSpec` (the one formula).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..spec import ConvSpec

INPUT, PAD, ZERO = "input", "pad", "zero"  # canvas cell kinds; ZERO = inserted (transposed)


@dataclass(frozen=True)
class Axis:
    """One spatial dimension: sizes, parameters and the canvas cells along it."""

    n: int  # input size
    out: int  # output size (from ConvSpec)
    k: int
    s: int
    d: int
    lo: int
    hi: int
    op: int
    transposed: bool
    kinds: tuple[str, ...] = field(repr=False)  # per canvas cell
    index: tuple[int, ...] = field(repr=False)  # input index per canvas cell, -1 if none
    cropped: int = 0  # input cells of a transposed conv that fall off the canvas

    @property
    def length(self) -> int:
        return len(self.kinds)

    @property
    def window_stride(self) -> int:
        return 1 if self.transposed else self.s

    def window(self, o: int) -> list[int]:
        """Canvas cells read by output ``o``, in kernel-slot order ``0..k-1``."""
        return [o * self.window_stride + t * self.d for t in range(self.k)]

    def weight_tap(self, slot: int) -> int:
        """The weight index that kernel slot ``slot`` multiplies (flipped when transposed)."""
        return self.k - 1 - slot if self.transposed else slot

    def canvas_of(self, i: int) -> int | None:
        """Canvas cell of input ``i`` (None if cropped away)."""
        try:
            return self.index.index(i)
        except ValueError:
            return None

    def pairs(self) -> list[tuple[int, int, int, int]]:
        """Every ``(input i, weight tap t, output o, canvas cell c)`` that is a product term."""
        res = []
        for o in range(self.out):
            for slot, c in enumerate(self.window(o)):
                if self.kinds[c] == INPUT:
                    res.append((self.index[c], self.weight_tap(slot), o, c))
        return res


def make_axis(n: int, out: int, k: int, s: int, d: int, lo: int, hi: int, op: int,
              transposed: bool) -> Axis:
    if not transposed:
        kinds = [PAD] * lo + [INPUT] * n + [PAD] * hi
        index = [-1] * lo + list(range(n)) + [-1] * hi
        return Axis(n, out, k, s, d, lo, hi, op, False, tuple(kinds), tuple(index))
    low = d * (k - 1) - lo  # may be negative: crop
    length = out + d * (k - 1)
    span = (n - 1) * s + 1
    kinds, index = [], []
    for c in range(length):
        z = c - low
        if 0 <= z < span and z % s == 0:
            kinds.append(INPUT)
            index.append(z // s)
        elif 0 <= z < span:
            kinds.append(ZERO)
            index.append(-1)
        else:
            kinds.append(PAD)
            index.append(-1)
    cropped = n - sum(1 for kd in kinds if kd == INPUT)
    return Axis(n, out, k, s, d, lo, hi, op, True, tuple(kinds), tuple(index), cropped)


def axes_of(spec: ConvSpec, input_size: tuple[int, ...]) -> tuple[Axis, ...]:
    out = spec.out_shape(input_size)
    op = spec.output_padding or (0,) * spec.rank
    return tuple(
        make_axis(n, o, k, s, d, lo, hi, p, spec.transposed)
        for n, o, k, s, d, (lo, hi), p in zip(
            input_size, out, spec.kernel_size, spec.stride, spec.dilation, spec.padding, op)
    )


@dataclass
class Frame:
    """One picture: the kernel's canvas cells (with the weight tap each multiplies),
    the output cell being written, and which output cells are already done.

    ``cells``: list of ``(canvas_cell, weight_tap)`` (multi-indices); ``mark``: canvas
    cells that get an extra marker (the chosen input cell in ``--backward input``).
    """

    output: tuple[int, ...] | None
    cells: list[tuple[tuple[int, ...], tuple[int, ...]]]
    done: list[tuple[int, ...]]
    caption: str = ""
    mark: list[tuple[int, ...]] = field(default_factory=list)
    weight_mark: tuple[int, ...] | None = None


def forward_frames(axes: tuple[Axis, ...]) -> list[Frame]:
    """One frame per output cell, row-major (as the guide)."""
    frames = []
    outs = list(itertools.product(*(range(a.out) for a in axes)))
    for n_done, o in enumerate(outs):
        slots = itertools.product(*(range(a.k) for a in axes))
        cells = [
            (tuple(a.window(oi)[si] for a, oi, si in zip(axes, o, sl)),
             tuple(a.weight_tap(si) for a, si in zip(axes, sl)))
            for sl in slots
        ]
        frames.append(Frame(o, cells, outs[:n_done]))
    return frames


def input_grad_frames(axes: tuple[Axis, ...], i: tuple[int, ...]) -> list[Frame]:
    """One frame per output cell whose window reads input ``i``: ``gx[i] += gy[o]*w[t]``."""
    per_dim = []
    for a, ii in zip(axes, i):
        per_dim.append([(t, o, c) for (j, t, o, c) in a.pairs() if j == ii])
    canvas_i = tuple(a.canvas_of(ii) for a, ii in zip(axes, i))
    frames, done = [], []
    for combo in itertools.product(*per_dim):
        t = tuple(x[0] for x in combo)
        o = tuple(x[1] for x in combo)
        c = tuple(x[2] for x in combo)
        frames.append(Frame(o, [(c, t)], list(done), mark=[canvas_i], weight_mark=t))
        done.append(o)
    return frames


def weight_grad_frames(axes: tuple[Axis, ...], t: tuple[int, ...]) -> list[Frame]:
    """One frame per output cell ``o``: ``gw[t] += x_canvas[cell(o, t)] * gy[o]``."""
    slot = tuple(a.weight_tap(ti) for a, ti in zip(axes, t))  # weight_tap is an involution
    outs = list(itertools.product(*(range(a.out) for a in axes)))
    frames = []
    for n_done, o in enumerate(outs):
        c = tuple(a.window(oi)[si] for a, oi, si in zip(axes, o, slot))
        frames.append(Frame(o, [(c, t)], outs[:n_done], weight_mark=t))
    return frames
