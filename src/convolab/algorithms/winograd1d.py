"""Winograd minimal filtering F(m, r) for 1-D kernels of 3 to 9 taps (stride 1).

Part of the ``winograd`` algorithm: :mod:`convolab.algorithms.winograd` hands it every
role of every 1-D kernel of 3 to 9 taps.  With ``m``
outputs per tile and ``a = m + r - 1`` inputs per tile, one output tile of the
correlation is::

    y = A^T [ (G g) * (B^T d) ]

so a tile costs ``a`` multiplications per output channel and input channel instead of
``m r``: for 7 taps, F(6, 7) does 12 where the direct form does 42 (3.5x fewer).  The
matrices come from the Toom-Cook construction on the interpolation points
:data:`POINTS` (and infinity), computed exactly in rationals (:func:`matrices`): ``m``
is 6 up to 7 taps and 4 for 8 and 9, so that ``a <= 12``.  With the points
0, +-1, +-2, +-1/2, +-3/2, +-2/3 the float32 relative error stays around 1e-5 or
below (tested against a float64 reference for every kernel size) on centred data; a
large common offset with taps that cancel reached 1e-3, so every call checks an error
estimate from the tiles' input RMS and largest output and hands such calls to GEMM
(:func:`_check_accuracy`).

Each tile of samples x output tiles (sized by the cache target and the workspace
budget, run on the workers like every tiled path):

1. copies its input span, zero-padded, into scratch and gathers the overlapping
   ``a``-long windows into ``D (a, C, T)`` (one strided copy),
2. ``V = B^T D``: one GEMM with an ``a``-long inner dimension,
3. ``M[xi] = U[xi] (K, C) @ V[xi] (C, T)`` for the ``a`` points (batched GEMM), with
   ``U = G w`` computed once per call,
4. ``Y = M^T A`` written as ``(K, T, m)``, so that the output rows are contiguous runs,
   and one copy into the output.

Dilation ``d``: the outputs of phase ``p`` (``o = p mod d``) are the undilated
correlation of the inputs of that phase, so a tile holds ``m`` outputs of each of the
``d`` phases, with the phase axis outside the long tile axis in the gather, and the
output is written back one phase (a slice strided by ``d``) at a time.

Measured (float32, 2 workers, medians of interleaved calls, forward, ms, GEMM -> this):
conv1d k7 N32 C64 L1024 K64 16.4 -> 10.5 (F(4, 7): 9.7 where F(6, 7) took 8.2 in the
same run), 5 taps 13.9 -> 9.2, 9 taps 22.1 -> 13.6, 3 taps 8.8 -> 7.2, 3 taps with
dilation 4 (N16 L2048) 9.9 -> 8.6, 5 taps with dilation 2 11.9 -> 8.7; the old F(4, 3)
path took 9.0 and 14.1 on the two 3-tap layers.  GEMM stays faster on 8-channel layers
and short signals (the cost model, :func:`cost`).

``input_grad`` (stride 1) is the same correlation on the zero-padded gradient with the
kernel flipped and its channel axes swapped.  ``weight_grad`` is F(r, m), the transpose
(:func:`weight_grad`); measured against GEMM's: 7 taps C64 18.5 -> 12.2 ms, C128 17.6
-> 10.4, 3 taps 10.8 -> 9.8 (the F(3, 4) of :mod:`~convolab.algorithms.winograd` 13.8),
5 taps with dilation 2 12.2 -> 9.8; within 10 % either way on the other shapes.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..options import get_options
from ..spec import ConvSpec
from ._threads import (RESULTS_HELD_PER_WORKER, Scratch, matmul, run_tiles, run_tiles_sum,
                       workers)
from ._finite import check_block, flag_inaccurate, tile_checks
from ._tiles import CACHE_BYTES, WG_CACHE_BYTES, put, tiles

# Finite interpolation points, in the order they are used (a - 1 of them for F(m, r)).
POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), Fraction(3, 2),
          Fraction(-3, 2), Fraction(2, 3), Fraction(-2, 3))
TAPS = range(3, 10)  # kernel sizes handled here (every role)


def tile_outputs(r: int) -> int:
    """``m``, the outputs per tile for an ``r``-tap kernel: 6 up to 7 taps, else 4
    (so that ``a = m + r - 1 <= 12``)."""
    return 6 if r <= 7 else 4


def matrices(r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T (m, a), G (a, r), B^T (a, a))`` of this module's F(m, r), ``m =``
    :func:`tile_outputs` ``(r)`` (see :func:`toom_cook`)."""
    return toom_cook(tile_outputs(r), r)


@functools.cache
def toom_cook(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T (m, a), G (a, r), B^T (a, a))`` of F(m, r) as float64, built exactly from
    the first ``a - 1`` of :data:`POINTS` and infinity (``a = m + r - 1 <= 12``).

    ``A^T`` and ``G`` are the Vandermonde-type matrices of the Toom-Cook construction
    (the point at infinity contributes the last column of ``A^T`` and the last row of
    ``G``); ``B^T`` is then the unique solution of
    ``sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k]``, solved in rationals and
    checked exactly."""
    a = m + r - 1
    if not 2 <= a <= len(POINTS) + 1 or m < 1 or r < 1:
        raise ValueError(f"F({m}, {r}) needs 2 <= m + r - 1 <= {len(POINTS) + 1}")
    pts = [Fraction(p) for p in POINTS[: a - 1]]
    at = [[p**i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = [[p**k / math.prod(p - q for q in pts if q != p) for k in range(r)] for p in pts]
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    # column l of B^T solves coef @ b = e_l, coef[(i, k), j] = at[i][j] g[j][k]: the
    # normal equations (a x a, exact) of that consistent overdetermined system
    coef = [[at[i][j] * g[j][k] for j in range(a)] for i in range(m) for k in range(r)]
    normal = [[sum(row[u] * row[v] for row in coef) for v in range(a)] for u in range(a)]
    bt = [[Fraction(0)] * a for _ in range(a)]
    for col in range(a):
        rhs = [sum(row[u] for row, (i, k) in zip(coef, _pairs(m, r)) if i + k == col)
               for u in range(a)]
        for j, v in enumerate(_solve(normal, rhs)):
            bt[j][col] = v
    for (i, k), row in zip(_pairs(m, r), coef):
        for col in range(a):
            if sum(row[j] * bt[j][col] for j in range(a)) != int(col == i + k):
                raise AssertionError(f"F({m}, {r}): the Toom-Cook matrices do not check")
    return (np.array(at, dtype=np.float64), np.array(g, dtype=np.float64),
            np.array(bt, dtype=np.float64))


def _pairs(m: int, r: int) -> list[tuple[int, int]]:
    return [(i, k) for i in range(m) for k in range(r)]


def _solve(mat, rhs):
    """Gauss-Jordan elimination in rationals (the system is small and regular)."""
    n = len(rhs)
    aug = [list(row) + [b] for row, b in zip(mat, rhs)]
    for c in range(n):
        piv = next(i for i in range(c, n) if aug[i][c] != 0)
        aug[c], aug[piv] = aug[piv], aug[c]
        p = aug[c][c]
        aug[c] = [v / p for v in aug[c]]
        for i in range(n):
            if i != c and aug[i][c] != 0:
                f = aug[i][c]
                aug[i] = [v - f * u for v, u in zip(aug[i], aug[c])]
    return [aug[i][n] for i in range(n)]


def handles(role: str, spec: ConvSpec) -> bool:
    """Whether this module, not :mod:`~convolab.algorithms.winograd`'s F(4, 3), answers
    for ``role``: every role of 1-D kernels of 3 to 9 taps."""
    return spec.rank == 1 and spec.kernel_size[0] in TAPS


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Every role of ungrouped, stride-1 1-D convolutions with 3 to 9 taps, any
    dilation; the weight gradient only where every worker's share of the workspace
    budget holds the ``(a, K, C)`` products it may keep
    (:data:`~._threads.RESULTS_HELD_PER_WORKER`) and one tile (otherwise GEMM runs it)."""
    if not (handles(role, spec) and spec.stride == (1,) and spec.groups == 1):
        return False
    if role != "weight_grad":
        return True
    r, d = spec.kernel_size[0], spec.dilation[0]
    m = tile_outputs(r)
    a = m + r - 1
    C, K, item = x_shape[1], w_shape[0], np.dtype(dtype).itemsize
    need = RESULTS_HELD_PER_WORKER * a * K * C * item + _wg_per_tile(r, C, K, d, item)
    return workers() * need <= get_options().workspace_bytes


def _per_tile(r: int, C: int, K: int, item: int) -> int:
    """Scratch bytes per output tile: its share of the padded input (m C), the gathered
    and the transformed windows (a C each), the products (a K) and the outputs (m K)."""
    m = tile_outputs(r)
    a = m + r - 1
    return (m * C + 2 * a * C + a * K + m * K) * item


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """GEMM FLOPs of the transforms and the point-wise products, and the bytes they move,
    scaled by 0.6 and 0.5: fitted to interleaved forward medians against GEMM on sixteen
    1-D shapes (3-9 taps, 8-256 channels, lengths 40-8192, dilation 1-8), where these
    factors lose 0.2 ms in all by picking the slower of the two (a 40-long signal, 1.9
    vs 1.7 ms, and a 3-tap 32-channel layer, 1.14 vs 1.10; unscaled counts lose 9.7 ms,
    the F(4, 3) path's factors of 1.6 lose 30 ms).  The tiles' buffers stay in the cache, so their
    bytes cost less than the main-memory copies of GEMM's columns.  The weight
    gradient's estimate has its per-tile products on top (:data:`WG_TILE`)."""
    r = spec.kernel_size[0]
    m = tile_outputs(r)
    a = m + r - 1
    N, C, K = p["N"], p["C"], p["K"]
    d = spec.dilation[0]
    T = N * -(-p["O"][0] // (m * d)) * d
    flops = 2 * T * (a * a * C + a * C * K + a * m * K)
    eff = min(1.0, K / 32) * min(1.0, C / 32)
    moved = T * itemsize * (m * C + a * C * 3 + a * K * 2 + m * K * 2)
    if d > 1:
        # the output is written back one phase at a time (strided by d)
        moved += 4 * itemsize * (N * C * p["S"][0] + N * K * p["O"][0])
    if role != "weight_grad":
        # the weight transform U = G w and U itself, read by every tile (winograd2d)
        flops += 2 * 2 * a * r * K * C
        plan = tiles(N, (-(-p["O"][0] // (m * d)),), _per_tile(r, C, K, itemsize) * d,
                     cache=CACHE_BYTES)[0]
        moved += a * K * C * itemsize * (1 + len(plan))
        return 0.6 * flops / max(eff, 1e-3), 0.5 * moved
    # the weight gradient also gathers and transforms gy (its bytes at 1.2), and each
    # tile of its plan writes an (a, K, C) product that is folded into the sum (WG_TILE)
    scale, tile_ns = WG_TILE
    plan = _wg_plan(N, p["O"][0], r, C, K, d, itemsize)[0]
    per_tile = 8 * tile_ns * len(plan) * a * K * C * itemsize / 4
    return scale * 0.6 * flops / max(eff, 1e-3), scale * 1.2 * moved + per_tile


# The weight gradient's estimate: (factor on the per-position estimate above, ns per
# element of each plan tile's (a, K, C) product).  On short signals with many channels
# those products are the work (N4 C256 -> K256 5 taps on 32 samples: estimated 0.62
# ms, ran 3.7; GEMM 1.05).
# Fitted (float32, two workers, medians; .dev/w1data.py, w1fit.py) on 180 1-D layers of
# 3-9 taps, 16-256 channels, 32-4096 samples: rms log error 0.57-0.62 -> 0.26-0.27 (and
# on the held-out set 0.52-0.60 -> 0.27-0.28); the time its choice loses against the
# fastest, geomean over three sets 5.5 / 3.7 / 6.0 -> 3.7 / 0.9 / 1.8 %.  The forward
# and input gradient read the transformed weight per tile too, and the same fit cut their
# rms error alike (0.44-0.59 -> 0.25-0.31), but chose worse on two of the three sets
# against GEMM's 1-D estimates, which were fitted to choose rather than to predict
# (:data:`convolab.algorithms.gemm.COST_1D`): they are left as they were.
WG_TILE = (0.66, 4.7)


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """Per-worker scratch of the largest tile, times the workers (the weight gradient:
    its larger tiles, and one ``(a, K, C)`` product per worker)."""
    r, d = spec.kernel_size[0], spec.dilation[0]
    m = tile_outputs(r)
    a = m + r - 1
    item = np.dtype(dtype).itemsize
    C, K = p["C"], p["K"]
    halo = d * (a - m) * C * item * p["N"]
    if role == "weight_grad":
        _, most, per = _wg_plan(p["N"], p["O"][0], r, C, K, d, item)
        return workers() * (most * per + RESULTS_HELD_PER_WORKER * a * K * C * item) + halo
    per = _per_tile(r, C, K, item) * d
    _, most = tiles(p["N"], (-(-p["O"][0] // (m * d)),), per, cache=CACHE_BYTES)
    return workers() * most * per + halo


def _scratch(plan, most: int, per: int, d: int, a: int, m: int, C: int, dtype,
             held: int = 0) -> Scratch:
    """Per-worker scratch for the tiles of ``plan``: ``per`` bytes per output tile, and
    the halo of ``d (a - m)`` input positions per sample (``held``: as Scratch's)."""
    nmax = max(bs.stop - bs.start for bs, _ in plan)
    return Scratch(most * per // dtype.itemsize + nmax * d * (a - m) * C, dtype, held)


# Sums of squares a float32 (complex64) span gives exactly enough in its own precision
_SQ_SAFE = (1e-30, 1e30)
_NARROW = (np.dtype(np.float32), np.dtype(np.complex64))


def _input_tiles(x, tile, lo, d, m, btd, buf, mags=None):
    """Steps 1-2 for ``tile`` (samples ``bs``, output tiles ``[t0, t1)``): the padded
    input span into ``buf``, its ``a``-long windows gathered (``D[xi, c, n, p, t] =
    x[n, c, d (t m + xi) + p + t0 m d - lo]``, the long tile axis inside) and transformed.
    Returns ``V (a, C T)``, the offset in ``buf`` after it and ``(bs, n, t0, t1, T)``."""
    bs, ts = tile
    t0, t1 = ts.start, ts.stop
    a = btd.shape[0]
    C, S = x.shape[1], x.shape[2]
    n, nt = bs.stop - bs.start, t1 - t0
    T = n * nt * d
    span = d * (nt * m + a - m)  # input positions the tile reads
    s0 = t0 * m * d - lo
    P = buf[: n * C * span].reshape(n, C, span)
    c0, c1 = max(0, s0), max(max(0, s0), min(S, s0 + span))
    P[:, :, : c0 - s0] = 0
    P[:, :, c1 - s0:] = 0
    P[:, :, c0 - s0: c1 - s0] = x[bs, :, c0:c1]
    if mags is not None and P.size:  # the span's sum of squares, while in the cache
        flat = P.reshape(-1)
        sq = float(np.vdot(flat, flat).real)
        if flat.dtype in _NARROW and not _SQ_SAFE[0] <= sq <= _SQ_SAFE[1]:
            # float32 squares underflow below ~1e-19 (the estimate came out 0 and a
            # 1.2e-3 error went through on inputs ~1e-24) and overflow above ~1e19 (a
            # needless GEMM rerun): such spans are summed again in float64
            wide = flat.astype(np.complex128 if flat.dtype.kind == "c" else np.float64)
            sq = float(np.vdot(wide, wide).real)
        mags.append((sq, flat.size))
    off = P.size
    D = buf[off: off + a * C * T].reshape(a, C, n, d, nt)
    sp = P.strides
    np.copyto(D, as_strided(P, D.shape, (d * sp[2], sp[1], sp[0], sp[2], m * d * sp[2]),
                            writeable=False))
    off += D.size
    V = buf[off: off + a * C * T].reshape(a, C * T)
    np.matmul(btd, D.reshape(a, C * T), out=V)
    return V, off + V.size, (bs, n, t0, t1, T)


def _correlate(x: np.ndarray, w: np.ndarray, O: int, lo: int, d: int = 1,
               bias=None) -> np.ndarray:
    """``y[n, k, o] = sum_{c, t} w[k, c, t] x[n, c, o + d t - lo]`` for ``o < O``, with
    ``x`` read as zero outside ``[0, S)``.

    With dilation ``d`` the outputs of phase ``p`` (``o = p mod d``) are the undilated
    correlation of the inputs of the same phase, so a tile is ``m`` consecutive outputs
    of each of the ``d`` phases (``m d`` consecutive outputs), gathered as ``d`` windows
    per point and written back interleaved: no phase split or merge of whole arrays.
    ``bias`` ``(K,)`` is added as they are written."""
    N, C, S = x.shape
    K, _, r = w.shape
    dtype = np.result_type(x, w)
    y = np.empty((N, K, O), dtype=dtype)
    if y.size == 0:
        return y
    m = tile_outputs(r)
    a = m + r - 1
    at, g, bt = matrices(r)
    att, btd = np.ascontiguousarray(at.T.astype(dtype)), bt.astype(dtype)
    U = matmul(g.astype(dtype), w.transpose(2, 0, 1).reshape(r, K * C))  # see winograd
    U = U.reshape(a, K, C)
    item = dtype.itemsize
    per = _per_tile(r, C, K, item) * d  # one tile: m outputs of each of the d phases
    plan, most = tiles(N, (-(-O // (m * d)),), per, cache=CACHE_BYTES)
    bufs = _scratch(plan, most, per, d, a, m, C, dtype)
    bv = None if bias is None else bias.reshape(K, 1)
    xmags: list = []  # per tile: the input's sum of squares, the largest |output|
    ymags: list = []

    def run(tile):
        buf = bufs.get()
        V, off, (bs, n, t0, t1, T) = _input_tiles(x, tile, lo, d, m, btd, buf, xmags)
        nt = t1 - t0
        M = buf[off: off + a * K * T].reshape(a, K, T)
        np.matmul(U, V.reshape(a, C, T), out=M)
        off += M.size
        Y = buf[off: off + m * K * T].reshape(K * T, m)
        np.matmul(M.reshape(a, K * T).T, att, out=Y)  # (K, n, p, t, i): o = d (t m + i) + p
        Yo = Y.reshape(K, n, d, nt * m)
        o0 = t0 * m * d
        for ph in range(d):  # phase ph: outputs o0 + ph, o0 + ph + d, ...
            cnt = len(range(o0 + ph, min(O, t1 * m * d), d))
            put(y[bs, :, o0 + ph: o0 + ph + d * cnt: d], Yo[:, :, ph, :cnt].transpose(1, 0, 2),
                bv)
        check_block(checks, y[bs, :, o0:min(O, t1 * m * d)], ymags)

    checks = tile_checks(dtype)
    run_tiles(run, plan, bufs)
    if xmags and ymags:
        sq, cnt = (sum(v) for v in zip(*xmags))
        _check_accuracy(r, dtype, w, math.sqrt(sq / max(cnt, 1)), max(ymags))
    return y


# The forward's rounding error against P = rms(x) sqrt(r) max_k ||w_k|| / max|y|
# (float32, k 3-9, C 16-1024; the same for every kernel size): inputs with a common
# offset (10, 100, 1000 with kernels whose taps cancel) made errors of at most 53 u P,
# 1e-3 at an offset of 1000 (P 435-795; offset 100: P 43-81, errors up to 1.5e-4).
# Zero-mean, ReLU, heavy-tailed ReLU and [0, 1] inputs had P <= 8 and errors of at most
# 2.5e-5 whatever their size, a floor the bound need not follow.  So the call goes to
# GEMM once KAPPA u P passes the tolerance (P > 42 in float32).
_KAPPA = 40.0
_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.complex64): 1e-4,
              np.dtype(np.float64): 1e-10, np.dtype(np.complex128): 1e-10}


def _check_accuracy(r: int, dtype: np.dtype, w: np.ndarray, xrms, ymax) -> None:
    """Hand the call to GEMM (:func:`flag_inaccurate`) when the error estimate passes the
    promised accuracy (relative to the largest output): a large common offset in the
    input with a kernel whose taps nearly cancel (a derivative or high-pass filter on
    raw sensor counts, say) put 1e-3 of the output's size into the transforms'
    rounding, where GEMM's error was 3e-5.  The input enters through its RMS, not its
    largest value: sparse large activations (heavy-tailed ReLU outputs) round no worse
    than others, an offset does."""
    tol = _TOLERANCE.get(np.dtype(dtype))
    if tol is None or not w.size:
        return
    u = float(np.finfo(np.dtype(dtype)).eps) / 2
    wnorm = math.sqrt(float(np.max(np.sum(np.abs(w).astype(np.float64) ** 2, axis=(1, 2)))))
    if not _KAPPA * u * xrms * math.sqrt(r) * wnorm <= tol * float(ymax):
        flag_inaccurate()


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None, *,
            bias=None) -> np.ndarray:
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    return _correlate(x, w, O[0], spec.padding[0][0], spec.dilation[0], bias)


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """gx[i] = sum_t gy[i + lo - t d] w[t]: the correlation of gy, read from
    ``d (k - 1) - lo`` positions before its start, with the flipped kernel (channels
    swapped), at the same dilation."""
    r, d = spec.kernel_size[0], spec.dilation[0]
    lo = spec.padding[0][0]
    wf = np.ascontiguousarray(w[:, :, ::-1].swapaxes(0, 1))
    return _correlate(gy, wf, tuple(in_spatial)[0], d * (r - 1) - lo, d)


def _wg_per_tile(r: int, C: int, K: int, d: int, item: int) -> int:
    """Scratch bytes per weight-gradient tile position: the forward's, plus the gy tiles
    gathered and transformed."""
    m = tile_outputs(r)
    a = m + r - 1
    return (_per_tile(r, C, K, item) + (m * K * 2 + a * K) * item) * d


def _wg_plan(N: int, O: int, r: int, C: int, K: int, d: int, item: int):
    m = tile_outputs(r)
    a = m + r - 1
    per = _wg_per_tile(r, C, K, d, item)
    total = N * -(-O // (m * d)) * per
    cache = max(WG_CACHE_BYTES, min(-(-total // workers()), 4 * a * C * K * item))
    # every worker also holds (a, K, C) products (its tile's, and those waiting to be
    # folded by run_tiles_sum): they come out of its share of the budget
    share = (get_options().workspace_bytes // workers()
             - RESULTS_HELD_PER_WORKER * a * K * C * item)
    plan, most = tiles(N, (-(-O // (m * d)),), per, cache=max(1, min(cache, share)))
    return plan, most, per


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """gw[k, c, t] = sum_{n, o} gy[n, k, o] x[n, c, o + d t - lo]: Winograd F(r, m), the
    transpose of F(m, r) (``A`` and ``G`` swap roles)::

        gw = G^T [ sum_tiles (A gy_tile) * (B^T d_tile) ]

    The input tiles are gathered and transformed as in the forward; the gy tiles
    (``m`` outputs of each phase, zero past the end) by ``A``; the sum over tiles is
    one GEMM per point ``M[xi] = Ugy[xi] (K, T) @ V[xi] (C, T)^T`` with the long tile
    axis inside, folded in tile order (:func:`~._threads.run_tiles_sum`).  ``O =
    gy.shape[2]`` may be smaller than the formula gives (transposed convolution)."""
    N, C, S = x.shape
    K, O = gy.shape[1], gy.shape[2]
    r, d = spec.kernel_size[0], spec.dilation[0]
    lo = spec.padding[0][0]
    dtype = np.result_type(x, gy)
    if N == 0 or O == 0:
        return np.zeros((K, C, r), dtype=dtype)
    m = tile_outputs(r)
    a = m + r - 1
    at, g, bt = matrices(r)
    am, btd = np.ascontiguousarray(at.T.astype(dtype)), bt.astype(dtype)  # am: (a, m)
    item = dtype.itemsize
    plan, most, per = _wg_plan(N, O, r, C, K, d, item)
    # beside its buffer, each worker holds its tile's (a, K, C) partial sum
    bufs = _scratch(plan, most, per, d, a, m, C, dtype, held=a * K * C * item)

    def run(tile):
        buf = bufs.get()
        V, off, (bs, n, t0, t1, T) = _input_tiles(x, tile, lo, d, m, btd, buf)
        nt = t1 - t0
        # gy positions o0 .. o0 + nt m d, zero past O; Gy[i, k, n, p, t] = gy[d (t m + i) + p]
        o0, span = t0 * m * d, nt * m * d
        Pg = buf[off: off + n * K * span].reshape(n, K, span)
        c1 = min(O, o0 + span) - o0
        Pg[:, :, :c1] = gy[bs, :, o0: o0 + c1]
        Pg[:, :, c1:] = 0
        off += Pg.size
        Gy = buf[off: off + m * K * T].reshape(m, K, n, d, nt)
        sp = Pg.strides
        np.copyto(Gy, as_strided(Pg, Gy.shape, (d * sp[2], sp[1], sp[0], sp[2],
                                                m * d * sp[2]), writeable=False))
        off += Gy.size
        Ug = buf[off: off + a * K * T].reshape(a, K * T)
        np.matmul(am, Gy.reshape(m, K * T), out=Ug)
        return [(Ellipsis, np.matmul(Ug.reshape(a, K, T), V.reshape(a, C, T).transpose(0, 2, 1)))]

    Msum = run_tiles_sum(run, plan, np.zeros((a, K, C), dtype=dtype), bufs)
    gw = matmul(g.T.astype(dtype), Msum.reshape(a, K * C))  # (r, K C)
    _check_weight_grad_accuracy(dtype, g, Msum.reshape(a, K * C), gw)
    return np.ascontiguousarray(gw.reshape(r, K, C).transpose(1, 2, 0))


# The weight gradient's rounding error against Q = max(|G^T| |Msum|) / max|gw|, the size
# of the point sums that G^T combines into each tap over the size of the result
# (float32; k 3-9, dilation 1-3, C 1-200, K 1-128, N*O 50-128k; normal, ReLU, sparse,
# mixed-magnitude inputs, offsets 1-1000 in either operand): errors of at most 7.6 u Q
# wherever they passed 1e-5.  An offset in the output gradient (a loss with a mean
# term, or a transposed layer's offset input, which takes gy's place here) makes the
# point sums large where the taps cancel: Q 170-350 and errors up to 1.6e-4, where GEMM
# stays near 1e-6; zero-mean and ReLU data had Q <= 115 (errors <= 3e-5).
_KAPPA_WG = 10.0


def _check_weight_grad_accuracy(dtype, g: np.ndarray, M: np.ndarray, gw: np.ndarray) -> None:
    """Hand the weight gradient to GEMM (:func:`flag_inaccurate`) when ``KAPPA_WG u Q``
    passes the promised accuracy (relative to the largest entry of the result)."""
    tol = _TOLERANCE.get(np.dtype(dtype))
    if tol is None or not gw.size:
        return
    u = float(np.finfo(np.dtype(dtype)).eps) / 2
    sums = float(np.max(np.abs(g.T).astype(np.float64) @ np.abs(M).astype(np.float64)))
    if not _KAPPA_WG * u * sums <= tol * float(np.max(np.abs(gw))):
        flag_inaccurate()
