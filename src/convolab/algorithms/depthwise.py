"""Depthwise convolution (``groups == in_channels``): shift, multiply, accumulate.

Shapes: x ``(N, C, *S)``, w ``(C*m, 1, *k)`` (``m`` = channel multiplier),
y ``(N, C*m, *O)``.  Per kernel offset ``t``::

    y[n, c, j, o] += w[c, j, t] * xpad[n, c, o*s + t*d]

As per-group GEMMs this would be ``C`` matrix products of one row each (about
1 GFLOP/s); as one pass per tap over the whole tensor it is bound by ``prod(k)``
sweeps through memory.  Here the taps loop over cache-sized tiles (batch chunks,
or rows), and tiles run on a small thread pool, so each tile's ``prod(k)`` passes
hit the L2 cache and both cores work.
"""

from __future__ import annotations

import numpy as np

from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec
from ._threads import parallel_map
from ._tiles import input_rows, tiles
from .direct import kernel_offsets, tap_slices

_TILE_BYTES = 2**20  # a tile's input + output + temporary fit a Zen3 core's 512 KB L2 ~twice


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Only depthwise: one input channel per group."""
    C = x_shape[1] if role != "input_grad" else w_shape[1] * spec.groups
    return spec.groups > 1 and spec.groups == C and w_shape[1] == 1


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """No GEMM; ``prod(k)`` multiply-add passes over cache-resident tiles on 2 threads."""
    kk = int(np.prod(spec.kernel_size))
    moved = p["N"] * p["K"] * int(np.prod(p["O"])) * itemsize * kk * 3
    return 0.0, moved / 4  # /2 for L2-resident tiles, /2 for the two threads


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """The padded input (or gradient) plus one temporary per tile and thread."""
    N, C = p["N"], p["C"]
    item = np.dtype(dtype).itemsize
    return N * C * int(np.prod(spec.padded_shape(p["S"]))) * item + 2 * _TILE_BYTES


def _wtaps(w: np.ndarray, C: int, r: int) -> np.ndarray:
    """(C*m, 1, *k) -> (C, m, *k)."""
    return w.reshape((C, w.shape[0] // C) + w.shape[2:])


def _bcast(wt: np.ndarray, r: int) -> np.ndarray:
    """(C, m) -> (1, C, m, 1, ...) to broadcast over (n, C, m, *O)."""
    return wt.reshape((1,) + wt.shape + (1,) * r)


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    N, C = x.shape[:2]
    r = spec.rank
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    wc = _wtaps(w, C, r)
    m = wc.shape[1]
    dtype = np.result_type(x, w)
    y = np.empty((N, C, m) + O, dtype=dtype)
    xp = pad_spatial(x, spec.padding)
    taps = list(kernel_offsets(spec))
    plan, _ = tiles(N, O, C * (2 * m + 1) * dtype.itemsize, cache=_TILE_BYTES)

    def run(tile):
        bs, rows = tile
        Ot = (rows.stop - rows.start,) + O[1:]
        xt = xp[bs, :, input_rows(rows, spec)][:, :, None]
        acc = y[bs, :, :, rows]
        tmp = np.empty_like(acc)
        for i, t in enumerate(taps):
            xs = xt[(slice(None),) * 3 + tap_slices(t, spec, Ot)]
            wb = _bcast(wc[(slice(None), slice(None)) + t], r)
            if i == 0:
                np.multiply(xs, wb, out=acc)
            else:
                np.multiply(xs, wb, out=tmp)
                acc += tmp

    parallel_map(run, plan)
    return y.reshape((N, C * m) + O)


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    N = gy.shape[0]
    C = spec.groups
    r = spec.rank
    O = tuple(gy.shape[2:])
    wc = _wtaps(w, C, r)
    m = wc.shape[1]
    dtype = np.result_type(gy, w)
    gyv = gy.reshape((N, C, m) + O)
    in_spatial = tuple(in_spatial)
    padded = spec.padded_shape(in_spatial)
    need = tuple(d * (k - 1) + s * (o - 1) + 1 for k, d, s, o in
                 zip(spec.kernel_size, spec.dilation, spec.stride, O))
    buf_shape = tuple(max(p, n) for p, n in zip(padded, need))
    gxp = np.zeros((N, C) + buf_shape, dtype=dtype)
    taps = list(kernel_offsets(spec))
    plan, _ = tiles(N, O, C * (2 * m + 2) * dtype.itemsize, cache=_TILE_BYTES)

    def run(tile):
        bs, rows = tile
        Ot = (rows.stop - rows.start,) + O[1:]
        g = gyv[bs, :, :, rows]
        gt = gxp[bs, :, input_rows(rows, spec)]
        tmp = np.empty_like(g)
        for t in taps:
            np.multiply(g, _bcast(wc[(slice(None), slice(None)) + t], r), out=tmp)
            gt[(slice(None), slice(None)) + tap_slices(t, spec, Ot)] += (
                tmp[:, :, 0] if m == 1 else tmp.sum(axis=2)
            )

    if all(rows.start == 0 and rows.stop == O[0] for _, rows in plan):
        parallel_map(run, plan)
    else:  # row tiles of one sample overlap in the input: accumulate in order
        for tile in plan:
            run(tile)
    gxp = gxp[(Ellipsis,) + tuple(slice(0, p) for p in padded)]
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    N, C = x.shape[:2]
    r = spec.rank
    O = tuple(gy.shape[2:])
    K = gy.shape[1]
    m = K // C
    dtype = np.result_type(x, gy)
    gyv = gy.reshape((N, C, m) + O)
    xp = pad_spatial(x, spec.padding)
    taps = list(kernel_offsets(spec))
    plan, _ = tiles(N, O, C * (2 * m + 1) * dtype.itemsize, cache=_TILE_BYTES)
    sum_axes = (0,) + tuple(range(3, 3 + r))

    def run(tile):
        bs, rows = tile
        Ot = (rows.stop - rows.start,) + O[1:]
        xt = xp[bs, :, input_rows(rows, spec)][:, :, None]
        g = gyv[bs, :, :, rows]
        tmp = np.empty_like(g)
        part = np.empty((C, m, len(taps)), dtype=dtype)
        for i, t in enumerate(taps):
            np.multiply(xt[(slice(None),) * 3 + tap_slices(t, spec, Ot)], g, out=tmp)
            part[:, :, i] = tmp.sum(axis=sum_axes)
        return part

    gw = sum(parallel_map(run, plan))
    return gw.reshape((C * m, 1) + tuple(spec.kernel_size))
