"""im2col + GEMM: the general fast path.

Shapes as in :mod:`convolab.algorithms.direct`.  The padded input is viewed as
sliding windows ``(N, g, C/g, *k, *O)`` with :func:`numpy.lib.stride_tricks.as_strided`
(no copy), then copied once into columns ``(N, g, C/g*prod(k), prod(O))`` and
contracted with the weight ``(g, K/g, C/g*prod(k))`` by one batched BLAS matmul.
At stride 1 the columns are contiguous runs of the flattened padded planes
(:func:`_forward_flat`), or, when the layer keeps its size after the first dimension,
of the unpadded planes themselves (:func:`_forward_same`).

Backward:
* ``weight_grad``: ``gy @ cols^T`` summed over the batch (GEMMs).
* ``input_grad``: ``dcols = w^T @ gy`` then col2im: one strided slice-add per
  kernel offset (a loop over offsets, never over pixels; no ``np.add.at``).

Work is split into tiles (batch chunks, or rows of the first output dimension when
one sample is too big) so that the column buffer stays within the ``workspace_bytes``
option and, for speed, within the last-level cache; one scratch buffer is reused
for every tile.  In the forward and the weight gradient each tile pads the input rows
it reads into its own scratch (the 3-D slabs pad each slab of rows).  A 1x1,
stride-1, unpadded convolution is a plain GEMM on the input, with no column copy at all
(in tiles too, see :func:`_pointwise_products`).  When output rows are long (>=
:data:`MEC_MIN_ROW` positions) the forward lowers only the last ``rank - 1`` dimensions
and reads the first from overlapping blocks of lowered rows (:func:`_forward_mec`),
which copies ``k0 / s0`` times less.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec
from ..options import get_options, options
from . import _samegrid as samegrid
from ._finite import all_finite
from ._threads import RESULTS_HELD_PER_WORKER, Scratch, run_tiles, run_tiles_sum, workers
from ._tiles import (SMALL_GROUP, add_bias, grad_buffer_shape, group_tiles, input_rows,
                     put, scratch, tiles)
from .direct import kernel_offsets, tap_slices

# The GEMM path's tile target: half of :data:`convolab.algorithms._tiles.CACHE_BYTES`
# (which Winograd keeps).  Measured once the tile threads were pinned (float32 medians,
# 11 interleaved repetitions after 0.2 s sleeps, fwd / fwd+bwd ms, 8 -> 4 MiB): 1-D k7
# 16.8 -> 15.8 / 50.0 -> 44.9, 3x3 s2 12.7 -> 12.4 / 47.0 -> 41.6, the 7x7 stem 17.8 ->
# 15.5 / 53.9 -> 52.3, transposed 4x4 s2 8.4 -> 8.3 / 22.4 -> 20.7.  With 4 MiB for the
# Winograd tiles too, its 3x3 C256 14x14 layer ran 1.4x slower.
CACHE = 4 * 2**20


def windows(xp: np.ndarray, spec: ConvSpec, out_spatial) -> np.ndarray:
    """Read-only view ``(N, C, *k, *O)`` of the padded input ``xp (N, C, *P)``."""
    r = spec.rank
    sp = xp.strides[2:]
    shape = xp.shape[:2] + tuple(spec.kernel_size) + tuple(out_spatial)
    strides = (
        xp.strides[:2]
        + tuple(st * d for st, d in zip(sp, spec.dilation))
        + tuple(st * s for st, s in zip(sp, spec.stride))
    )
    assert len(shape) == 2 + 2 * r
    return as_strided(xp, shape, strides, writeable=False)


def im2col(x: np.ndarray, spec: ConvSpec, out_spatial, xp=None) -> np.ndarray:
    """Columns ``(N, C*prod(k), prod(O))`` of the (unpadded) input ``x (N, C, *S)``."""
    if xp is None:
        xp = pad_spatial(x, spec.padding)
    N, C = x.shape[:2]
    kk = math.prod(spec.kernel_size)
    P = math.prod(out_spatial)
    if kk == 1 and all(s == 1 for s in spec.stride) and xp.shape[2:] == tuple(out_spatial):
        return xp.reshape(N, C, P)  # 1x1, stride 1: the input is already the columns
    return windows(xp, spec, out_spatial).reshape(N, C * kk, P)


def col2im(cols: np.ndarray, spec: ConvSpec, in_spatial, out_spatial) -> np.ndarray:
    """Adjoint of :func:`im2col`: ``cols (N, C*prod(k), prod(O))`` -> ``(N, C, *in_spatial)``."""
    N = cols.shape[0]
    kk = math.prod(spec.kernel_size)
    C = cols.shape[1] // kk
    O = tuple(out_spatial)
    padded = spec.padded_shape(in_spatial)
    buf_shape = grad_buffer_shape(spec, in_spatial, O)
    cv = cols.reshape((N, C) + tuple(spec.kernel_size) + O)
    if kk == 1 and all(s == 1 for s in spec.stride) and buf_shape == O:
        gxp = cv.reshape((N, C) + O)
    else:
        gxp = np.zeros((N, C) + buf_shape, dtype=cols.dtype)
        for t in kernel_offsets(spec):
            gxp[(slice(None), slice(None)) + tap_slices(t, spec, O)] += cv[
                (slice(None), slice(None)) + t
            ]
    gxp = gxp[(Ellipsis,) + tuple(slice(0, p) for p in padded)]
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int, *,
         phases: bool = False) -> tuple[float, float]:
    """(FLOPs at GEMM speed, bytes copied) for :func:`convolab.select.estimate_seconds`.

    Small per-group matrices run far below the BLAS peak, so FLOPs are scaled by the
    inverse of a GEMM efficiency that falls off (as a square root, fitted to the
    32-group and depthwise cases) for K/g < 32 or C/g*prod(k) < 64.  A 2-D forward has
    its own fitted estimate (:func:`_cost_2d_forward`), except as the forward of
    polyphase's phases (``phases``), which keep this one (see there); a forward that
    runs products first is priced as that (:func:`_taps_first`, :func:`_taps_cost`).
    """
    kk = math.prod(spec.kernel_size)
    g, N, C, K = p["g"], p["N"], p["C"], p["K"]
    P = math.prod(p["O"])
    if g == C == K and kk > 1:
        if role == "forward" and _toeplitz_rows(spec, p, itemsize):
            return _toeplitz_cost(spec, p, itemsize)
        return 0.0, _depthwise_bytes(role, spec, p, itemsize)
    if role == "forward" and _open_taps(spec, p, itemsize):
        return _open_cost(spec, p, itemsize)
    if role == "forward" and _taps_first(spec, p, itemsize):
        return _taps_cost(spec, p, itemsize)
    if spec.rank == 1:
        return _cost_1d(role, N, C, K, g, kk, P, itemsize)
    return _column_cost(role, spec, p, itemsize, phases=phases)


def _column_cost(role: str, spec: ConvSpec, p: dict, itemsize: int, *,
                 phases: bool = False) -> tuple[float, float]:
    """:func:`cost` of the lowerings that copy columns (2-D and 3-D, not depthwise;
    every role but the products-first forward, :func:`_forward_taps`)."""
    kk = math.prod(spec.kernel_size)
    g, N, C, K = p["g"], p["N"], p["C"], p["K"]
    P = math.prod(p["O"])
    flops = 2 * N * K * (C // g) * kk * P
    if role == "forward" and _flat(spec, p["S"], p["O"]):
        # the flat lowering's GEMM also computes the garbage columns of each padded row
        flops *= math.prod(spec.padded_shape(p["S"])[1:]) / max(1, math.prod(p["O"][1:]))
    if role == "forward" and spec.rank == 2 and not phases:
        return _cost_2d_forward(spec, p, flops, itemsize)
    if role == "input_grad":
        # dcols = w^T @ gy: C/g*prod(k) rows, a sum over K/g (since the GEMM runs over
        # all samples of a tile at once, the col2im costs about what im2col does)
        eff = (min(1.0, C / g * kk / 32) * min(1.0, K / g / 64)) ** 0.5
    else:
        eff = (min(1.0, K / g / 32) * min(1.0, C / g * kk / 64)) ** 0.5
    pointwise = _is_pointwise(spec, p["S"], p["O"])
    copies = 0 if pointwise else N * C * kk * P * itemsize * 2
    if role == "input_grad" and not pointwise:
        spread = _input_grad_spread(spec, p, itemsize)
        # and gx's positions written twice (the phase planes, then gx): what 1x1 stride-2
        # layers spend most of their time on
        gx = 2 * N * C * math.prod(p["S"]) * itemsize
        flops, copies = flops * spread, copies * spread + gx
        # gy spread onto the phase grid (zeros between its rows) and read by the product
        # once per C/g*prod(k) rows of dcols: with many more gradient channels than input
        # channels that is the work (see GY_GRID_NS)
        ns, one, ratio = GY_GRID_NS
        if ratio * C <= K:
            copies += 8 * ns * N * K * P * spread * (one if workers() == 1 else 1.0) * itemsize / 4
    return flops / max(eff, 1e-3), copies


# GEMM's input gradient (2-D and 3-D): (ns per element of gy on its phase grid, factor on
# one worker, the K/C from which it is counted).  Without it the estimate was 2.2x under
# where K/C >= 32 (a C3 -> K256 5x5 layer on 112x112: estimated 4.5 ms, ran 15.4;
# polyphase 6.3), 1.5x at K/C 8-32, and right or over below (there it is left out: with
# it a C8 -> K32 layer's backward went to the fused plan, 1.5x slower).  Fitted
# (float32, two workers, medians; .dev/igdata.py, igfit.py) on 250 layers of ranks 2-3,
# most with 1-64 input channels.
GY_GRID_NS = (0.4, 2.8, 8)


def _input_grad_spread(spec: ConvSpec, p: dict, itemsize: int) -> float:
    """Columns the input gradient computes per output position (2-D and 3-D): the plain
    lane runs a forward over every input position (the zeros of a ``valid`` layer's
    border and of the stride's spread included); the flat col2im covers a run of its
    phase grid, the output rows with the rest of each grid row between them.  On a
    7x7 dilation-2 layer of 14x14 -> 2x2 planes the run is 16 columns for 4 outputs."""
    P = math.prod(p["O"])
    if runs_plain("input_grad", spec, p, itemsize):
        return math.prod(p["S"]) / P
    Hs = [-(-b // s) for b, s in zip(grad_buffer_shape(spec, p["S"], p["O"]), spec.stride)]
    run = sum((o - 1) * math.prod(Hs[i + 1:]) for i, o in enumerate(p["O"])) + 1
    return run / P


# GEMM's 2-D forward: (FLOP factor, ns per column element, M0, alpha, I0, beta), with the
# efficiency min(1, (K/g)/M0)**alpha * min(1, (C/g*prod(k))/I0)**beta; see _cost_2d_forward.
COST_2D_FORWARD = (1.34, 0.47, 8, 0.35, 44, 0.49)


def _cost_2d_forward(spec: ConvSpec, p: dict, flops: float, itemsize: int):
    """GEMM's estimate for a 2-D forward (not depthwise).  The general formula charged
    each column element 1 ns and cut the efficiency of products with fewer than 32 output
    channels per group as a square root: with 8-16 output channels GEMM was estimated at
    1.3-2.4x its time and lost to Winograd and FFT where it was faster (N16 C128 K16
    dilated 3x3 on 28x28: Winograd 26.6 ms chosen, GEMM 9.3; N4 C64 K64 g4 7x7 on 32x32:
    FFT 21.3, GEMM 11.0).  Refitted (float32, 2 workers, medians of 5, every candidate
    timed; .dev/all2d.py, search2d.py) on 120 random 2-D layers: the time the choice
    loses 11.7 -> 0.6 %; checked on 64 others (the survey's two draws and the suite's 2-D
    rows, whose choices did not change) 4.5 -> 4.2 %.  The input gradient's choice gained
    too (14.5 -> 8.3 % lost) when polyphase was priced as this forward, but by one layer
    (a 32-group layer on 112x112 planes, 141 -> 81 ms): 12 of the 20 input gradients
    whose choice moved ran slower (1x1 and strided layers, and the transposed 2x2
    stride-2 layer 9.2 -> 10.3 ms), so polyphase's phases keep the general estimate."""
    F, col_ns, M0, alpha, I0, beta = COST_2D_FORWARD
    g, N, C, K = p["g"], p["N"], p["C"], p["K"]
    kk = math.prod(spec.kernel_size)
    eff = min(1.0, K / g / M0) ** alpha * min(1.0, C / g * kk / I0) ** beta
    cols = 0 if _is_pointwise(spec, p["S"], p["O"]) else N * C * kk * math.prod(p["O"])
    if any(s > 1 for s in spec.stride):
        # a strided layer's columns are copied from strided reads, one inner loop per
        # output row: its fixed cost weighs on narrow rows (refitted on 47 strided
        # layers, 1-256 output channels, 14x14 to 112x112 planes: rms log error of the
        # estimate 0.73 -> 0.42; 3-4x under on 5-wide output rows before)
        cols *= 1 + STRIDED_ROW_ELEMENTS / max(1, p["O"][-1])
    # the cost model charges bytes at 8 GB/s: 1 ns is 8 bytes (of float32 data)
    return F * flops / eff, 8 * col_ns * cols * itemsize / 4


# _cost_2d_forward: a strided layer's extra column cost, in column elements per row
STRIDED_ROW_ELEMENTS = 10.0


def call_seconds(role: str, spec: ConvSpec, p: dict, itemsize: int) -> float:
    """Fixed seconds per call beyond :func:`cost`, for :func:`convolab.select.
    call_seconds`: the plain lane (:data:`LANE_BYTES`) 35-90 us on tiny layers (one
    worker, medians), the tiled lowerings 80-200 us."""
    if _is_pointwise(spec, p["S"], p["O"]):
        return 40e-6
    return 50e-6 if runs_plain(role, spec, p, itemsize) else 120e-6


def lowering(role: str, spec: ConvSpec, p: dict, itemsize: int) -> str | None:
    """Which of GEMM's special lowerings runs ``role`` (``convolab explain`` says so):
    ``"plain"`` (:data:`LANE_BYTES`), ``"products first"`` (:func:`_forward_taps`),
    ``"open products first"`` (:func:`_forward_open`), ``"channels-last columns"``
    (:func:`_forward_last`), ``"row products"`` (:func:`_forward_toeplitz`), or None
    (the tiled columns, or a 1x1 product)."""
    if runs_plain(role, spec, p, itemsize):
        return "plain"
    if role == "forward" and _toeplitz_rows(spec, p, itemsize):
        return "row products"
    if role == "forward" and _open_taps(spec, p, itemsize):
        return "open products first"
    if role in ("forward", "weight_grad") and _last_columns(spec, p, itemsize, role):
        return "channels-last columns"
    if role == "forward" and _taps_first(spec, p, itemsize):
        return "products first"
    return None


def runs_plain(role: str, spec: ConvSpec, p: dict, itemsize: int) -> bool:
    """Whether ``role`` runs on the plain lane (:data:`LANE_BYTES`): not a 1x1 product,
    and within the lane's sizes (as :func:`forward`, :func:`weight_grad` and
    :func:`input_grad` decide; ``convolab explain`` says so)."""
    return not _is_pointwise(spec, p["S"], p["O"]) and _lane(role, spec, p, itemsize)


# GEMM on 1-D layers: (FLOP factor, ns per column element, ns per output, M0, alpha, I0,
# beta), efficiency min(1, M/M0)**alpha * min(1, I/I0)**beta with M the product's rows
# (K/g; C/g*k for the input gradient) and I its inner length (C/g*k; K/g).  The weight
# gradient's product is (K/g x N*P) @ (N*P x C/g*k): it takes the forward's M and I as
# the fitted variables, not as its shape.  See _cost_1d.
COST_1D = {
    "forward": (1.15, 0.15, 0.15, 16, 0.6, 16, 0.5),
    "input_grad": (1.14, 0.5, 0.07, 16, 0.95, 128, 0.28),
    "weight_grad": (1.4, 0.5, 0.5, 16, 0.2, 32, 0.7),
}


def _cost_1d(role: str, N: int, C: int, K: int, g: int, kk: int, P: int,
             itemsize: int = 4) -> tuple[float, float]:
    """GEMM's estimate for a 1-D layer (not depthwise).  The 2-D/3-D formula
    below charged the column copies 1 ns per element and cut the efficiency of small
    per-group products far too hard when their inner dimension is long: a grouped k31
    layer measured at 1.8 ms was estimated at 9.2, and FFT was chosen where GEMM ran
    1.5-3.5x faster.  Refitted (float32, 2 workers, medians) to choose well rather than
    to predict: the constants of :data:`COST_1D` minimise the time the automatic choice
    loses over 150 random 1-D layers (every candidate of every role timed), and were
    checked on 34 others (the survey's two draws and the suite's three 1-D rows); see
    benchmarks/RESULTS.md, "Sixteenth pass".  The weight gradient's constants were
    fitted with the fused backward's (:func:`convolab.algorithms.fused.cost`, which
    prices two of these products) to the backward plans' times.  The copy times, fitted
    on float32, scale with the item size (as every other estimate's bytes: a float64
    column copies twice the bytes; the FLOPs are scaled by ``select._gemm_rate``)."""
    F, col_ns, out_ns, M0, alpha, I0, beta = COST_1D[role]
    Cg, Kg = C // g, K // g
    M, inner = (Cg * kk, Kg) if role == "input_grad" else (Kg, Cg * kk)
    eff = min(1.0, M / M0) ** alpha * min(1.0, inner / I0) ** beta
    flops = 2 * N * K * Cg * kk * P
    # the cost model charges bytes at 8 GB/s: 1 ns is 8 bytes (of float32 data)
    return F * flops / eff, 8 * (col_ns * N * C * kk * P + out_ns * N * K * P) * itemsize / 4


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """Scratch bytes: one tile's column buffer per worker (each tile pads its own rows of
    the input, and the row-tiled col2im adds each tile into the result; only a layer
    that crops its low side copies a padded gradient whole).  The whole padded input
    was counted as well, which no lowering allocates any more: ``explain`` reported
    264 MiB for a 1-D C64 k3 stride-2 forward on 2**20 samples that measured 16 MiB
    under a 16 MiB budget."""
    if _is_pointwise(spec, p["S"], p["O"]):
        return 0
    item = np.dtype(dtype).itemsize
    if _lane(role, spec, p, item):
        return _lane_scratch(role, spec, p, item)
    kk = math.prod(spec.kernel_size)
    N, C, K = p["N"], p["C"], p["K"]
    padded = N * C * math.prod(spec.padded_shape(p["S"])) * item
    nw = workers()
    if role == "forward" and _toeplitz_rows(spec, p, item):
        # blocks of channels, each with its band matrices, padded rows and sums, planned
        # within each worker's share of the budget and the cache target
        Hp, Wp = spec.padded_shape(p["S"])
        Wo = p["O"][1]
        whole = C * (spec.kernel_size[0] * Wp * Wo + N * (Hp * Wp + 2 * Hp * Wo)) * item
        return min(whole, nw * min(get_options().workspace_bytes // nw, CACHE))
    if ((role == "forward" and not _open_taps(spec, p, item) or role == "weight_grad")
            and _last_columns(spec, p, item, role)):
        # each worker's tile of samples (_last_plan), and the weights in (tap, channel)
        # order, or the weight gradient's partial sums each worker may hold
        # (and per worker ~8 KiB that NumPy's iterator takes for the strided column
        # copies: the C128 -> K8 5x5 forward on 7x7 planes measured 13-17 KiB over
        # the estimate without it)
        nb, per = _last_plan(spec, p, item)
        held = 1 if role == "forward" else 1 + RESULTS_HELD_PER_WORKER * nw
        return (min(-(-N // nb), nw) * (nb * per * item + 2**13)
                + held * K * (C // p["g"]) * kk * item)
    if role == "forward" and _open_taps(spec, p, item):
        # each worker's tile (products and sums of whole planes) within its share of the
        # budget and the cache target; and the weights in (channel, tap) order
        # (and per worker ~20 KiB that NumPy's iterator takes for each strided tap sum)
        kk_ = math.prod(spec.kernel_size)
        whole = N * K * (kk_ * math.prod(p["S"]) + math.prod(p["O"])) * item
        limit = min(get_options().workspace_bytes // nw, CACHE)
        return min(whole, nw * limit) + K * (C // p["g"]) * kk_ * item + nw * 2**15
    if role == "forward" and _taps_first(spec, p, item):
        # each worker's tile (input rows, products, sums) is planned within its share
        # of the budget and the cache target; and the weights in (channel, tap) order
        whole = N * (C + K * kk + K) * math.prod(spec.padded_shape(p["S"])) * item
        limit = min(get_options().workspace_bytes // nw, CACHE)
        return min(whole, nw * limit) + K * (C // p["g"]) * kk * item
    # a 3-D input gradient in slabs adds each slab into a zeroed padded gradient of the
    # whole input (cropped at the end): a C8 k3 stride-2 layer on 32x96x96 measured
    # 9.5 MiB under a 1 MiB budget where 3.8 was estimated without it
    slabs = _plane_slabs(spec, tuple(p["O"]), ((C * kk + K) if role != "forward" else C * kk)
                         * item)
    slabbed = role == "input_grad" and bool(slabs)
    # and each chunk of samples' slab (a padded copy, or the input gradient's slab), at
    # most half the budget (:func:`_slab_batches`)
    slab = 0
    if slabs:
        out_row = K * p["O"][0] * math.prod(p["O"][2:]) * item if role == "forward" else 0
        slab = get_options().workspace_bytes - _slab_batches(
            spec, N, p["S"], C, slabs, item, copies=role == "input_grad" or _pads(spec),
            out_row=out_row)[1]
    if role == "input_grad" and not slabbed:
        O = tuple(p["O"])
        buf_shape = grad_buffer_shape(spec, p["S"], O)
        Hs, _, _, Lf, _ = _phase_layout(spec, buf_shape, O)
        per_sample = ((C * kk + K) * Lf + C * math.prod(spec.stride) * math.prod(Hs)) * item
        per_worker = get_options().workspace_bytes // nw
        if per_sample <= per_worker:
            return nw * max(1, min(N, min(per_worker, CACHE) // per_sample)) * per_sample
    crops = role == "input_grad" and any(lo < 0 for lo, _ in spec.padding)
    # a tile's columns, and (forward, weight gradient) its padded input rows: about
    # ``prod(stride)`` input positions per output; the forward sizes its tiles by both
    # where the stride exceeds the taps (as :func:`_forward`)
    st = math.prod(spec.stride)
    rows_in = 0 if role == "input_grad" else C * st
    per_pos = (C * kk + (K if role == "weight_grad" else 0)
               + (rows_in if role == "forward" and st > kk else 0)) * item
    _, most = tiles(N, p["O"], per_pos, cache=CACHE)
    return (padded if crops or slabbed else 0) + slab + nw * most * (C * kk + rows_in) * item


# Small calls: plain im2col.  Below :data:`LANE_BYTES` of columns a role runs as one
# strided copy into columns and one batched GEMM (the input gradient as a forward of the
# spread gy with the flipped kernel), without a tile plan, scratch pool or row layout:
# their Python steps cost more there than the lowerings save.  Measured on one worker
# (float32 medians, us, lowerings / plain): a 3x3 layer C3 -> 8 on 16x16 forward 145 /
# 32, weight gradient 96 / 37, input gradient 124 / 43; 1-D C8 k5 on 32 samples 79 / 25,
# 86 / 31, 134 / 39; 3x3 C16 on 8x8 (144 KiB of columns) 127 / 82, 200 / 94, 184 / 160;
# 1-D C16 k7 on 256 samples (448 KiB) 246 / 149, 174 / 200, 233 / 114; from about 1 MiB
# the lowerings are as fast or faster (3x3 C16 on 16x16, N8: 306 / 320, 406 / 367; its
# stride-2 input gradient, 2.3 MiB of spread columns, 305 / 681).
LANE_BYTES = 512 * 2**10


def _lane(role: str, spec: ConvSpec, p: dict, item: int, extra: int = 0) -> bool:
    """Whether ``role`` runs as plain im2col (:data:`LANE_BYTES`): small columns, and
    the scratch of :func:`_lane_scratch` (plus ``extra`` elements) within the
    workspace budget."""
    if _lane_cols(role, spec, p) * item > LANE_BYTES:
        return False
    scratch = _lane_scratch(role, spec, p, item) + extra * item
    return scratch <= get_options().workspace_bytes


def _lane_cols(role: str, spec: ConvSpec, p: dict) -> int:
    """Elements of the lane's columns: of ``x`` (``C`` channels at the output
    positions), or for the input gradient of the spread ``gy`` (``K`` channels at
    the input positions)."""
    kk = math.prod(spec.kernel_size)
    if role == "input_grad":
        return p["N"] * p["K"] * kk * math.prod(p["S"])
    return p["N"] * p["C"] * kk * math.prod(p["O"])


def _lane_scratch(role: str, spec: ConvSpec, p: dict, item: int) -> int:
    """Bytes the plain lane allocates beyond its result: the columns, and the padded
    input (for the input gradient: the spread ``gy``, where the stride spreads it, and
    that padded); the weight gradient of a batch also holds one product per sample
    before their sum, or (:func:`_lane_folds`) ``gy`` with its batch moved inwards."""
    N, C, K, g = p["N"], p["C"], p["K"], p["g"]
    kk = math.prod(spec.kernel_size)
    extra = 0
    if role == "input_grad":
        _, pairs, spread = _lane_spread(spec, p["O"], p["S"])
        padded = K * math.prod(m + max(0, lo) + max(0, hi) for m, (lo, hi) in zip(spread, pairs))
        if spread != tuple(p["O"]):
            extra = N * K * math.prod(spread)
        extra += C * (K // g) * kk  # the flipped weight
    else:
        padded = C * math.prod(spec.padded_shape(p["S"]))
        if role == "weight_grad" and N > 1:
            extra = N * K * min(math.prod(p["O"]), C // g * kk)
    return (_lane_cols(role, spec, p) + N * padded + extra) * item


def _lane_forward(x, w, spec: ConvSpec, O, bias) -> np.ndarray:
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    P = math.prod(O)
    cols = im2col(x, spec, O).reshape(N, g, C // g * math.prod(spec.kernel_size), P)
    y = _matmul(_wmat(w, g), cols)  # (N, g, K/g, P)
    add_bias(y, None if bias is None else bias.reshape(g, K // g, 1))
    return y.reshape((N, K) + tuple(O))


def _lane_folds(n: int, positions: int, rows: int) -> bool:
    """Whether the lane's weight gradient of ``n`` samples folds the batch into the
    product's inner dimension (one ``(K/g, N*P) @ (N*P, C/g*k)`` per group, on copies
    of ``gy`` and of the columns with the batch inwards) rather than summing one
    product per sample: where ``positions`` (``P``, per sample) is below ``rows``
    (``C/g*prod(k)``), so that the copy of ``gy`` (``N*K*P``) is smaller than the
    products (``N*K*C/g*k``).
    The products alone were 288 MiB (32 times the result; the lowerings took 19) for a
    3x3 C256 -> 1024 layer on 3x3 planes, N32, whose columns are 288 KiB."""
    return n > 1 and positions < rows


def _lane_weight_grad(x, gy, spec: ConvSpec) -> np.ndarray:
    N, C = x.shape[:2]
    K, g = gy.shape[1], spec.groups
    O = tuple(gy.shape[2:])
    P = math.prod(O)
    r = spec.rank
    Ckg = C // g * math.prod(spec.kernel_size)
    if _lane_folds(N, P, Ckg):
        win = windows(pad_spatial(x, spec.padding), spec, O)  # (N, C, *k, *O)
        inner = (1,) + tuple(range(2, 2 + r)) + (0,) + tuple(range(2 + r, 2 + 2 * r))
        cols = np.ascontiguousarray(win.transpose(inner)).reshape(g, Ckg, N * P)
        gyt = np.ascontiguousarray(gy.transpose((1, 0) + tuple(range(2, 2 + r))))
        gw = np.matmul(gyt.reshape(g, K // g, N * P), cols.transpose(0, 2, 1))
    else:
        cols = im2col(x, spec, O).reshape(N, g, Ckg, P)
        prods = np.matmul(gy.reshape(N, g, K // g, P), cols.transpose(0, 1, 3, 2))
        gw = prods[0] if N == 1 else prods.sum(axis=0)  # one sample: its product is gw
    return gw.reshape((K, C // g) + tuple(spec.kernel_size))


def _lane_input_grad(gy, w, spec: ConvSpec, in_spatial) -> np.ndarray:
    """The input gradient as a forward (:func:`_lane_forward`, one column copy and one
    GEMM) of ``gy`` spread by the stride, with the kernel flipped and its channel axes
    swapped per group: ``gx[i] = sum_t w[k-1-t] * g[i + t*d]``, ``g`` the spread
    ``gy`` padded by ``d*(k-1) - lo`` below and cropped or padded to ``S + d*(k-1)``.
    A col2im adds one slice per tap instead: ~10 us each on small arrays (a 31-tap
    1-D layer on 128 samples 335 us)."""
    _, pairs, spread = _lane_spread(spec, gy.shape[2:], in_spatial)
    g, Cg = spec.groups, w.shape[1]
    K = w.shape[0]
    r = spec.rank
    if spread != tuple(gy.shape[2:]):
        gs = np.zeros(gy.shape[:2] + spread, dtype=gy.dtype)
        gs[(Ellipsis,) + tuple(slice(None, None, st) for st in spec.stride)] = gy
    else:
        gs = gy
    wt = w.reshape((g, K // g, Cg) + w.shape[2:]).swapaxes(1, 2)
    wt = wt[(Ellipsis,) + (slice(None, None, -1),) * r].reshape((g * Cg, K // g) + w.shape[2:])
    fwd = dataclasses.replace(spec, stride=(1,) * r, padding=pairs, output_padding=(),
                              transposed=False)
    return _lane_forward(gs, np.ascontiguousarray(wt), fwd, tuple(in_spatial), None)


def _lane_spread(spec: ConvSpec, O, S):
    """For :func:`_lane_input_grad`: the effective kernel extent minus one per
    dimension, the (low, high) padding of the spread gy (negative: crop), and its
    spread shape."""
    ext = [d * (k - 1) for d, k in zip(spec.dilation, spec.kernel_size)]
    spread = tuple((o - 1) * st + 1 for o, st in zip(O, spec.stride))
    pairs = tuple((e - lo, n + lo - m) for e, (lo, _), n, m in zip(ext, spec.padding, S, spread))
    return ext, pairs, spread


def _plane_slabs(spec: ConvSpec, O, per_position: int):
    """Slabs ``[(h0, h1), ...]`` of the second output dimension, or None.

    Tiles hold at least one row of the first output dimension; in 3-D that row is a
    whole plane, whose columns alone can exceed the workspace budget (C64 3x3x3 on a
    128x128 plane: 113 MiB per worker).  Then the convolution runs slab by slab of
    plane rows on the padded input, each slab's row within the tile limit of
    :func:`convolab.algorithms._tiles.tiles` (the budget, at most the cache target)."""
    if spec.rank < 3 or O[1] <= 1 or any(lo < 0 or hi < 0 for lo, hi in spec.padding):
        return None
    limit = min(get_options().workspace_bytes // workers(), CACHE)  # as in tiles()
    per_line = per_position * math.prod(O[2:])
    if per_line * O[1] <= limit:
        return None
    rows = max(1, limit // max(1, per_line))
    return [(h, min(O[1], h + rows)) for h in range(0, O[1], rows)]


def _slab_batches(spec: ConvSpec, N: int, S, C: int, slabs, item: int,
                  copies: bool = True, out_row: int = 0) -> tuple[list[slice], int]:
    """How the slabs run: ``(batch chunks, budget left for each slab's own call)``.

    A slab is a copy of its rows of the padded input (or, for the input gradient, its
    gradient) for every sample of its call, outside the tiles' scratch: over all
    samples that came to most of the input (a C220 k4x5x3 forward on 8 x 18x14x23: 42
    MiB of slab copies under a 12.5 MiB budget, 51 MiB in all).  So the samples go in
    chunks whose slab takes at most half the budget, and the slab's own call plans its
    tiles within the rest.  ``copies``: False where a slab is a view (no padding);
    ``out_row``: bytes per sample and output row of the result a slab's call returns
    before it is copied into place (the forward's)."""
    budget = get_options().workspace_bytes
    if not copies and not out_row:
        return [slice(0, N)], budget
    Pd = spec.padded_shape(S)
    rows = max(_slab_rows(spec, h0, h1).stop - _slab_rows(spec, h0, h1).start
               for h0, h1 in slabs)
    copy = C * Pd[0] * rows * math.prod(Pd[2:]) * item if copies else 0
    per_sample = copy + out_row * max(h1 - h0 for h0, h1 in slabs)
    nb = max(1, min(N, budget // 2 // max(1, per_sample)))
    return [slice(i, min(N, i + nb)) for i in range(0, N, nb)], max(1, budget - nb * per_sample)


def _slab_rows(spec: ConvSpec, h0: int, h1: int) -> slice:
    """Rows of the padded input (second spatial dimension) that output rows [h0, h1) read."""
    return input_rows(slice(h0, h1), spec, dim=1)


def _padded_slab(x: np.ndarray, spec: ConvSpec, h0: int, h1: int) -> np.ndarray:
    """``pad_spatial(x, spec.padding)[:, :, :, _slab_rows(spec, h0, h1)]`` without padding
    the rest of the input: the slab's own copy (or a view where it needs no padding)."""
    rows = _slab_rows(spec, h0, h1)
    lo1, n1 = spec.padding[1][0], x.shape[3]
    first, last = max(rows.start, lo1), min(rows.stop, lo1 + n1)  # input rows, padded coords
    if last <= first:  # the slab lies in the padding
        first = last = rows.stop
    pairs = list(spec.padding)
    pairs[1] = (first - rows.start, rows.stop - last)
    return pad_spatial(x[:, :, :, first - lo1:last - lo1], pairs)


def _pads(spec: ConvSpec) -> bool:
    """Whether the spec pads (its slabs are then copies, not views of the input)."""
    return any(lo or hi for lo, hi in spec.padding)


def _unpadded(spec: ConvSpec) -> ConvSpec:
    return dataclasses.replace(spec, padding=((0, 0),) * spec.rank)


def pad_rows_into(x: np.ndarray, pairs, start: int, out: np.ndarray) -> np.ndarray:
    """``out[...] = pad_spatial(x, pairs)[:, :, start:start + out.shape[2]]`` (zeros
    outside ``x``; negative amounts crop), without padding the rows outside ``out``.
    Only the border is zeroed (one pass over the interior instead of two)."""
    src, dst = [], []
    for d, ((lo, _), n, m) in enumerate(zip(pairs, x.shape[2:], out.shape[2:])):
        a = start if d == 0 else 0  # padded coordinates of out's first element
        p0, p1 = max(a, lo), min(a + m, lo + n)  # padded p holds x[p - lo]
        if p1 <= p0:
            out[...] = 0
            return out
        src.append(slice(p0 - lo, p1 - lo))
        dst.append(slice(p0 - a, p1 - a))
    lead = (slice(None),) * (out.ndim - len(dst))
    for d, sl in enumerate(dst):
        before = lead + (slice(None),) * d
        out[before + (slice(0, sl.start),)] = 0
        out[before + (slice(sl.stop, None),)] = 0
    out[lead + tuple(dst)] = x[lead + tuple(src)]
    return out


def _wmat(w: np.ndarray, g: int) -> np.ndarray:
    """(K, C/g, *k) -> (g, K/g, C/g*prod(k))."""
    K = w.shape[0]
    return w.reshape(g, K // g, -1)


def _is_pointwise(spec: ConvSpec, in_spatial, out_spatial) -> bool:
    """1x1, stride 1, no padding: the input itself is the column matrix."""
    return (
        all(k == 1 for k in spec.kernel_size)
        and all(s == 1 for s in spec.stride)
        and all(lo == 0 and hi == 0 for lo, hi in spec.padding)
        and tuple(in_spatial) == tuple(out_spatial)
    )


def _input_tile(x, spec: ConvSpec, bs: slice, chans: slice, rows: slice, buf):
    """The padded input rows that output rows ``rows`` read, of samples ``bs`` and
    channels ``chans``, padded into the front of ``buf`` (on the worker, in cache) rather
    than the whole input padded before the tiles start: a pass less in the calling
    thread.  Returns ``(tile, rest of buf)``; the tile's rows start at output row 0."""
    ir = input_rows(rows, spec)
    Pd = spec.padded_shape(x.shape[2:])
    shape = (bs.stop - bs.start, chans.stop - chans.start, ir.stop - ir.start) + tuple(Pd[1:])
    xt = buf[: math.prod(shape)].reshape(shape)
    pad_rows_into(x[bs, chans], spec.padding, ir.start, xt)
    return xt, buf[xt.size:]


def _input_tile_size(plan, spec: ConvSpec, in_spatial, chans: int) -> int:
    """Elements of the largest :func:`_input_tile` of ``plan`` (``(bs, rows, ...)`` tiles)."""
    P1 = math.prod(spec.padded_shape(in_spatial)[1:])
    return max(((t[0].stop - t[0].start) * chans * P1
                * (input_rows(t[1], spec).stop - input_rows(t[1], spec).start)
                for t in plan), default=1)


def _tile_cols(xp, spec, bs, rows, O, buf, *, batch_inner=False):
    """Columns of one tile, copied into ``buf``.

    Returns ``(n, C*kk, Pt)``, or with ``batch_inner`` ``(C*kk, n, Pt)`` (the layout
    that makes the weight gradient a single GEMM over ``n*Pt``).
    """
    Ot = (rows.stop - rows.start,) + tuple(O[1:])
    xt = xp[bs, :, input_rows(rows, spec)]
    win = windows(xt, spec, Ot)  # (n, C, *k, *Ot)
    n, C = win.shape[:2]
    r = spec.rank
    kk = math.prod(spec.kernel_size)
    Pt = math.prod(Ot)
    if batch_inner:
        win = win.transpose((1,) + tuple(range(2, 2 + r)) + (0,) + tuple(range(2 + r, 2 + 2 * r)))
        out = buf[: C * kk * n * Pt].reshape(win.shape)
        np.copyto(out, win)
        return out.reshape(C * kk, n, Pt)
    out = buf[: n * C * kk * Pt].reshape(win.shape)
    np.copyto(out, win)
    return out.reshape(n, C * kk, Pt)


def _plan(N: int, O, g: int, Kg: int, per_group_position: int):
    """``(tiles, positions in the largest, groups per tile)``, tiles being ``(batch
    slice, row slice, group slice)``: split by groups when groups are small
    (:func:`convolab.algorithms._tiles.group_tiles`), else every tile holds all groups."""
    if g > 1 and Kg < SMALL_GROUP:
        return group_tiles(N, O, g, per_group_position)
    plan, most = tiles(N, O, per_group_position * g, cache=CACHE)
    return [(bs, rows, slice(0, g)) for bs, rows in plan], most, g


def _plan_in_budget(N: int, O, g: int, Kg: int, per_position: int, scratch, limit=None):
    """:func:`_plan` whose largest tile's whole scratch, ``scratch(plan, most, G)``
    bytes, fits ``limit`` (default: a worker's share of the budget).  The size per
    position leaves out what a tile reads beyond it (its padded input rows, the kernel's
    reach below its output rows), and on small planes that weighs (C64 5x5 stride 2 on
    7x7 planes: 86 KiB of scratch under a 64 KiB budget), so a plan over the limit is
    made again with the size scaled up, at least a quarter more each time (balanced
    row counts move in steps), until it fits or its tiles are single rows of one
    sample."""
    if limit is None:
        limit = get_options().workspace_bytes // workers()
    for _ in range(16):
        plan, most, G = _plan(N, O, g, Kg, per_position)
        size = scratch(plan, most, G)
        if size <= limit or all(b.stop - b.start == 1 and r.stop - r.start <= 1
                                for b, r, _ in plan):
            break
        per_position = int(per_position * max(1.25, size / limit)) + 1
    return plan, most, G


def _pointwise_plan(N: int, P: int, per_position: int) -> list:
    """Tiles ``(batch slice, position slice)`` of a 1x1 convolution's ``P`` positions."""
    return tiles(N, (P,), per_position, cache=CACHE)[0]


def _pointwise_products(a: np.ndarray, b: np.ndarray, dtype, bias=None, *, store=None,
                        O=None) -> np.ndarray | None:
    """``a (g, M, L) @ b (N, g, L, P)`` for a 1x1 convolution (or its input gradient), in
    tiles on the tile workers rather than as one matmul on BLAS's own threads.

    One multi-threaded matmul measured faster back to back (the fifth pass: 5.2 vs 9.5
    ms, with the tile threads unpinned), but OpenBLAS's threads keep spinning after it
    returns and then compete with the pinned tile threads of the next convolution:
    after a 512^2 matmul, the 32-group 3x3 forward took 9.3 instead of 7.4 ms and the
    Winograd 3x3 C64 forward 22.3 instead of 15.3 (medians of 15).  In tiles, no BLAS
    thread runs at all.  ``bias`` ``(g, M, 1)`` is added to each tile's product.

    With ``store`` (and the output's spatial shape ``O``), each tile of whole rows of
    ``O`` hands its product to ``store`` as :func:`forward` describes, and None is
    returned: the 2x2 stride-2 transposed convolution's phases were written by one
    serial pass after the products, 10.6 ms against 6.9 for GEMM's col2im."""
    N, g, L, P = b.shape
    item = np.dtype(dtype).itemsize
    if store is not None:
        M = a.shape[1]

        def run_store(tile):
            bs, rows = tile
            prod = _matmul(a, b[bs, :, :, _row_positions(rows, O)])
            store(bs, slice(0, g * M), rows,
                  prod.reshape((prod.shape[0], g * M, rows.stop - rows.start) + O[1:]))

        run_tiles(run_store, tiles(N, O, (L + M) * g * item, cache=CACHE)[0])
        return None
    out = np.empty((N, g, a.shape[1], P), dtype=dtype)

    def run(tile):
        bs, ps = tile
        if ps.stop - ps.start == P:
            _matmul(a, b[bs], out=out[bs])
            add_bias(out[bs], bias)
        else:
            put(out[bs, :, :, ps], _matmul(a, b[bs, :, :, ps]), bias)

    run_tiles(run, _pointwise_plan(N, P, (L + a.shape[1]) * g * item))
    return out


def _matmul(a: np.ndarray, b: np.ndarray, out=None) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, as a broadcast product where the inner dimension is
    1: an outer product, as in a 1x1 layer with one input channel per group (or the input
    gradient of one with one output channel per group), where OpenBLAS's GEMM ran 4-14x
    slower than NumPy's multiply (float32, medians: N8 C1 -> K32 on 64x64, 2.57 ms
    against 0.13; N4 C1 -> K256 on 112x112, 36.3 against 7.3).  Each entry is then one
    product, rounded as BLAS rounds it."""
    if a.shape[-1] == 1:
        return np.multiply(a, b, out=out)
    return np.matmul(a, b, out=out)


def _row_positions(rows: slice, O) -> slice:
    P1 = math.prod(O[1:])
    return slice(rows.start * P1, rows.stop * P1)


# forward takes ``bias=`` and adds it in each tile (see convolab.ops.conv._run_forward)
FORWARD_ADDS_BIAS = True


def _beside(nbytes: int):
    """``options`` with the workspace less ``nbytes`` (held by the caller meanwhile)."""
    return options(workspace_bytes=max(1, get_options().workspace_bytes - nbytes))


def _forward_slabs(x, w, spec: ConvSpec, O, dtype, bias, slabs) -> np.ndarray:
    """:func:`forward` slab by slab of plane rows (:func:`_plane_slabs`), in chunks of
    samples (:func:`_slab_batches`)."""
    N, C = x.shape[:2]
    K = w.shape[0]
    sp0 = _unpadded(spec)
    y = np.empty((N, K) + O, dtype=dtype)
    chunks, rest = _slab_batches(spec, N, x.shape[2:], C, slabs, dtype.itemsize,
                                 copies=_pads(spec),
                                 out_row=K * O[0] * math.prod(O[2:]) * dtype.itemsize)
    with options(workspace_bytes=rest):
        for bs in chunks:
            for h0, h1 in slabs:
                y[bs, :, :, h0:h1] = forward(_padded_slab(x[bs], spec, h0, h1), w, sp0,
                                             (O[0], h1 - h0) + O[2:], bias=bias)
    return y


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None, *,
            bias=None, store=None) -> np.ndarray | None:
    """y = conv(x, w) (+ ``bias`` ``(K,)`` per channel, added in each tile while it is in
    the cache): x (N, C, *S), w (K, C/g, *k) -> y (N, K, *O).

    With ``store``, nothing is returned: ``store(samples, channels, rows, block)`` is
    called with blocks ``(n, k, r, *O[1:])`` of ``y`` that together cover it once (slices
    of the batch, the output channels and the first output dimension), possibly from
    the tile workers at once.  The stride-1 flat and same-grid lowerings, the plain
    im2col lowering (every other 1-D layer's) and the 1x1 products hand over each tile's
    block while it is in the cache, in place of their own copy into ``y``; the slab and
    MEC lowerings hand over the whole ``y``.  A caller that lays the output out
    differently (the polyphase interleave of a transposed convolution) so writes it
    once."""
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    if store is not None and bias is not None:
        raise ValueError("forward: store and bias cannot both be given")
    y = _forward(x, w, spec, O, store, bias)
    if store is not None and y is not None:  # a lowering that does not take ``store``
        store(slice(0, y.shape[0]), slice(0, y.shape[1]), slice(0, O[0]), y)
        return None
    return y


def _forward(x, w, spec: ConvSpec, O, store, bias) -> np.ndarray | None:
    """:func:`forward` by the lowering that suits the layer (None: ``store`` took it)."""
    g = spec.groups
    N, C = x.shape[:2]
    K = w.shape[0]
    P = math.prod(O)
    dtype = np.result_type(x, w)
    wm = _wmat(w, g)
    gb = None if bias is None else bias.reshape(g, K // g, 1)  # (group, channel, position)
    if _is_pointwise(spec, x.shape[2:], O):
        y = _pointwise_products(wm, x.reshape(N, g, C // g, P), dtype, gb, store=store, O=O)
        return None if y is None else y.reshape((N, K) + O)
    # with ``store`` the lane's result is scratch too (handed over whole by forward)
    if _lane("forward", spec, dict(N=N, C=C, K=K, g=g, S=x.shape[2:], O=O), dtype.itemsize,
             extra=0 if store is None else N * K * P):
        return _lane_forward(x, w, spec, O, bias)
    kk = math.prod(spec.kernel_size)
    prob = dict(N=N, C=C, K=K, g=g, S=x.shape[2:], O=O)
    # before the slabs: whole planes of products, where they fit (the 3-D slabs would
    # take a small plane's layer the column way, which its estimate did not price)
    if _open_taps(spec, prob, dtype.itemsize) and all_finite(w):
        return _forward_open(x, w, spec, O, dtype, store, gb)
    if store is None and _last_columns(spec, prob, dtype.itemsize):
        return _forward_last(x, w, spec, O, dtype, bias)
    # the slab and MEC lowerings make the whole y, which with ``store`` is scratch too:
    # they plan within what the budget leaves beside it (the polyphase input gradient's
    # forward through MEC took 14.0 MiB under 10.6 on two workers, 2.3 MiB of it y)
    whole = contextlib.nullcontext() if store is None else _beside(N * K * P * dtype.itemsize)
    slabs = _plane_slabs(spec, O, C * kk * dtype.itemsize)
    if slabs:
        with whole:
            return _forward_slabs(x, w, spec, O, dtype, bias, slabs)
    if _toeplitz_rows(spec, prob, dtype.itemsize):
        return _forward_toeplitz(x, w, spec, O, dtype, store, gb)
    if _taps_first(spec, prob, dtype.itemsize):
        return _forward_taps(x, w, spec, O, dtype, store, gb)
    if _mec(spec, O):
        with whole:
            return _forward_mec(x, w, spec, O, dtype, bias)
    if samegrid.applicable(spec, x.shape[2:], O):
        return _forward_same(x, w, spec, O, dtype, gb, store)
    if _flat(spec, x.shape[2:], O):
        return _forward_flat(x, w, spec, O, dtype, store, gb)
    # with ``store`` each tile's product goes there (no ``y``): a 1-D layer always runs
    # this lowering, and the polyphase input gradient's phases would otherwise each
    # hold a whole result outside the workspace (a transposed stride-2 layer on 2**20
    # samples: a 256 MiB copy under a 16 MiB budget)
    y = None if store is not None else np.empty((N, g, K // g, P), dtype=dtype)
    Cg, Kg = C // g, K // g
    # with ``store`` the tile's product is scratch too (in the buffer, and in the tile's
    # size): a product allocated per tile, sized by the columns alone, was 9 MiB over a
    # 1 MiB budget for the phases of a C8 -> C256 k3 stride-2 ConvTranspose1d.
    # Few positions per sample: one GEMM over the tile's samples and positions, not one
    # per sample with a handful of columns each (C256 -> K32 5x5 stride 2 on 7x7 planes,
    # 4 positions: the products 0.58 -> 0.19 ms on one thread), its (K/g, n*P) product
    # in the scratch too, written into y transposed
    inner = store is None and N > 1 and P <= FEW_POSITIONS and Kg <= Cg * kk
    Kp = Kg if store is not None or inner else 0
    # a strided layer with fewer taps than its stride (1x1 stride 2-4) reads more input
    # positions per output than its columns hold: the tile's padded input rows, sized by
    # the columns alone, were 5-6 MiB of scratch under a 1 MiB budget (1-D C64 k1 stride
    # 4 on 2**18 samples; 2-D C64 1x1 stride 2 on 128x128 planes)
    st = math.prod(spec.stride)
    rows_in = Cg * st if st > kk else 0

    def scratch(plan, most, G):
        return (most * G * (Cg * kk + Kp)
                + _input_tile_size(plan, spec, x.shape[2:], G * Cg)) * dtype.itemsize

    plan, most, G = _plan_in_budget(N, O, g, K // g, (Cg * kk + Kp + rows_in) * dtype.itemsize,
                                    scratch)
    bufs = Scratch(scratch(plan, most, G) // dtype.itemsize, dtype)

    def run(tile):
        bs, rows, gs = tile
        xt, buf = _input_tile(x, spec, bs, slice(gs.start * Cg, gs.stop * Cg), rows, bufs.get())
        ps = _row_positions(rows, O)
        bg = None if gb is None else gb[gs]
        if inner:
            ng = gs.stop - gs.start
            cols = _tile_cols(xt, spec, slice(None), slice(0, rows.stop - rows.start), O, buf,
                              batch_inner=True)  # (ng*Cg*kk, n, Pt)
            n, Pt = cols.shape[1:]
            prod = np.matmul(wm[gs], cols.reshape(ng, Cg * kk, n * Pt),
                             out=buf[cols.size:cols.size + ng * Kg * n * Pt].reshape(ng, Kg, -1))
            put(y[bs, gs, :, ps], prod.reshape(ng, Kg, n, Pt).transpose(2, 0, 1, 3), bg)
            return
        cols = _tile_cols(xt, spec, slice(None), slice(0, rows.stop - rows.start), O, buf)
        cols = cols.reshape(cols.shape[0], gs.stop - gs.start, Cg * kk, -1)
        if store is not None:
            n, ng, _, Pt = cols.shape
            block = np.matmul(wm[gs], cols, out=buf[cols.size:cols.size + n * ng * Kg * Pt]
                              .reshape(n, ng, Kg, Pt))
            store(bs, slice(gs.start * Kg, gs.stop * Kg), rows,
                  block.reshape((block.shape[0], -1, rows.stop - rows.start) + tuple(O[1:])))
        elif ps.start == 0 and ps.stop == P:
            np.matmul(wm[gs], cols, out=y[bs, gs])
            add_bias(y[bs, gs], bg)
        else:
            put(y[bs, gs, :, ps], np.matmul(wm[gs], cols), bg)

    run_tiles(run, plan, bufs)
    return None if y is None else y.reshape((N, K) + O)


# GEMM's depthwise layers (their 1 x prod(k) products are memory-bound), per role:
# (ns per column element, row elements, ns per output).  A column element costs
# ``ns * (1 + row elements / O[-1])``: the copies run one inner loop per output row, so
# narrow rows cost more per element (3-D planes of 6-16).  The forward and weight
# gradient have two entries each: columns copied as runs of the plane (the same-size and
# flat forward lowerings apply, or 1-D) or row by row (the others: "... rows").  The
# input gradient's columns are its flat phase grid's (:func:`_input_grad_spread`).
# Fitted (float32, two workers, medians; .dev/dwdata.py, dwfit.py) on 162 depthwise
# layers of ranks 1-3, 3x3x3 to 7x7x7 and 3 to 31 taps: rms log error of the estimate
# 0.93-1.00 -> 0.25-0.37, and 1.04-1.08 -> 0.25-0.37 on 70 others.  The old formula
# (fitted on 2-D forwards of 28- to 56-wide planes) was 2.5-7x under on 3-D layers,
# which took GEMM where FFT or the tap loop ran 1.6-3.6x faster.
DEPTHWISE_COLUMNS = {
    "forward": (0.242, 13.0, 0.66),
    "forward rows": (0.312, 22.2, 2.1),
    "input_grad": (1.93, 2.3, 0.0),
    "weight_grad": (0.236, 27.0, 1.54),
    "weight_grad rows": (0.33, 19.8, 3.25),
}


def _depthwise_bytes(role: str, spec: ConvSpec, p: dict, itemsize: int) -> float:
    """:func:`cost`'s bytes for a depthwise ``role`` through columns (see
    :data:`DEPTHWISE_COLUMNS`)."""
    N, C, S, O = p["N"], p["C"], p["S"], p["O"]
    rows = (role != "input_grad" and spec.rank > 1 and not samegrid.applicable(spec, S, O)
            and not _flat(spec, S, O))
    col_ns, row, out_ns = DEPTHWISE_COLUMNS[role + " rows" if rows else role]
    P = math.prod(O)
    cols = N * C * math.prod(spec.kernel_size) * P * (1 + row / max(1, O[-1]))
    if role == "input_grad" and spec.rank > 1:
        cols *= _input_grad_spread(spec, p, itemsize)
    # the cost model charges bytes at 8 GB/s: 1 ns is 8 bytes (of float32 data)
    return 8 * (col_ns * cols + out_ns * N * C * P) * itemsize / 4


def _depthwise_columns_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """The depthwise forward through columns as :data:`TOEPLITZ_COST` was set against
    (memory traffic only; the choice between GEMM's two depthwise lowerings, whose
    constants were tuned together; :data:`DEPTHWISE_COLUMNS` prices the columns against
    the other algorithms): ~0.2 ns per column element plus ~2.6 ns per output, fitted to
    2-D forward medians (3x3 to 31x31, 28x28 to 56x56 planes)."""
    kk = math.prod(spec.kernel_size)
    N, C, K, P = p["N"], p["C"], p["K"], math.prod(p["O"])
    return 0.0, (1.6 * N * C * kk * P + 20.8 * N * K * P) * itemsize / 4


def _toeplitz_rows(spec: ConvSpec, p: dict, itemsize: int) -> bool:
    """Whether a depthwise 2-D forward runs as row products (:func:`_forward_toeplitz`):
    stride 1, padding >= 0, a kernel at least 5 wide on planes at most 8 kernel widths
    wide (the products' zeros: a padded row of ``Wp`` against ``k`` taps), one channel's
    tile within a worker's share of the budget, and its estimate below 0.85 times the
    columns'."""
    if not (spec.rank == 2 and p["g"] == p["C"] == p["K"] and p["N"] > 0
            and all(v == 1 for v in spec.stride)
            and all(lo >= 0 and hi >= 0 for lo, hi in spec.padding)
            and spec.kernel_size[1] >= 5 and 0 not in p["O"]):
        return False
    Hp, Wp = spec.padded_shape(p["S"])
    if Wp > TOEPLITZ_MAX_WIDTH * spec.kernel_size[1]:
        return False
    one = (Hp * Wp + spec.kernel_size[0] * Wp * p["O"][1] + 2 * Hp * p["O"][1]) * itemsize
    if one > get_options().workspace_bytes // workers():
        return False
    return (_seconds(*_toeplitz_cost(spec, p, itemsize))
            < TAPS_MARGIN * _seconds(*_depthwise_columns_cost(spec, p, itemsize)))


# _toeplitz_rows: the widest padded plane, in kernel widths (each product multiplies a
# padded row of Wp values with Wp x Wo band matrices holding k values per column; 5x5
# on 112x112, 23 widths, ran 39.6 ms on columns and 59.9 this way)
TOEPLITZ_MAX_WIDTH = 10
# _toeplitz_cost: (GEMM efficiency, ns per element of the padded copy, the band matrices
# and the sums), set beside the columns' depthwise estimate so that the choice lost
# nothing on 14 depthwise layers (float32, two workers, medians, ms, columns / rows):
# N32 C8 7x7 on 32x32 6.9 / 4.7, N32 C64 7x7 on 28x28 32.2 / 15.0, N16 C96 7x7 on 56x56
# 71.2 / 51.3, N8 C64 5x5 on 28x28 4.8 / 3.3, N2 C64 9x9 on 32x32 7.6 / 5.4, N4 C256
# 7x7 on 7x7 3.2 / 2.4; kept on columns: N1 C16 7x7 on 64x64 1.15 / 1.34, N4 C32 5x5
# dilation 2 on 28x28 1.35 / 1.28, and every 3x3 layer (C256 on 28x28: 8.5 / 12.6)
TOEPLITZ_COST = (1.0, 0.35)


def _toeplitz_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """(FLOPs at GEMM speed, bytes) of :func:`_forward_toeplitz`: ``k0`` products of each
    channel's padded rows ``(N*Hp, Wp) @ (Wp, Wo)``, at :data:`TOEPLITZ_COST`'s
    efficiency, and its copies and sums."""
    eff, ns = TOEPLITZ_COST
    N, C = p["N"], p["C"]
    k0 = spec.kernel_size[0]
    Hp, Wp = spec.padded_shape(p["S"])
    Wo = p["O"][1]
    flops = 2 * N * C * Hp * Wp * Wo * k0
    elements = N * C * Hp * Wp + C * k0 * Wp * Wo + (k0 + 1) * N * C * Hp * Wo
    return flops / eff, 8 * ns * elements * itemsize / 4


def _forward_toeplitz(x, w, spec: ConvSpec, O, dtype, store=None, gb=None):
    """A depthwise 2-D stride-1 forward as products of rows with band matrices: for each
    channel and kernel row ``i``, ``y[n, r, :] += xpad[n, r + i*d0, :] @ T[i]`` where
    ``T[i]`` (``Wp x Wo``) holds ``w[i, j]`` at ``(o + j*d1, o)``.  With the channel's
    samples' padded rows stacked (``(N*Hp, Wp)``, the rows past each sample's outputs
    computed and dropped) that is ``k0`` GEMMs per channel, batched over the channels.

    The columns of the GEMM lowering copy ``k0*k1`` values per output and multiply them
    by one row; these products do ``Wp / k1`` times the multiply-adds but read each input
    value ``k0`` times from the cache.  Measured (float32, GEMM forced, medians, ms,
    columns / rows): N32 C64 7x7 on 28x28 32.2 / 15.0, N16 C128 7x7 on 14x14 10.6 / 5.3,
    N8 C64 5x5 on 28x28 4.8 / 3.3; the 3x3 C256 layer on 28x28 8.5 / 12.6, hence
    :func:`_toeplitz_rows` (more at :data:`TOEPLITZ_COST`).  Tiles: blocks of channels
    (and of samples, where one channel's samples exceed a worker's share), each with its
    own band matrices.
    ``store``: see :func:`forward`; ``gb``: the bias as ``(C, 1, 1)``."""
    N, C = x.shape[:2]
    H, W = x.shape[2:]
    k0, k1 = spec.kernel_size
    d0, d1 = spec.dilation
    Hp, Wp = spec.padded_shape((H, W))
    Ho, Wo = O
    item = dtype.itemsize
    limit = min(get_options().workspace_bytes // workers(), CACHE)
    band = k0 * Wp * Wo
    per_sample = Hp * Wp + 2 * Hp * Wo  # padded rows, sums and one product
    nb = N if band + N * per_sample <= limit // item else max(
        1, (limit // item - band) // per_sample)
    cb = max(1, min(C, limit // item // (band + nb * per_sample)))
    plan = [(slice(n, min(N, n + nb)), slice(c, min(C, c + cb)))
            for n in range(0, N, nb) for c in range(0, C, cb)]
    if len(plan) < workers() and C > 1:  # every worker gets a block
        cb = -(-C // workers())
        plan = [(slice(n, min(N, n + nb)), slice(c, min(C, c + cb)))
                for n in range(0, N, nb) for c in range(0, C, cb)]
    bufs = Scratch(cb * (band + nb * per_sample), dtype)
    wk = w.reshape(C, k0, k1).astype(dtype, copy=False)
    cols = np.arange(Wo)
    y = None if store is not None else np.empty((N, C, Ho, Wo), dtype=dtype)

    def run(tile):
        bs, cs = tile
        n, c = bs.stop - bs.start, cs.stop - cs.start
        buf = bufs.get()
        T = buf[: c * band].reshape(c, k0, Wp, Wo)
        T[...] = 0
        for j in range(k1):
            T[:, :, cols + j * d1, cols] = wk[cs, :, j, None]
        buf = buf[T.size:]
        xt = buf[: c * n * Hp * Wp].reshape(c, n, Hp, Wp)
        pad_rows_into(x[bs, cs].swapaxes(0, 1), spec.padding, 0, xt)
        buf = buf[xt.size:]
        if not all_finite(xt):
            # a band matrix multiplies every value of a row, its zeros too: inf or NaN
            # would make NaN in outputs that never read it (torch: finite there), so
            # such a tile sums its taps one by one, as the direct convolution does
            block = _band_tile_taps(xt, wk[cs], spec, O, buf)
        else:
            block = _band_tile_products(xt, T, spec, O, buf)
        if store is None:
            put(y[bs, cs], block, None if gb is None else gb[cs])
        else:
            store(bs, cs, slice(0, Ho), block)

    run_tiles(run, plan, bufs)
    return y


def _band_tile_products(xt, T, spec: ConvSpec, O, buf):
    """One tile of :func:`_forward_toeplitz`: ``xt (c, n, Hp, Wp)`` padded rows against
    the band matrices ``T (c, k0, Wp, Wo)``, as an ``(n, c, Ho, Wo)`` view of ``buf``."""
    c, n, Hp, Wp = xt.shape
    k0, d0 = spec.kernel_size[0], spec.dilation[0]
    Ho, Wo = O
    item = xt.itemsize
    rows = xt.reshape(c, n * Hp, Wp)
    r = n * Hp - d0 * (k0 - 1)  # the stacked rows computed
    # contiguous results: a strided ``out`` made matmul allocate its own and copy
    acc = buf[: c * r * Wo].reshape(c, r, Wo)
    tmp = buf[acc.size: acc.size + c * r * Wo].reshape(c, r, Wo)
    np.matmul(rows[:, :r], T[:, 0], out=acc)
    for i in range(1, k0):
        np.matmul(rows[:, i * d0:i * d0 + r], T[:, i], out=tmp)
        acc += tmp
    # sample n's output row i is stacked row n*Hp + i (< r for every i < Ho)
    return as_strided(acc, (n, c, Ho, Wo), (Hp * Wo * item, acc.strides[0],
                                            Wo * item, item), writeable=False)


def _band_tile_taps(xt, wk, spec: ConvSpec, O, buf):
    """A tile of :func:`_forward_toeplitz` whose input holds inf or NaN: the taps summed
    one by one (``wk (c, k0, k1)``), each product reading only the values its outputs
    read, as an ``(n, c, Ho, Wo)`` view of ``buf``."""
    c, n = xt.shape[:2]
    k0, k1 = spec.kernel_size
    d0, d1 = spec.dilation
    Ho, Wo = O
    acc = buf[: c * n * Ho * Wo].reshape(c, n, Ho, Wo)
    tmp = buf[acc.size: 2 * acc.size].reshape(acc.shape)
    for i in range(k0):
        for j in range(k1):
            src = xt[:, :, i * d0:i * d0 + Ho, j * d1:j * d1 + Wo]
            wv = wk[:, i, j].reshape(c, 1, 1, 1)
            if i == j == 0:
                np.multiply(src, wv, out=acc)
            else:
                np.multiply(src, wv, out=tmp)
                acc += tmp
    return acc.swapaxes(0, 1)


def _last_columns(spec: ConvSpec, p: dict, itemsize: int, role: str = "forward") -> bool:
    """Whether a forward (2-D) or a weight gradient (2-D or 3-D, :data:`LAST_RANKS`)
    copies its columns from a channels-last copy of the input (:func:`_forward_last`,
    :func:`_weight_grad_last`): stride 1, not depthwise, output rows of at most
    :data:`LAST_WIDTH` values, at most :data:`LAST_OUT_CHANNELS` output channels per
    group, padding >= 0, and one sample's padded input and one group's columns within
    a worker's share of the budget."""
    if (spec.rank not in LAST_RANKS[role] or p["g"] == p["C"] == p["K"]
            or p["O"][-1] > LAST_WIDTH
            or p["K"] // p["g"] > LAST_OUT_CHANNELS or any(v != 1 for v in spec.stride)
            or 0 in p["O"] or 0 in p["S"] or p["N"] == 0
            or any(lo < 0 or hi < 0 for lo, hi in spec.padding)):
        return False
    nb, per = _last_plan(spec, p, itemsize)
    return per * itemsize <= get_options().workspace_bytes // workers()


# _last_columns: the widest output rows taken channels-last.  The columns of the other
# lowerings are copied in runs of one output row; NumPy pays ~7-10 ns per run, so on
# small planes the copy costs 3-10x its bytes (a 5x5 layer's 3-wide rows: 3.5 ns per
# element against 0.3 on 28-wide rows).  Channels-last, a run is a kernel row of all
# of a group's channels.  Measured (float32, one thread, medians, ms, columns /
# channels-last): N16 C128 -> K8 g2 5x5 on 7x7 2.0 / 0.54, N8 C16 -> K32 7x7 on 7x7
# 1.16 / 0.49, N2 C128 -> K64 3x3 on 7x7 0.64 / 0.39, N16 C64 -> K64 3x3 on 7x7 1.63 /
# 1.07, C256 3x3 on 7x7 16.2 / 14.6, C512 63.6 / 56.7; on 14x14 planes the two input
# and output transposes cost more than the runs save (C128 3x3 15.2 / 17.6, C64 g4
# 4.1 / 6.6).  Strided layers keep their columns: C256 -> K512 3x3 stride 2 on 14x14
# (few positions, one GEMM over the samples) 21.1 -> 23.4 ms this way, C128 6.3 -> 7.5.
# With many output channels per group the product outweighs the copy and the two
# transposes cost more than the runs save (two workers, 0.05 s sleeps, medians of 9,
# ms, before / after: C256 -> K256 3x3 on 7x7 N4 4.5 / 5.5, C512 N16 37.7 / 40.7),
# hence LAST_OUT_CHANNELS; kept: K8 g2 5x5 2.6 / 1.2, C16 -> K32 7x7 1.7 / 1.3, C64 ->
# K64 3x3 on 4x4 N64 3.1 / 2.4, on 9x9 unpadded 2.4 / 2.1, and 0.97-1.08x on six more.
# In 3-D the weight gradient gains too (two workers, 0.05 s sleeps, medians of 9, ms,
# GEMM forced, before / after): 3x3x3 C128 -> K64 on 6^3 18.3 / 9.4, C32 g2 on 4^3 6.0
# / 3.3, C64 -> K16 on 7^3 7.8 / 5.4, C32 on 6^3 7.0 / 5.2 (C16 -> K32 unpadded 7^3
# 2.85 / 3.20); the forward does not (3.7 / 4.1, 3.0 / 3.4, 7.6 / 8.8 on the same),
# hence LAST_RANKS per role
LAST_WIDTH = 7
LAST_OUT_CHANNELS = 64
LAST_RANKS = {"forward": (2,), "weight_grad": (2, 3)}


def _last_plan(spec: ConvSpec, p: dict, itemsize: int) -> tuple[int, int]:
    """(samples per tile, elements of scratch per sample) of :func:`_forward_last` and
    :func:`_weight_grad_last`: the padded channels-last input, one group's columns,
    and the product of all groups (forward) or ``gy``'s rows (weight gradient); as many
    samples as fit a worker's share of the budget and the cache target, and at least
    one tile per worker."""
    N, C, K, g = p["N"], p["C"], p["K"], p["g"]
    P = math.prod(p["O"])
    per = math.prod(spec.padded_shape(p["S"])) * C + P * math.prod(spec.kernel_size) * (C // g) \
        + P * K
    limit = min(get_options().workspace_bytes // workers(), CACHE) // itemsize
    nb = max(1, min(N, limit // per))
    if N > 1 and -(-N // nb) < workers():
        nb = -(-N // workers())
    return nb, per


def _last_tile(x, bs: slice, spec: ConvSpec, buf, col_elems: int):
    """A tile of samples ``bs`` for the channels-last columns: ``(xc, cols, rest)``,
    the padded channels-last input (:func:`_last_input`), ``col_elems`` elements for the
    columns and the rest of ``buf``, in that order in ``buf``."""
    xc = _last_input(x, bs, spec, buf)
    return xc, buf[xc.size: xc.size + col_elems], buf[xc.size + col_elems:]


def _last_input(x, bs: slice, spec: ConvSpec, buf) -> np.ndarray:
    """Samples ``bs`` of ``x`` channels-last and zero-padded, ``(n, *padded, C)``, at
    the start of ``buf`` (only the border is zeroed)."""
    n, C, S = bs.stop - bs.start, x.shape[1], x.shape[2:]
    Sp = spec.padded_shape(S)
    xc = buf[: n * math.prod(Sp) * C].reshape((n,) + tuple(Sp) + (C,))
    inner = [slice(None)]
    for (lo, _), m in zip(spec.padding, S):  # each dimension's border, inside the others'
        xc[tuple(inner) + (slice(0, lo),)] = 0
        xc[tuple(inner) + (slice(lo + m, None),)] = 0
        inner.append(slice(lo, lo + m))
    xc[tuple(inner)] = np.moveaxis(x[bs], 1, -1)
    return xc


def _last_cols(xc, spec: ConvSpec, O, channels: slice, cols) -> np.ndarray:
    """The columns of ``channels`` of the channels-last ``xc``, copied into ``cols`` as
    ``(n*prod(O), prod(k)*c)`` in (taps, channel) order."""
    n, c, r = xc.shape[0], channels.stop - channels.start, spec.rank
    st = xc.strides
    view = as_strided(
        xc[..., channels], (n,) + tuple(O) + tuple(spec.kernel_size) + (c,),
        (st[0],) + tuple(s * a for s, a in zip(spec.stride, st[1:r + 1]))
        + tuple(d * a for d, a in zip(spec.dilation, st[1:r + 1])) + (st[-1],),
        writeable=False)
    out = cols[: view.size].reshape(view.shape)
    np.copyto(out, view)
    return out.reshape(n * math.prod(O), math.prod(spec.kernel_size) * c)


def _forward_last(x, w, spec: ConvSpec, O, dtype, bias):
    """A 2-D or 3-D forward whose columns come from a channels-last copy of the input:
    per tile of samples, ``xc (n, *padded, C)`` (zero borders), then for each group the
    columns ``(n*prod(O), prod(k)*Cg)`` in (taps, channel) order, whose runs are a
    kernel row's ``k[-1]*Cg`` contiguous values, times the weights in that order,
    ``(prod(k)*Cg, Kg)``; the products ``(n*P, Kg)`` are transposed into ``y`` at the
    end.  The same products as the other column lowerings, in another order."""
    N, C = x.shape[:2]
    K, g, r = w.shape[0], spec.groups, spec.rank
    Cg, Kg = C // g, K // g
    P, kk = math.prod(O), math.prod(spec.kernel_size)
    nb, per = _last_plan(spec, dict(N=N, C=C, K=K, g=g, S=x.shape[2:], O=O), dtype.itemsize)
    plan = [slice(n, min(N, n + nb)) for n in range(0, N, nb)]
    bufs = Scratch(nb * per, dtype)
    # (g, Kg, Cg, *k) -> (g, *k, Cg, Kg)
    wl = np.ascontiguousarray(
        w.reshape((g, Kg, Cg) + tuple(spec.kernel_size))
        .transpose((0,) + tuple(range(3, 3 + r)) + (2, 1)), dtype=dtype
    ).reshape(g, kk * Cg, Kg)
    bl = None if bias is None else bias.astype(dtype, copy=False).reshape(g, 1, Kg)
    y = np.empty((N, K) + tuple(O), dtype=dtype)

    def run(bs):
        n = bs.stop - bs.start
        xc, cols, rest = _last_tile(x, bs, spec, bufs.get(), n * P * kk * Cg)
        prod = rest[: g * n * P * Kg].reshape(g, n * P, Kg)
        for gi in range(g):
            np.matmul(_last_cols(xc, spec, O, slice(gi * Cg, (gi + 1) * Cg), cols), wl[gi],
                      out=prod[gi])
        if bl is not None:
            prod += bl
        # (g, n, P, Kg) -> (n, g, Kg, P), straight into y (a reshape of the transposed
        # products was a copy of them outside the scratch first)
        np.copyto(y[bs].reshape(n, g, Kg, P), prod.reshape(g, n, P, Kg).transpose(1, 0, 3, 2))

    run_tiles(run, plan, bufs)
    return y


def _weight_grad_last(x, gy, spec: ConvSpec, dtype):
    """:func:`_forward_last`'s columns for the weight gradient: per tile of samples
    and group, ``gy`` as ``(n*P, Kg)`` rows (transposed once per tile) times the
    columns ``(n*P, prod(k)*Cg)``, summed over the tiles in their order
    (:func:`run_tiles_sum`), then put back in ``(K, C/g, *k)`` order."""
    N, C = x.shape[:2]
    K, g, r = gy.shape[1], spec.groups, spec.rank
    Cg, Kg = C // g, K // g
    O = tuple(gy.shape[2:])
    P, kk = math.prod(O), math.prod(spec.kernel_size)
    nb, per = _last_plan(spec, dict(N=N, C=C, K=K, g=g, S=x.shape[2:], O=O), dtype.itemsize)
    plan = [slice(n, min(N, n + nb)) for n in range(0, N, nb)]
    # beside its buffer, each worker holds its tile's partial sums (the weight's size)
    bufs = Scratch(nb * per, dtype, held=K * Cg * kk * dtype.itemsize)

    def run(bs):
        n = bs.stop - bs.start
        xc, cols, rest = _last_tile(x, bs, spec, bufs.get(), n * P * kk * Cg)
        gyl = rest[: n * P * K].reshape((n,) + O + (K,))
        gyl[...] = np.moveaxis(gy[bs], 1, -1)
        gyl = gyl.reshape(n * P, K)
        return [(gi, gyl[:, gi * Kg:(gi + 1) * Kg].T
                 @ _last_cols(xc, spec, O, slice(gi * Cg, (gi + 1) * Cg), cols))
                for gi in range(g)]

    gw = run_tiles_sum(run, plan, np.zeros((g, Kg, kk * Cg), dtype=dtype), bufs)
    # (g, Kg, *k, Cg) -> (g, Kg, Cg, *k)
    gw = gw.reshape((g, Kg) + tuple(spec.kernel_size) + (Cg,))
    return np.ascontiguousarray(gw.transpose((0, 1, 2 + r) + tuple(range(2, 2 + r)))).reshape(
        (K, Cg) + tuple(spec.kernel_size))


def _taps_first(spec: ConvSpec, p: dict, itemsize: int) -> bool:
    """Whether the forward runs products first (:func:`_forward_taps`): stride 1, a
    kernel of more than one tap (not depthwise), and its estimate (:func:`_taps_cost`)
    below :data:`TAPS_MARGIN` times the column copy's (:func:`_cost_1d`,
    :func:`_cost_2d_forward`, or the general one in 3-D).  Asked on every GEMM forward
    past the plain lane, so kept per layer and options (13 us of arithmetic)."""
    if (math.prod(spec.kernel_size) == 1 or any(v != 1 for v in spec.stride)
            or p["g"] == p["C"] == p["K"]):
        return False
    return _taps_first_kept(spec, p["N"], p["C"], p["K"], p["g"], tuple(p["S"]),
                            tuple(p["O"]), itemsize, get_options().workspace_bytes,
                            workers(), TAPS_MARGIN, TAPS_1D)


@functools.lru_cache(maxsize=1024)
def _taps_first_kept(spec, N, C, K, g, S, O, itemsize, budget, nw, margin, scale_1d) -> bool:
    """:func:`_taps_first`'s estimates (the options and constants they read in the key)."""
    p = dict(N=N, C=C, K=K, g=g, S=S, O=O)
    # one output row of one group (its input rows, products and sums) within a worker's
    # share of the budget; past it, the column lowerings' own row tiles
    Pd = spec.padded_shape(p["S"])
    grid_row = math.prod(Pd[1:])
    reach = spec.dilation[0] * (spec.kernel_size[0] - 1)
    row = ((C // g + K // g * math.prod(spec.kernel_size)) * (1 + reach) + K // g) * grid_row
    if row * itemsize > budget // nw:
        return False
    return (_seconds(*_taps_cost(spec, p, itemsize))
            < margin * _seconds(*_im2col_cost(spec, p, itemsize)))


# products first only where estimated at least this much faster: near a tie, on small
# planes, it ran 7-11 % slower (C64 -> K16 3x3 on 14x14, 0.96 -> 1.03 ms; C256 -> K16 on
# 7x7, 0.49 -> 0.56), its steps weighing more than the copy they save
TAPS_MARGIN = 0.85


def _seconds(flops: float, nbytes: float) -> float:
    from .. import select  # select imports this module

    return select.seconds(flops, nbytes)


# _taps_cost: (ns per summed product, ns per padded input element), in the units of
# _cost_2d_forward's column element; with these the choice between the two lowerings
# lost nothing on the 15 stride-1 layers below (0.3 / 0.3 chose products first on 3 that
# ran 3-12 % slower).  Measured (float32, two workers, medians of 8;
# products first / column copy): C64 -> K3 7x7 on 128x128 14.3 / 50.3 ms, C128 -> K8
# 5x5 on 32x32 10.6 / 22.4, C256 -> K21 3x3 on 64x64 26.0 / 38.0, C16 -> K4 3x3 0.86 /
# 1.05; C256 -> K64 on 14x14 10.1 / 9.2 and C512 -> K128 on 7x7 12.1 / 8.2, where the
# products cover the padded grid (1.3-1.7x the outputs); C64 -> K32 on 56x56 19.4 /
# 17.1.  Strided layers lost everywhere (C128 -> K64 stride 2: 20.7 / 7.4): not taken.
TAPS_COST = (1.0, 0.5)


def _taps_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """(FLOPs at GEMM speed, bytes) of :func:`_forward_taps`: the products over the padded
    input, ``(K/g*prod(k), C/g) @ (C/g, positions)``, at the efficiency of
    :data:`COST_2D_FORWARD` with those rows and that inner length; the tap sums over the
    flat grid's runs and the padded input written once."""
    F, _, M0, alpha, I0, beta = COST_2D_FORWARD
    add_ns, pad_ns = TAPS_COST
    g, N, C, K = p["g"], p["N"], p["C"], p["K"]
    kk = math.prod(spec.kernel_size)
    Pd = spec.padded_shape(p["S"])
    S_in = math.prod(Pd)
    O = p["O"]
    run = (O[0] - 1) * math.prod(Pd[1:]) + sum(
        (o - 1) * math.prod(Pd[i + 2:]) for i, o in enumerate(O[1:])) + 1
    eff = min(1.0, K / g * kk / M0) ** alpha * min(1.0, C / g / I0) ** beta
    flops = 2 * N * K * kk * (C // g) * S_in
    moved = add_ns * N * K * kk * run + pad_ns * N * C * S_in
    scale = TAPS_1D if spec.rank == 1 else 1.0
    # and its steps: per tile, a padding, a product and a sum per tap (small layers ran
    # 70-160 us slower this way: C256 -> K16 3x3 on 7x7, 0.66 -> 0.73 ms; 1-D C64 -> K8
    # k3 on 64 samples, 1.05 -> 1.21), in the cost model's bytes (8 per ns)
    from .. import select  # select imports this module

    steps = (TAPS_CALL[0] + TAPS_CALL[1] * kk * workers()) * select.COPY_BYTES
    return scale * F * flops / eff, scale * 8 * moved * itemsize / 4 + steps


# _taps_cost's fixed seconds: per call, and per tap and worker
TAPS_CALL = (100e-6, 8e-6)


# In 1-D the estimate above, set beside GEMM's fitted 1-D estimate (_cost_1d, which is
# fitted to choose rather than to predict), measured 1.3-1.8x too high on six layers
# (products first / columns, ms: C256 -> K16 k7 on 4096 samples 18.2 / 29.6, C128 -> K8
# k15 11.4 / 25.9, C64 -> K4 k31 8.4 / 21.7; C64 -> K64 k7 26.8 / 24.8)
TAPS_1D = 0.6


def _im2col_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """The column-copy lowerings' forward estimate (1-D and 2-D: the fitted ones)."""
    kk = math.prod(spec.kernel_size)
    P = math.prod(p["O"])
    if spec.rank == 1:
        return _cost_1d("forward", p["N"], p["C"], p["K"], p["g"], kk, P, itemsize)
    flops = 2 * p["N"] * p["K"] * (p["C"] // p["g"]) * kk * P
    if spec.rank == 2:
        return _cost_2d_forward(spec, p, flops, itemsize)
    return _column_cost("forward", spec, p, itemsize, phases=True)


def _open_taps(spec: ConvSpec, p: dict, itemsize: int) -> bool:
    """Whether the forward runs products first on the unpadded input
    (:func:`_forward_open`): stride 1, more than one tap, not depthwise, one sample's
    products of one group within a worker's share (planes that small), not on the plain
    lane, and its estimate (:func:`_open_cost`) below :data:`TAPS_MARGIN` times the
    column copy's and :data:`OPEN_MARGIN` times the padded products-first's.  Kept per
    layer and options, as :func:`_taps_first`."""
    if (math.prod(spec.kernel_size) == 1 or any(v != 1 for v in spec.stride)
            or p["g"] == p["C"] == p["K"] or 0 in p["O"] or 0 in p["S"] or p["N"] == 0
            or _lane("forward", spec, p, itemsize)):
        return False
    return _open_taps_kept(spec, p["N"], p["C"], p["K"], p["g"], tuple(p["S"]),
                           tuple(p["O"]), itemsize, get_options().workspace_bytes,
                           workers(), TAPS_MARGIN)


@functools.lru_cache(maxsize=1024)
def _open_taps_kept(spec, N, C, K, g, S, O, itemsize, budget, nw, margin) -> bool:
    """:func:`_open_taps`'s estimates (the options and constants they read in the key)."""
    p = dict(N=N, C=C, K=K, g=g, S=S, O=O)
    kk = math.prod(spec.kernel_size)
    one = (K // g * kk * math.prod(S) + K // g * math.prod(O)) * itemsize
    if one > min(budget // nw, CACHE):
        return False
    est = _seconds(*_open_cost(spec, p, itemsize))
    return (est < margin * _seconds(*_im2col_cost(spec, p, itemsize))
            and est < OPEN_MARGIN * _seconds(*_taps_cost(spec, p, itemsize)))


def _open_cost(spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """(FLOPs at GEMM speed, bytes) of :func:`_forward_open`: the products over the
    input's own positions at :func:`_taps_cost`'s efficiency, and per tap a sum over
    its outputs (rows of ``O[-1]``; :data:`OPEN_ROW` more per row), plus the zeroed
    result and the steps per tap."""
    F, _, M0, alpha, I0, beta = COST_2D_FORWARD
    add_ns, _ = TAPS_COST
    g, N, C, K = p["g"], p["N"], p["C"], p["K"]
    kk = math.prod(spec.kernel_size)
    P = math.prod(p["O"])
    eff = min(1.0, K / g * kk / M0) ** alpha * min(1.0, C / g / I0) ** beta
    flops = 2 * N * K * kk * (C // g) * math.prod(p["S"])
    rows = P / p["O"][-1]
    moved = add_ns * N * K * (kk + 1) * (P + OPEN_ROW * rows)
    from .. import select  # select imports this module

    # a product and kk sums per tile, at least one tile per worker: many small tiles
    # (one sample's groups past the cache) pay the sums' Python steps each (3-D k7 d2
    # grouped on 8^3 planes: 64 tiles of 343 taps, ~20 us a tap and worker)
    tiles = len(_open_plan(N, g, K // g, K // g * (kk * math.prod(p["S"]) + P), itemsize))
    steps = (TAPS_CALL[0] + TAPS_CALL[1] * kk * max(workers(), tiles)) * select.COPY_BYTES
    return F * flops / eff, 8 * moved * itemsize / 4 + steps


# _open_cost: the elements a row of a tap's sum costs beyond its own (a numpy inner loop
# per row of O[-1] elements); and how much cheaper than the padded products first it
# must be estimated (where the padding is thin the two compute alike, and the padded
# grid's contiguous sums won: C128 -> K8 7x7 unpadded on 32x32 17.1 against 20.9 ms)
OPEN_ROW = 24
OPEN_MARGIN = 0.9


def _open_plan(N: int, g: int, Kg: int, per: int, itemsize: int, split: bool = True) -> list:
    """Tiles ``(samples, groups, output channels of each group)`` of
    :func:`_forward_open`, ``per`` elements of scratch per sample and group: as many
    samples (or, past the limit, groups of one sample) as fit a worker's share of the
    budget and the cache target, at least one tile per worker where the samples allow,
    and with one sample of one group, blocks of its output channels (unless not
    ``split``: a ``store`` takes whole groups)."""
    limit = min(get_options().workspace_bytes // workers(), CACHE) // itemsize
    nw = workers()
    if g * per <= limit:
        nb = max(1, min(N, limit // (g * per), -(-N // nw)))
        plan = [(slice(n, min(N, n + nb)), slice(0, g)) for n in range(0, N, nb)]
    else:
        gb_ = max(1, min(g, limit // per))
        plan = [(slice(n, n + 1), slice(a, min(g, a + gb_)))
                for n in range(N) for a in range(0, g, gb_)]
    kb = Kg if len(plan) >= nw or g > 1 or not split else max(1, -(-Kg // nw))
    return [(bs, gs, slice(k, min(Kg, k + kb))) for bs, gs in plan for k in range(0, Kg, kb)]


def _forward_open(x, w, spec: ConvSpec, O, dtype, store=None, gb=None) -> np.ndarray | None:
    """The stride-1 forward as products first on the input as it is, unpadded:
    ``U[k, t, i] = sum_c w[k, c, t] * x[c, i]`` for every input position ``i`` (one
    GEMM per tile, ``(K/g*prod(k), C/g) @ (C/g, positions)``, on ``x`` itself), then
    for each tap the outputs whose window reads the input through it:
    ``y[k, o] += U[k, t, o + t*d - lo]``; a window's taps in the padding add nothing.

    :func:`_forward_taps` computes the products over the padded grid, so that each
    tap's sum is one contiguous run; on small planes most of that grid is padding
    (7x7 planes with a 7x7 kernel: 169 positions against 49), and the column copy of
    im2col moves its values in runs of a row.  Measured (float32, medians, ms, each
    forced: columns / padded products / these): C256 -> K8 7x7 on 7x7, N8, 7.1 / 4.5 /
    1.9; C512 -> K32 3x3 on 7x7 2.6 / 2.6 / 1.7 (there the estimate keeps the columns).
    A weight with inf or NaN does not run
    here: torch multiplies it by the padding's zeros (NaN), which this never does.
    Tiles: (samples, groups), whole planes.  ``store``: see :func:`forward`; ``gb``:
    the bias as ``(g, K/g, 1)``."""
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    Cg, Kg = C // g, K // g
    r, kk = spec.rank, math.prod(spec.kernel_size)
    S = tuple(x.shape[2:])
    Sp, P = math.prod(S), math.prod(O)
    wt = np.ascontiguousarray(w.reshape(g, Kg, Cg, kk).transpose(0, 1, 3, 2),
                              dtype=dtype).reshape(g, Kg * kk, Cg)
    # per tap, the outputs it reaches and the input positions they read
    sums = []
    for ti, tap in enumerate(kernel_offsets(spec)):
        outs, ins = [], []
        for t, d, (lo, _), n, o in zip(tap, spec.dilation, spec.padding, S, O):
            a, b = max(0, lo - t * d), min(o, n + lo - t * d)
            outs.append(slice(a, max(a, b)))
            ins.append(slice(a + t * d - lo, max(a, b) + t * d - lo))
        if all(sl.stop > sl.start for sl in outs):
            sums.append((ti, tuple(outs), tuple(ins)))
    per = Kg * (kk * Sp + P)  # one sample and group: products and sums
    # ``store`` (polyphase's unified phases) takes whole groups of channels
    plan = _open_plan(N, g, Kg, per, dtype.itemsize, split=store is None)
    most = max(((b.stop - b.start) * (c.stop - c.start) for b, c, _ in plan), default=1) * per
    bufs = Scratch(most, dtype)
    xv = x.reshape(N, g, Cg, Sp)
    wv = wt.reshape(g, Kg, kk, Cg)
    y = None if store is not None else np.empty((N, K) + tuple(O), dtype=dtype)

    def run(tile):
        bs, gs, kc = tile
        n, ng, nk = bs.stop - bs.start, gs.stop - gs.start, kc.stop - kc.start
        buf = bufs.get()
        U = buf[: n * ng * nk * kk * Sp].reshape(n, ng, nk * kk, Sp)
        np.matmul(wt[gs] if nk == Kg else wv[gs, kc].reshape(ng, nk * kk, Cg), xv[bs, gs],
                  out=U)
        U = U.reshape((n, ng * nk, kk) + S)
        acc = buf[U.size: U.size + n * ng * nk * P].reshape((n, ng * nk) + tuple(O))
        acc[...] = 0
        for ti, outs, ins in sums:
            acc[(slice(None), slice(None)) + outs] += U[(slice(None), slice(None), ti) + ins]
        # whole groups, or (one group) a block of its channels
        ks = (slice(gs.start * Kg, gs.stop * Kg) if nk == Kg
              else slice(gs.start * Kg + kc.start, gs.start * Kg + kc.stop))
        if store is None:
            bias = None if gb is None else (gb[gs] if nk == Kg else gb[gs, kc])
            put(y[bs, ks], acc, None if bias is None else bias.reshape((-1,) + (1,) * r))
        else:
            store(bs, ks, slice(0, O[0]), acc)

    run_tiles(run, plan, bufs)
    return y


def _forward_taps(x, w, spec: ConvSpec, O, dtype, store=None, gb=None) -> np.ndarray | None:
    """The stride-1 forward as products first, then a sum over the taps: per tap ``t``,
    ``U[k, t, i] = sum_c w[k, c, t] * xpad[c, i]`` at every position ``i`` of a tile's
    padded input (one GEMM, ``(K/g*prod(k), C/g) @ (C/g, positions)``, on the input as
    it is), and ``y[k, o] = sum_t U[k, t, o + off_t]``.

    The column copy of im2col writes ``C/g*prod(k)`` values per output and group; this
    writes ``K/g*prod(k)`` products per input position and adds them, so with few output
    channels against the input channels (a head or an output layer: C256 -> K8, C64 ->
    K3) it moves far less, and its GEMM is tall (``K/g*prod(k)`` rows) where im2col's
    has ``K/g``.  Measured (float32, two workers, medians): C64 -> K3 7x7 on 128x128
    50.3 -> 14.3 ms, C128 -> K8 5x5 on 32x32 22.4 -> 10.6, C256 -> K21 3x3 on 64x64
    38.0 -> 26.0.  It loses where the products cover many positions no output needs (a
    stride's skipped ones, a small plane's border) or ``K`` is near ``C``, hence
    :func:`_taps_first`.  On the flattened padded grid (as :func:`_forward_flat` takes
    its columns) each tap's sum is one contiguous run; the outputs are that run's
    positions within the rows.  Tiles: (samples, output rows, groups), each with its
    input rows padded in place.  ``store``: see :func:`forward`; ``gb``: the bias as
    ``(g, K/g, 1)``."""
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    Cg, Kg = C // g, K // g
    r, kk = spec.rank, math.prod(spec.kernel_size)
    item = dtype.itemsize
    Pd = spec.padded_shape(x.shape[2:])
    pst = [math.prod(Pd[i + 1:]) for i in range(r)]
    offs = [sum(t * d * p for t, d, p in zip(tap, spec.dilation, pst))
            for tap in kernel_offsets(spec)]
    # (g, K/g * kk, C/g): rows in (channel, tap) order
    wt = np.ascontiguousarray(w.reshape(g, Kg, Cg, kk).transpose(0, 1, 3, 2),
                              dtype=dtype).reshape(g, Kg * kk, Cg)
    reach = spec.dilation[0] * (spec.kernel_size[0] - 1)
    rest = sum((o - 1) * p for o, p in zip(O[1:], pst[1:])) + 1  # a grid row's outputs
    per_output = pst[0] / max(1, math.prod(O[1:]))  # grid positions per output
    y = None if store is not None else np.empty((N, K) + tuple(O), dtype=dtype)

    def sizes(n, nr, ng):
        """(input rows, grid positions of the sums, scratch elements) of a tile."""
        rows_in, Lt = nr + reach, (nr - 1) * pst[0] + rest
        return rows_in, Lt, n * ng * ((Cg + Kg * kk) * rows_in * pst[0] + Kg * Lt)

    # a tile's input rows include the kernel's reach below its output rows (rows of
    # C128 -> K8 5x5 on 20x20 planes: four output rows read eight, and 256 KiB of scratch
    # per worker measured 310 KiB before the plan counted them)
    def largest(plan):
        return max((sizes(b.stop - b.start, rw.stop - rw.start, gs.stop - gs.start)[2]
                    for b, rw, gs in plan), default=1)

    plan, _, G = _plan_in_budget(
        N, O, g, Kg, int(((Kg * kk + Cg) * per_output + Kg) * item) + 1,
        lambda plan, most, G: largest(plan) * item,
        limit=min(get_options().workspace_bytes // workers(), CACHE))
    bufs = Scratch(largest(plan), dtype)

    def run(tile):
        bs, rows, gs = tile
        n, nr, ng = bs.stop - bs.start, rows.stop - rows.start, gs.stop - gs.start
        rows_in, Lt, _ = sizes(n, nr, ng)
        Lin = rows_in * pst[0]
        buf = bufs.get()
        xt = buf[: n * ng * Cg * Lin].reshape((n, ng * Cg, rows_in) + tuple(Pd[1:]))
        pad_rows_into(x[bs, gs.start * Cg:gs.stop * Cg], spec.padding, rows.start, xt)
        buf = buf[xt.size:]
        U = buf[: n * ng * Kg * kk * Lin].reshape(n, ng, Kg * kk, Lin)
        np.matmul(wt[gs], xt.reshape(n, ng, Cg, Lin), out=U)
        U = U.reshape(n, ng * Kg, kk, Lin)
        acc = buf[U.size: U.size + n * ng * Kg * Lt].reshape(n, ng * Kg, Lt)
        np.copyto(acc, U[:, :, 0, offs[0]:offs[0] + Lt])
        for t in range(1, kk):
            acc += U[:, :, t, offs[t]:offs[t] + Lt]
        block = as_strided(acc, (n, ng * Kg, nr) + tuple(O[1:]),
                           acc.strides[:2] + tuple(p * item for p in pst), writeable=False)
        ks = slice(gs.start * Kg, gs.stop * Kg)
        if store is None:
            put(y[bs, ks, rows], block, None if gb is None else gb[gs].reshape((-1,) + (1,) * r))
        else:
            store(bs, ks, rows, block)

    run_tiles(run, plan, bufs)
    return y


# Most extra (garbage) columns the flat lowering may add, as a fraction of the outputs:
# 3x3 C256 on 14x14 planes (16/14: 14 % extra) measured 24.2 -> 28.5 ms with it.
FLAT_MAX_EXTRA = 0.1


def _flat(spec: ConvSpec, in_spatial, O) -> bool:
    """Stride 1, rank >= 2, and the padded rows at most :data:`FLAT_MAX_EXTRA` longer
    than the output rows (see :func:`_forward_flat`)."""
    if spec.rank < 2 or any(s != 1 for s in spec.stride) or 0 in O:
        return False
    P = spec.padded_shape(in_spatial)
    return math.prod(P[1:]) <= (1 + FLAT_MAX_EXTRA) * math.prod(O[1:])


def _forward_flat(x, w, spec: ConvSpec, O, dtype, store=None, gb=None) -> np.ndarray | None:
    """The stride-1 forward with columns taken from the flattened padded planes.

    On the flattened padded plane, output ``o`` reads input ``f(o) + off_t`` with
    ``f(o) = sum(o_i * pst_i)`` (``pst``: the padded plane's strides) and ``off_t`` the
    tap's offset, so tap ``t``'s column row is one contiguous run of the plane: the
    outputs laid out on the padded grid, the positions past each output row computed and
    dropped (``prod(P[1:]) / prod(O[1:]) - 1`` extra, at most :data:`FLAT_MAX_EXTRA`).
    Copying long runs instead of rows of ``O[-1]`` elements measured 2.2-2.7x faster
    per column element (one sample, C256 28x28: 0.38 -> 0.14 ms); the depthwise and
    32-group 3x3 forwards on one worker 11.8 -> 10.1 and 14.1 -> 12.2 ms (medians).  On
    two workers the difference was within this machine's noise.  ``store``: see
    :func:`forward`; ``gb``: the bias as ``(g, K/g, 1)``."""
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    Cg, Kg = C // g, K // g
    kk = math.prod(spec.kernel_size)
    item = dtype.itemsize
    wm = _wmat(w, g)
    Pd = spec.padded_shape(x.shape[2:])
    pst = [math.prod(Pd[i + 1:]) for i in range(len(Pd))]
    offs = [d * p for d, p in zip(spec.dilation, pst)]
    y = None if store is not None else np.empty((N, K) + tuple(O), dtype=dtype)
    extra = math.prod(Pd[1:]) / math.prod(O[1:])
    plan, _, G = _plan(N, O, g, Kg, int((Cg * (kk + 1) + Kg) * item * extra) + 1)
    rest = sum((o - 1) * p for o, p in zip(O[1:], pst[1:])) + 1
    reach = spec.dilation[0] * (spec.kernel_size[0] - 1)  # input rows past the output rows
    span = max(((bs.stop - bs.start) * ((r.stop - r.start - 1) * pst[0] + rest)
                for bs, r, _ in plan), default=1)
    most_in = max(((bs.stop - bs.start) * (r.stop - r.start + reach) * pst[0]
                   for bs, r, _ in plan), default=1)
    bufs = Scratch(span * G * (Cg * kk + Kg) + most_in * G * Cg, dtype)

    def run(tile):
        bs, rows, gs = tile
        n, nr, ng = bs.stop - bs.start, rows.stop - rows.start, gs.stop - gs.start
        Lt = (nr - 1) * pst[0] + rest
        buf = bufs.get()
        # the tile's rows of the padded input, padded here (in cache, on the workers)
        # rather than the whole input before the tiles start
        xt = buf[: n * ng * Cg * (nr + reach) * pst[0]].reshape(
            (n, ng * Cg, nr + reach) + tuple(Pd[1:]))
        pad_rows_into(x[bs, gs.start * Cg:gs.stop * Cg], spec.padding, rows.start, xt)
        sx = xt.strides
        win = as_strided(xt, (n, ng * Cg) + tuple(spec.kernel_size) + (Lt,),
                         (sx[0], sx[1]) + tuple(o * item for o in offs) + (item,),
                         writeable=False)
        buf = buf[xt.size:]
        cols = buf[: n * ng * Cg * kk * Lt].reshape(win.shape)
        np.copyto(cols, win)
        yf = buf[n * ng * Cg * kk * Lt: n * ng * (Cg * kk + Kg) * Lt].reshape(n, ng, Kg, Lt)
        np.matmul(wm[gs], cols.reshape(n, ng, Cg * kk, Lt), out=yf)
        yv = as_strided(yf, (n, ng * Kg, nr) + tuple(O[1:]),
                        (yf.strides[0], Lt * item) + tuple(p * item for p in pst),
                        writeable=False)
        if store is None:
            put(y[bs, gs.start * Kg:gs.stop * Kg, rows], yv,
                None if gb is None else gb[gs].reshape((-1,) + (1,) * len(O)))
        else:
            store(bs, slice(gs.start * Kg, gs.stop * Kg), rows, yv)

    run_tiles(run, plan, bufs)
    return y


def _forward_same(x, w, spec: ConvSpec, O, dtype, gb=None, store=None) -> np.ndarray | None:
    """The stride-1 forward of a layer that keeps its size after the first dimension:
    columns are runs of the unpadded input (:mod:`convolab.algorithms._samegrid`), and
    the product is written straight into the output.  Against the flat lowering (which
    pads each tile and drops the padded grid's extra positions) it copies neither the
    padded rows nor the result.  Measured (float32 medians, two workers): depthwise 3x3
    C256 28x28 8.6 -> 7.9 ms, 2 groups C64 56x56 19.2 -> 17.7; 32 groups equal.
    ``store``: see :func:`forward`."""
    N, C = x.shape[:2]
    K, g = w.shape[0], spec.groups
    Cg, Kg = C // g, K // g
    kk = math.prod(spec.kernel_size)
    S = x.shape[2:]
    grid = samegrid.Grid(spec, S)
    row, Sf = grid.row, math.prod(S)
    wm = _wmat(w, g)
    xf = x.reshape(N, C, Sf)
    y = None if store is not None else np.empty((N, K, math.prod(O)), dtype=dtype)
    # with ``store`` the tile's product is scratch too (see :func:`_forward`)
    Kp = Kg if store is not None else 0
    plan, _, G = _plan(N, O, g, Kg, (Cg * (kk + 1) + Kp) * dtype.itemsize)
    nmax = max((b.stop - b.start for b, _, _ in plan), default=1)
    rmax = max((r.stop - r.start for _, r, _ in plan), default=1)
    bufs = Scratch(grid.scratch_size(nmax, G * Cg, rmax) + nmax * G * Kp * rmax * row, dtype)

    def run(tile):
        bs, rows, gs = tile
        n, ng = bs.stop - bs.start, gs.stop - gs.start
        L = (rows.stop - rows.start) * row
        buf = bufs.get()
        cols = grid.tile_columns(xf[bs, gs.start * Cg:gs.stop * Cg], Sf, rows, buf)
        if store is not None:
            # the product after the columns (the run scratch behind them is free now)
            block = np.matmul(wm[gs], cols.reshape(n, ng, Cg * kk, L),
                              out=buf[cols.size:cols.size + n * ng * Kg * L].reshape(n, ng, Kg, L))
            store(bs, slice(gs.start * Kg, gs.stop * Kg), rows,
                  block.reshape((n, ng * Kg, rows.stop - rows.start) + tuple(O[1:])))
            return
        out = y[bs, gs.start * Kg:gs.stop * Kg, rows.start * row:rows.stop * row]
        np.matmul(wm[gs], cols.reshape(n, ng, Cg * kk, L), out=out.reshape(n, ng, Kg, L))
        add_bias(out.reshape(n, ng, Kg, L), None if gb is None else gb[gs])

    run_tiles(run, plan, bufs)
    return None if y is None else y.reshape((N, K) + tuple(O))


# Positions per output row below which the row GEMMs of the MEC lowering get too short:
# 3x3 stride 2 on 14 positions per row ran 1.6-1.9x slower than im2col, 3x3 on 56
# positions 9-10 % slower; 112 (stem) and 256 (conv3d) ran 8-25 % faster.
MEC_MIN_ROW = 96


def _mec(spec: ConvSpec, O) -> bool:
    """Lower only the last ``rank - 1`` dimensions (MEC, Cho & Brand 2017): rank >= 2,
    one group, the first dimension undilated with more than one tap, and rows of at
    least :data:`MEC_MIN_ROW` output positions."""
    return (spec.rank >= 2 and spec.groups == 1 and spec.dilation[0] == 1
            and spec.kernel_size[0] > 1 and math.prod(O[1:]) >= MEC_MIN_ROW)


def _forward_mec(x, w, spec: ConvSpec, O, dtype, bias=None) -> np.ndarray:
    """The forward with columns over the last ``rank - 1`` dimensions only.

    Every padded input row (first spatial dimension) ``h`` is lowered once into
    ``L[h] (C*prod(k[1:]), prod(O[1:]))``; output row ``o`` needs input rows
    ``o*s0 .. o*s0 + k0 - 1``, whose blocks lie next to each other in ``L``, so its
    column matrix ``(k0*C*prod(k[1:]), prod(O[1:]))`` is a view and all rows of a tile
    are one batched GEMM.  The copy is ``k0 / s0`` times smaller than im2col's.
    Measured (float32 medians, ms, im2col -> MEC, interleaved): 7x7 s2 stem forward
    23.7 -> 17.9 and fwd+bwd 63.5 -> 55.4; conv3d 3x3x3 C32 16^3 forward 15.6 -> 14.4 and
    fwd+bwd 40.8 -> 31.4 (its polyphase input gradient is a forward too).
    """
    N, C = x.shape[:2]
    K = w.shape[0]
    k0, s0 = spec.kernel_size[0], spec.stride[0]
    kr, Or = tuple(spec.kernel_size[1:]), tuple(O[1:])
    rows_per = C * math.prod(kr)
    Pr = math.prod(Or)
    item = dtype.itemsize
    wm = np.ascontiguousarray(np.moveaxis(w, 2, 1)).reshape(K, k0 * rows_per)
    y = np.empty((N, K, O[0], Pr), dtype=dtype)
    # one output row of one sample needs s0 new lowered input rows (plus the k0 - s0 halo)
    # the halo weighs on tiles of few rows: C46 3x3x4 on 13 x 3x23x11 (one output row)
    # had 12.6 MiB of tiles under an 8 MiB budget; so a plan over a worker's share of
    # what the budget leaves beside ``wm`` is made again with the size per position
    # scaled up (the cache target stays as it was measured)
    with _beside(wm.nbytes):
        share = get_options().workspace_bytes // workers()
        per = max(s0, 1) * rows_per * item
        for _ in range(16):
            plan, _ = tiles(N, O, per, cache=CACHE)
            most = max(((bs.stop - bs.start) * ((r.stop - r.start - 1) * s0 + k0)
                        for bs, r in plan), default=1)
            size = (most * rows_per * Pr + _input_tile_size(plan, spec, x.shape[2:], C)) * item
            if size <= share or all(b.stop - b.start == 1 and r.stop - r.start == 1
                                    for b, r in plan):
                break
            per = int(per * max(1.25, size / share)) + 1
        bufs = Scratch(size // item, dtype)

    def run(tile):
        bs, rows = tile
        n, nr = bs.stop - bs.start, rows.stop - rows.start
        H = (nr - 1) * s0 + k0
        # the tile's padded input rows (n, C, H, *P[1:]), padded here on the worker
        # rather than the whole input padded first in the calling thread
        xs, buf = _input_tile(x, spec, bs, slice(0, C), rows, bufs.get())
        sp = xs.strides
        win = as_strided(
            xs, (n, H, C) + kr + Or,
            (sp[0], sp[2], sp[1])
            + tuple(sp[3 + i] * d for i, d in enumerate(spec.dilation[1:]))
            + tuple(sp[3 + i] * st for i, st in enumerate(spec.stride[1:])),
            writeable=False)
        L = buf[: n * H * rows_per * Pr].reshape(win.shape)
        np.copyto(L, win)
        M = as_strided(L, (n, nr, k0 * rows_per, Pr),
                       (H * rows_per * Pr * item, s0 * rows_per * Pr * item, Pr * item, item),
                       writeable=False)
        np.matmul(wm, M, out=y[bs, :, rows].transpose(0, 2, 1, 3))
        add_bias(y[bs, :, rows], None if bias is None else bias.reshape(-1, 1, 1))

    run_tiles(run, plan, bufs)
    return y.reshape((N, K) + tuple(O))


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """gw = corr(x, gy): x (N, C, *S), gy (N, K, *O) -> (K, C/g, *k); O may be smaller
    than the formula gives (transposed-conv backward)."""
    g = spec.groups
    N, C = x.shape[:2]
    K = gy.shape[1]
    O = tuple(gy.shape[2:])
    P = math.prod(O)
    dtype = np.result_type(x, gy)
    kk = math.prod(spec.kernel_size)
    Kg, Ckg = K // g, C // g * kk
    gyg = gy.reshape(N, g, Kg, P)
    if _is_pointwise(spec, x.shape[2:], O):
        xs = x.reshape(N, g, C // g, P)

        def run_pw(tile):
            bs, ps = tile
            return [(Ellipsis, np.matmul(gyg[bs, :, :, ps],
                                         xs[bs, :, :, ps].transpose(0, 1, 3, 2)).sum(axis=0))]

        plan = _pointwise_plan(N, P, (C + K) * dtype.itemsize)
        gw = run_tiles_sum(run_pw, plan, np.zeros((g, Kg, C // g), dtype=dtype))
        return gw.reshape((K, C // g) + tuple(spec.kernel_size))
    prob = dict(N=N, C=C, K=K, g=g, S=x.shape[2:], O=O)
    if _lane("weight_grad", spec, prob, dtype.itemsize):
        return _lane_weight_grad(x, gy, spec)
    if _last_columns(spec, prob, dtype.itemsize, "weight_grad"):
        return _weight_grad_last(x, gy, spec, dtype)
    slabs = _plane_slabs(spec, O, (C * kk + K) * dtype.itemsize)
    if slabs:
        sp0 = _unpadded(spec)
        chunks, rest = _slab_batches(spec, N, x.shape[2:], C, slabs, dtype.itemsize,
                                     copies=_pads(spec))
        with options(workspace_bytes=rest):
            return sum(weight_grad(_padded_slab(x[bs], spec, h0, h1), gy[bs, :, :, h0:h1], sp0)
                       for bs in chunks for h0, h1 in slabs)
    Cg = C // g

    # the scratch: a tile's padded input rows, its columns and (with several samples)
    # its gy in (group, channel, sample, position) order, which a reshape had copied
    # outside it (~1 MiB per worker beside 2.5 MiB of columns: C16 -> K132 4x4, N16)
    def scratch(plan, most, G):
        return (most * G * (Cg * kk + Kg)
                + _input_tile_size(plan, spec, x.shape[2:], G * Cg)) * dtype.itemsize

    plan, most, G = _plan_in_budget(N, O, g, Kg, (Cg * kk + Kg) * dtype.itemsize, scratch)
    # beside its buffer, each worker holds the partial sum its tile returns
    bufs = Scratch(scratch(plan, most, G) // dtype.itemsize, dtype,
                   held=G * Ckg * Kg * dtype.itemsize)

    def run(tile):
        bs, rows, gs = tile
        ng = gs.stop - gs.start
        xt, buf = _input_tile(x, spec, bs, slice(gs.start * Cg, gs.stop * Cg), rows, bufs.get())
        cols = _tile_cols(xt, spec, slice(None), slice(0, rows.stop - rows.start), O, buf,
                          batch_inner=True)  # (ng*Cg*kk, n, Pt)
        n, Pt = cols.shape[1:]
        gyv = gyg[bs, gs, :, _row_positions(rows, O)].transpose(1, 2, 0, 3)  # (ng, Kg, n, Pt)
        if n > 1:
            gyt = buf[cols.size:cols.size + gyv.size].reshape(gyv.shape)
            np.copyto(gyt, gyv)
            gyv = gyt
        cols = cols.reshape(ng, Ckg, n * Pt)
        gyt = gyv.reshape(ng, Kg, n * Pt)
        if rows_first:
            return [(gs, np.matmul(cols, gyt.transpose(0, 2, 1)))]  # (g, Ckg, Kg)
        return [(gs, np.matmul(gyt, cols.transpose(0, 2, 1)))]  # (g, Kg, Ckg)

    # cols @ gy^T (C/g*kk rows) rather than gy @ cols^T (K/g rows): measured 8-43 %
    # faster (medians) on the suite's conv3d, 1-D, 3x3 C64 and stem weight gradients;
    # with K/g = 8 (32 groups) it was 13 % slower, so small K/g keep the other order.
    # Its result is transposed at the end, a pass over gw: with few positions against
    # gw's size that pass outweighs the products (C256 -> K128 7x7 stride 2 on 7x7
    # planes, 16 positions: 4.7 ms of an 11.4 ms weight gradient), so there too
    rows_first = Kg >= 16 and N * P >= WG_ROWS_FIRST
    shape = (g, Ckg, Kg) if rows_first else (g, Kg, Ckg)
    if len(plan) == 1:
        # one tile: its product is the result (no zeroed sum to add it to)
        out = []
        run_tiles(lambda tile: out.append(run(tile)[0][1]), plan, bufs)
        gw = out[0]
    else:
        gw = run_tiles_sum(run, plan, np.zeros(shape, dtype=dtype), bufs)
    if rows_first:
        gw = np.ascontiguousarray(gw.transpose(0, 2, 1))
    return gw.reshape((K, C // g) + tuple(spec.kernel_size))


# _forward: the most output positions per sample for one GEMM over a tile's samples
FEW_POSITIONS = 64

# weight_grad: the fewest positions (N * prod(O)) for the cols @ gy^T order
WG_ROWS_FIRST = 256


def _phase_layout(spec: ConvSpec, buf_shape, O):
    """Polyphase view of the padded input gradient for a flat col2im.

    Padded position ``o*s + t*d`` lies in phase ``(t*d) % s`` at phase position
    ``o + (t*d)//s``.  Each phase plane ``Hs = ceil(buf/s)`` is flattened; on it the
    outputs ``o`` sit at ``f = sum(o_i * pst_i)`` and tap ``t`` adds at ``f + off_t``,
    so every tap is one contiguous run of ``Lf`` elements (a long ufunc loop) instead of
    rows of ``O[-1]`` strided elements.  Returns (Hs, phase of each tap, off_t, Lf).
    """
    s, d = spec.stride, spec.dilation
    Hs = tuple(-(-b // si) for b, si in zip(buf_shape, s))
    pst = [math.prod(Hs[i + 1:]) for i in range(len(Hs))]
    phases, offs = [], []
    for t in kernel_offsets(spec):
        pos = [ti * di for ti, di in zip(t, d)]
        phases.append(tuple(p % si for p, si in zip(pos, s)))
        offs.append(sum((p // si) * ps for p, si, ps in zip(pos, s, pst)))
    Lf = sum((o - 1) * ps for o, ps in zip(O, pst)) + 1
    return Hs, phases, offs, Lf, pst


def _phase_copies(spec: ConvSpec, Hs, in_spatial) -> list:
    """``(phase, source slices, gx slices)`` for every phase with positions inside the
    crop: phase ``phi`` holds padded positions ``q*s + phi``, which are gx's
    ``q*s + phi - lo``."""
    dims = []
    for s, (lo, _), n, h in zip(spec.stride, spec.padding, in_spatial, Hs):
        dim = []
        for phi in range(s):
            q0 = max(0, -(-(lo - phi) // s))
            q1 = min(h, -(-(lo + n - phi) // s))
            if q1 > q0:
                a = q0 * s + phi - lo
                dim.append((phi, slice(q0, q1), slice(a, a + (q1 - q0 - 1) * s + 1, s)))
        dims.append(dim)
    return [(tuple(d[0] for d in combo), tuple(d[1] for d in combo),
             tuple(d[2] for d in combo)) for combo in itertools.product(*dims)]


def _even_batches(N: int, most: int) -> list:
    """Batch slices of at most ``most`` samples, as many as a multiple of the workers
    and of sizes differing by one at most: 16 samples in at most 3 on two workers are
    3+3+3+3+2+2, not 3+3+3+3+3+1, which left one worker 9 samples and the other 7.
    A batch that fits one tile is split too, so that every worker gets a tile: a single
    tile runs in the calling thread, where its product (now over all the samples at
    once) is big enough for BLAS's own threads, which keep spinning after it and slowed
    the convolutions that followed (the demo's training 19.4 -> 22.2 s)."""
    nw = workers()
    T = -(-N // max(1, most))
    if N > 1 and nw > 1:
        T = min(N, -(-T // nw) * nw)
    return [slice(N * t // T, N * (t + 1) // T) for t in range(T)]


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """gx = conv_transpose(gy, w): gy (N, K, *O), w (K, C/g, *k) -> (N, C, *in_spatial).

    ``dcols = w^T @ gy`` per tile, then a polyphase flat col2im (see :func:`_phase_layout`):
    ``gy`` is first spread onto the flat phase grid, so the GEMM writes ``dcols``
    directly in the layout whose taps add as contiguous runs.  In 2-D and 3-D the tile's
    samples lie side by side on that grid, so the product is one GEMM per group over all
    of them (per sample, the GEMMs of the 4x4 stride-2 transposed layer's 14x14 planes
    took 8.8 against 8.4 ms on one worker).  In 1-D each sample keeps its own product:
    there the single one measured slower (1.63 against 1.51 ms on 513-column rows, and
    its transposing spread 0.24 against 0.14).
    """
    g = spec.groups
    N, K = gy.shape[:2]
    Cg = w.shape[1]
    C = g * Cg
    O = tuple(gy.shape[2:])
    P = math.prod(O)
    kk = math.prod(spec.kernel_size)
    dtype = np.result_type(gy, w)
    wt = _wmat(w, g).transpose(0, 2, 1)  # (g, C/g*kk, K/g)
    gyg = gy.reshape(N, g, K // g, P)
    in_spatial = tuple(in_spatial)
    if _is_pointwise(spec, in_spatial, O):
        return _pointwise_products(wt, gyg, dtype).reshape((N, C) + in_spatial)
    if _lane("input_grad", spec, dict(N=N, C=C, K=K, g=g, S=in_spatial, O=O), dtype.itemsize):
        return _lane_input_grad(gy, w, spec, in_spatial)
    buf_shape = grad_buffer_shape(spec, in_spatial, O)
    slabs = _plane_slabs(spec, O, (C * kk + K) * dtype.itemsize)
    if slabs:  # each slab's gradient lands on its rows of the padded buffer (halos add)
        sp0 = _unpadded(spec)
        gxp = np.zeros((N, C) + buf_shape, dtype=dtype)
        chunks, rest = _slab_batches(spec, N, in_spatial, C, slabs, dtype.itemsize)
        with options(workspace_bytes=rest):
            for bs in chunks:
                for h0, h1 in slabs:
                    rows = _slab_rows(spec, h0, h1)
                    sub = (buf_shape[0], rows.stop - rows.start) + tuple(buf_shape[2:])
                    gxp[bs, :, :, rows] += input_grad(gy[bs, :, :, h0:h1], w, sp0, sub)
        crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(spec.padding, in_spatial))
        return np.ascontiguousarray(gxp[(slice(None), slice(None)) + crop])
    Hs, phases, offs, Lf, pst = _phase_layout(spec, buf_shape, O)
    S = spec.stride
    nph = math.prod(S)
    per_sample = (C * kk + K) * Lf + C * nph * math.prod(Hs)
    per_worker = get_options().workspace_bytes // workers()
    step = max(1, min(N, min(per_worker, CACHE) // max(1, per_sample * dtype.itemsize)))
    if per_sample * dtype.itemsize > per_worker:
        return _input_grad_rows(gy, w, spec, in_spatial)
    gx = np.empty((N, C) + in_spatial, dtype=dtype)
    bufs = Scratch(step * C * kk * Lf, dtype)
    item = dtype.itemsize
    phase_copies = _phase_copies(spec, Hs, in_spatial)
    if sum(math.prod(sl.stop - sl.start for sl in src) for _, src, _ in phase_copies) < (
            math.prod(in_spatial)):  # some positions no phase reaches: zeros
        gx[...] = 0

    r = spec.rank
    Kg = K // g
    nph_flat = math.prod(Hs)
    # per phase: its taps as (tap index, flat offset); the first one is copied, the
    # others added (zeros only where the first leaves the phase's plane uncovered)
    by_phase: dict = {}
    for j, (p, off) in enumerate(zip(phases, offs)):
        by_phase.setdefault(p, []).append((j, off))
    empty = [p for p in itertools.product(*(range(s) for s in S)) if p not in by_phase]

    # 2-D and 3-D: the tile's samples side by side on the flat phase grid, so that the
    # product is one GEMM per group over all of them; 1-D: one GEMM per sample (its rows
    # are long already, and the transposing spread cost more than the wider GEMM gave)
    inner = r > 1
    spread = tuple(p * item for p in pst)

    def run(bs):
        n = bs.stop - bs.start
        gyt = gyg[bs].reshape((n, g, Kg) + O)
        dcols = bufs.get()[: C * kk * n * Lf]
        if inner:
            grid = np.zeros((g, Kg, n, Lf), dtype=dtype)
            as_strided(grid, (g, Kg, n) + O, grid.strides[:3] + spread)[...] = gyt.transpose(
                (1, 2, 0) + tuple(range(3, 3 + r)))
            dcols = dcols.reshape(g, Cg * kk, n * Lf)
            np.matmul(wt, grid.reshape(g, Kg, n * Lf), out=dcols)
            dv = dcols.reshape(C, kk, n, Lf)
        else:
            grid = np.zeros((n, g, Kg, Lf), dtype=dtype)
            as_strided(grid, (n, g, Kg) + O, grid.strides[:3] + spread)[...] = gyt
            dcols = dcols.reshape(n, g, Cg * kk, Lf)
            np.matmul(wt, grid, out=dcols)
            dv = dcols.reshape(n, C, kk, Lf).transpose(1, 2, 0, 3)  # (C, kk, n, Lf)
        ph = np.empty((C, n) + tuple(S) + Hs, dtype=dtype)
        flat = ph.reshape((C, n) + tuple(S) + (nph_flat,))
        for p, taps in by_phase.items():
            plane = flat[(slice(None), slice(None)) + p]
            (j, off), rest = taps[0], taps[1:]
            plane[..., :off] = 0
            plane[..., off:off + Lf] = dv[:, j]
            plane[..., off + Lf:] = 0
            for j, off in rest:
                plane[..., off:off + Lf] += dv[:, j]
        for p in empty:
            flat[(slice(None), slice(None)) + p] = 0
        # each phase's positions that survive the crop, written straight into gx (one
        # strided copy per phase; interleaving all phases first and then cropping was two
        # full copies: 3.6 ms of a 22 ms 3x3 s2 input gradient on one worker)
        for phi, src, dst in phase_copies:
            gx[(bs, slice(None)) + dst] = ph[(slice(None), slice(None)) + phi + src].swapaxes(0, 1)

    run_tiles(run, _even_batches(N, step), bufs)
    return gx


def _input_grad_rows(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """col2im over row tiles, for samples too big for the workspace budget."""
    g = spec.groups
    N, K = gy.shape[:2]
    Cg = w.shape[1]
    C = g * Cg
    O = tuple(gy.shape[2:])
    P = math.prod(O)
    kk = math.prod(spec.kernel_size)
    dtype = np.result_type(gy, w)
    wt = _wmat(w, g).transpose(0, 2, 1)  # (g, C/g*kk, K/g)
    gyg = gy.reshape(N, g, K // g, P)
    in_spatial = tuple(in_spatial)
    padded = spec.padded_shape(in_spatial)
    buf_shape = grad_buffer_shape(spec, in_spatial, O)
    plan, most = tiles(N, O, C * kk * dtype.itemsize, cache=CACHE)
    buf = scratch(most * C * kk, dtype)
    taps = list(kernel_offsets(spec))
    if buf_shape != in_spatial and all(lo >= 0 for lo, _ in spec.padding):
        return _input_grad_rows_cropped(gyg, wt, spec, in_spatial, O, plan, buf, taps)
    gxp = np.zeros((N, C) + buf_shape, dtype=dtype)
    for bs, rows in plan:
        _add_tile_taps(gyg, wt, spec, O, bs, rows, buf, taps, gxp[bs, :, input_rows(rows, spec)])
    if buf_shape == in_spatial and all(lo == 0 and hi == 0 for lo, hi in spec.padding):
        return gxp
    gxp = gxp[(Ellipsis,) + tuple(slice(0, p) for p in padded)]
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


def _input_grad_rows_cropped(gyg, wt, spec: ConvSpec, in_spatial, O, plan, buf, taps):
    """:func:`_input_grad_rows` for a padded layer: each row tile's taps add into a
    zeroed buffer of its own input rows, whose rows inside the input are then added
    into ``gx`` (tiles run in order, so the rows two tiles share add up).  A padded
    buffer of the whole gradient, cropped at the end, was scratch of the result's size
    outside the workspace budget: 64 MiB for a 1-D C64 k3 stride-2 layer on 2**18
    samples under a 1 MiB budget (1-D layers of long signals take this path)."""
    N, g = gyg.shape[:2]
    C = g * wt.shape[1] // math.prod(spec.kernel_size)
    dtype = buf.dtype
    buf_shape = grad_buffer_shape(spec, in_spatial, O)
    lo0 = spec.padding[0][0]
    rest = tuple(slice(lo, lo + n) for (lo, _), n in zip(spec.padding[1:], in_spatial[1:]))
    gx = np.zeros((N, C) + tuple(in_spatial), dtype=dtype)
    for bs, rows in plan:
        ir = input_rows(rows, spec)
        gt = np.zeros((bs.stop - bs.start, C, ir.stop - ir.start) + tuple(buf_shape[1:]),
                      dtype=dtype)
        _add_tile_taps(gyg, wt, spec, O, bs, rows, buf, taps, gt)
        a, b = max(ir.start, lo0), min(ir.stop, lo0 + in_spatial[0])
        if b > a:
            gx[bs, :, a - lo0:b - lo0] += gt[(slice(None), slice(None),
                                              slice(a - ir.start, b - ir.start)) + rest]
    return gx


def _add_tile_taps(gyg, wt, spec: ConvSpec, O, bs: slice, rows: slice, buf, taps, gt) -> None:
    """One row tile of the col2im: ``dcols = w^T @ gy`` for samples ``bs`` and output rows
    ``rows`` (in ``buf``), each tap's columns added into ``gt``, the tile's input rows
    ``(n, C, input rows, *rest)`` on the gradient buffer's grid."""
    g = gyg.shape[1]
    Ot = (rows.stop - rows.start,) + tuple(O[1:])
    gyt = gyg[bs, :, :, _row_positions(rows, O)]
    n = gyt.shape[0]
    dcols = buf[: n * g * wt.shape[1] * math.prod(Ot)].reshape(n, g, wt.shape[1], -1)
    np.matmul(wt, gyt, out=dcols)
    dv = dcols.reshape((n, g * wt.shape[1] // math.prod(spec.kernel_size))
                       + tuple(spec.kernel_size) + Ot)
    for t in taps:
        gt[(slice(None), slice(None)) + tap_slices(t, spec, Ot)] += dv[
            (slice(None), slice(None)) + t
        ]
