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

import math
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec
from ._finite import all_finite
from ._threads import parallel_map, workers
from ._tiles import grad_buffer_shape, input_rows, tiles
from .direct import kernel_offsets, tap_slices

_TILE_BYTES = 2**20  # a tile's input + output + temporary fit a Zen3 core's 512 KB L2 ~twice
_SPLIT_BYTES = 4 * _TILE_BYTES  # a sample's tile from which its channels go to all workers


# Fixed seconds per call beyond :func:`cost` (padding, tiles, the thread pool), for
# :func:`convolab.select.call_seconds`: tiny layers measured 60-310 us forward, 70-400
# input gradient, 190-310 weight gradient (one worker, medians).
CALL_SECONDS = {"forward": 100e-6, "input_grad": 150e-6, "weight_grad": 250e-6}


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Only depthwise: one input channel per group (and a non-empty batch), and its
    :func:`workspace` (the whole padded input) within the budget."""
    C = x_shape[1] if role != "input_grad" else w_shape[1] * spec.groups
    if not (spec.groups > 1 and spec.groups == C and w_shape[1] == 1 and x_shape[0] > 0):
        return False
    from .. import select  # select imports this module
    from ..options import get_options

    p = select.problem(role, spec, x_shape, w_shape)
    return workspace(role, spec, p, dtype) <= get_options().workspace_bytes


# The tap loop's estimate, per role: (ns per tap element, row elements, ns per padded
# input element, factor on one worker).  Each tap is a multiply and an add over the
# tile's run: at stride 1 the flat run of the padded grid (the ends of its rows
# included: on small 3-D planes 1.5-3x the outputs), strided the outputs, one inner loop
# per output row (an element costs ``1 + row elements / O[-1]`` of one); plus the
# padded copy.  On one worker (``workers=1``, or a small call) the forward and input
# gradient take 1.5x as long; the weight gradient's sums were no faster on two.
# Fitted (float32, two workers, medians; .dev/dwdata.py, dwfit.py) on 162 depthwise
# layers of ranks 1-3: rms log error 0.76-0.88 -> 0.35-0.40, and 0.85-1.00 -> 0.40-0.45
# on 70 others.  The old estimate, three passes of memory traffic per tap, was 1.5-6x
# over: GEMM was chosen where this loop ran 1.3-2.3x faster.  The forward's per-element
# costs are 1.15x the fit's (0.347 and 1.54 ns): at the fit, same-padded 3x3x3 layers on
# small volumes, where this estimate is still low and GEMM's high, tied and went to the
# loop where GEMM ran 1.5x faster (N4 C256 on 8^3: 11.8 against 7.5 ms); the forward's
# geomean choice loss on the three depthwise sets 2.6 / 5.8 / 3.3 -> 2.6 / 5.8 / 2.2 %.
TAP_COST = {
    "forward": (0.40, 33.0, 1.77, 1.52),
    "input_grad": (0.464, 26.0, 2.22, 1.49),
    "weight_grad": (0.408, 24.0, 1.55, 1.0),
}


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """No GEMM: ``prod(k)`` multiply-add passes over cache-resident tiles on the workers
    (see :data:`TAP_COST`)."""
    tap_ns, row, pad_ns, one = TAP_COST[role]
    N, C, K, O = p["N"], p["C"], p["K"], p["O"]
    padded = spec.padded_shape(p["S"])
    if _stride1(spec) and (role == "forward" or _fits(spec, O, p["S"])):
        run = _flat_len(padded, O)
    else:
        run = math.prod(O) * (1 + row / max(1, O[-1]))
    ns = tap_ns * N * K * math.prod(spec.kernel_size) * run + pad_ns * N * C * math.prod(padded)
    if workers() == 1:
        ns *= one
    # the cost model charges bytes at 8 GB/s: 1 ns is 8 bytes (of float32 data)
    return 0.0, 8 * ns * itemsize / 4


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """The padded input (or gradient) plus one temporary per tile and thread."""
    N, C = p["N"], p["C"]
    item = np.dtype(dtype).itemsize
    return N * C * math.prod(spec.padded_shape(p["S"])) * item + 2 * _TILE_BYTES


def _wtaps(w: np.ndarray, C: int, r: int) -> np.ndarray:
    """(C*m, 1, *k) -> (C, m, *k)."""
    return w.reshape((C, w.shape[0] // C) + w.shape[2:])


def _bcast(wt: np.ndarray, r: int) -> np.ndarray:
    """(C, m) -> (1, C, m, 1, ...) to broadcast over (n, C, m, *O)."""
    return wt.reshape((1,) + wt.shape + (1,) * r)


def _flat_taps(spec: ConvSpec, plane) -> list[int]:
    """Offsets of the kernel taps in a flattened padded plane (stride 1)."""
    pst = [math.prod(plane[i + 1:]) for i in range(len(plane))]
    return [sum(ti * d * p for ti, d, p in zip(t, spec.dilation, pst))
            for t in kernel_offsets(spec)]


def _flat_grid(a_flat: np.ndarray, plane, O) -> np.ndarray:
    """View of the ``O`` output positions inside a flat ``(..., Lf)`` array laid out on
    the padded plane's grid (the other positions are the ends of rows: garbage)."""
    item = a_flat.strides[-1]
    pst = [math.prod(plane[i + 1:]) * item for i in range(len(plane))]
    return as_strided(a_flat, a_flat.shape[:-1] + tuple(O), a_flat.strides[:-1] + tuple(pst),
                      writeable=a_flat.flags.writeable)


def _flat_len(plane, O) -> int:
    return sum((o - 1) * math.prod(plane[i + 1:]) for i, o in enumerate(O)) + 1


def _stride1(spec: ConvSpec) -> bool:
    # Stride 1: every tap reads one contiguous run of the flattened plane, so the
    # ufunc loops run over ~H*W elements instead of rows of W (measured ~3x faster).
    return all(s == 1 for s in spec.stride)


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    if _stride1(spec):
        return _forward_flat(x, w, spec, out_spatial)
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


def _forward_flat(x, w, spec, out_spatial):
    N, C = x.shape[:2]
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    wc = _wtaps(w, C, spec.rank).reshape(C, -1, math.prod(spec.kernel_size))
    m = wc.shape[1]
    dtype = np.result_type(x, w)
    xp = np.ascontiguousarray(pad_spatial(x, spec.padding))
    plane = xp.shape[2:]
    xf = xp.reshape(N, C, 1, -1)
    Lf = _flat_len(plane, O)
    offs = _flat_taps(spec, plane)
    y = np.empty((N, C, m) + O, dtype=dtype)

    def run(tile):
        bs, cs = tile
        xt = xf[bs, cs]
        acc = np.empty(xt.shape[:2] + (m, Lf), dtype=dtype)
        tmp = np.empty_like(acc)
        for j, off in enumerate(offs):
            wb = wc[None, cs, :, j, None]
            if j == 0:
                np.multiply(xt[..., off:off + Lf], wb, out=acc)
            else:
                np.multiply(xt[..., off:off + Lf], wb, out=tmp)
                acc += tmp
        y[bs, cs] = _flat_grid(acc, plane, O)

    parallel_map(run, _flat_tiles(N, C, (m + 1) * Lf * dtype.itemsize))
    return y.reshape((N, C * m) + O)


def _flat_tiles(N: int, C: int, per_channel: int) -> list[tuple[slice, slice]]:
    """(batch, channel) tiles of the flat tap loops (``per_channel``: a tile's bytes per
    sample and channel): whole samples, as many as fit :data:`_TILE_BYTES` (at least
    one); where that leaves fewer tiles than workers and a sample is large (at least
    :data:`_SPLIT_BYTES`), each sample's channels are split among them, so that a lone
    sample does not run on one core (interleaved medians, forward / input gradient /
    weight gradient, ms: one C128 3x3x3 sample on 24^3 42.0 / 48.9 / 25.8 -> 22.5 /
    25.3 / 15.9, C64 3x3 on 112x112 4.1 / 3.6 / 3.6 -> 3.4 / 2.7 / 3.0; smaller samples
    lost, C32 on 16^3 2.3 / 2.0 / 2.2 -> 3.0 / 2.7 / 4.0).  Smaller tiles, cut by
    channels to fit the cache, measured slower (C256 3x3 on 28x28, 16 samples: 16.6 ->
    23.0 ms forward)."""
    step = max(1, _TILE_BYTES // max(1, C * per_channel))
    if -(-N // step) >= workers() or C == 1 or C * per_channel < _SPLIT_BYTES:
        return [(slice(i, min(N, i + step)), slice(0, C)) for i in range(0, N, step)]
    cc = -(-C // min(C, -(-workers() // N)))
    return [(slice(n, n + 1), slice(c, min(C, c + cc))) for n in range(N)
            for c in range(0, C, cc)]


def _gy_on_grid(gyv, plane, O, dtype):
    """gy (n, C, m, *O) spread onto the flat padded grid, zeros between rows."""
    gf = np.zeros(gyv.shape[:3] + (_flat_len(plane, O),), dtype=dtype)
    _flat_grid(gf, plane, O)[...] = gyv
    return gf


def _input_grad_flat(gy, w, spec, in_spatial):
    N = gy.shape[0]
    C = spec.groups
    O = tuple(gy.shape[2:])
    wc = _wtaps(w, C, spec.rank).reshape(C, -1, math.prod(spec.kernel_size))
    m = wc.shape[1]
    dtype = np.result_type(gy, w)
    gyv = gy.reshape((N, C, m) + O)
    in_spatial = tuple(in_spatial)
    plane = spec.padded_shape(in_spatial)
    Lf = _flat_len(plane, O)
    offs = _flat_taps(spec, plane)
    gxp = np.zeros((N, C) + plane, dtype=dtype)
    gflat = gxp.reshape(N, C, -1)

    def run(tile):
        bs, cs = tile
        g = _gy_on_grid(gyv[bs, cs], plane, O, dtype)
        tmp = np.empty_like(g)
        out = gflat[bs, cs]
        for j, off in enumerate(offs):
            np.multiply(g, wc[None, cs, :, j, None], out=tmp)
            out[..., off:off + Lf] += tmp[:, :, 0] if m == 1 else tmp.sum(axis=2)

    parallel_map(run, _flat_tiles(N, C, (m + 2) * Lf * dtype.itemsize))
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


def _weight_grad_flat(x, gy, spec):
    N, C = x.shape[:2]
    O = tuple(gy.shape[2:])
    m = gy.shape[1] // C
    dtype = np.result_type(x, gy)
    xp = np.ascontiguousarray(pad_spatial(x, spec.padding))
    plane = xp.shape[2:]
    xf = xp.reshape(N, C, 1, -1)
    Lf = _flat_len(plane, O)
    offs = _flat_taps(spec, plane)
    gyv = gy.reshape((N, C, m) + O)

    def run(tile):
        bs, cs = tile
        g = _gy_on_grid(gyv[bs, cs], plane, O, dtype)  # (n, c, m, Lf)
        xt = xf[bs, cs]
        part = np.empty((g.shape[1], m, len(offs)), dtype=dtype)
        for j, off in enumerate(offs):
            part[:, :, j] = np.einsum("ncml,ncml->cm", np.broadcast_to(
                xt[..., off:off + Lf], g.shape), g)
        return cs, part

    # each channel's parts added in batch order, whichever worker computed them
    gw = np.zeros((C, m, len(offs)), dtype=dtype)
    for cs, part in parallel_map(run, _flat_tiles(N, C, (m + 1) * Lf * dtype.itemsize)):
        gw[cs] += part
    return gw.reshape((C * m, 1) + tuple(spec.kernel_size))


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    if _stride1(spec) and _fits(spec, gy.shape[2:], in_spatial):
        return _input_grad_flat(gy, w, spec, in_spatial)
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
    buf_shape = grad_buffer_shape(spec, in_spatial, O)
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


def _fits(spec: ConvSpec, O, in_spatial) -> bool:
    """The windows of ``O`` outputs stay inside the padded input (not so for some
    transposed-conv output sizes, which take the general path)."""
    return all(d * (k - 1) + o <= p for d, k, o, p in
               zip(spec.dilation, spec.kernel_size, O, spec.padded_shape(in_spatial)))


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    # The flat path multiplies the row ends of x (values of the next row) by the zeros
    # between gy's rows: 0 * NaN there would reach taps that never read the NaN.
    if _stride1(spec) and _fits(spec, gy.shape[2:], x.shape[2:]) and all_finite(x):
        return _weight_grad_flat(x, gy, spec)
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
