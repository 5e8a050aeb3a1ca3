"""Winograd minimal filtering F(4x4, r x r) for square 2-D kernels of 4 and 5 taps.

Part of the ``winograd`` algorithm (3x3 kernels run F(4x4, 3x3) in
:mod:`convolab.algorithms.winograd`): every role of stride-1, undilated, ungrouped
convolutions (the weight gradient as F(r x r, 4x4), :func:`weight_grad`).  A 5x5
kernel takes ``8^2 = 64`` multiplications per 16 outputs instead of 400.  Measured
(float32 forward medians, ms, GEMM -> this): 5x5 C64 28x28 N16 19.0-25.4 -> 9.4, 5x5
C32 56x56 N8 13.6-15.3 -> 7.6, 5x5 C16 32x32 N32 7.1-8.0 -> 5.6, 4x4 C64 14x14 N16
4.5-5.9 -> 4.0-4.2.

The 1-D matrices ``A^T, G, B^T`` come from the exact Toom-Cook construction of
:func:`convolab.algorithms.winograd1d.toom_cook` (4 outputs per tile, ``a = r + 3``
points), applied along both axes.  Each tile (samples x rows of 4x4 output tiles, every
column), on the workers like every tiled path:

1. pads its input rows into scratch and gathers the ``a x a`` windows into
   ``D (a, a, C, T)`` (one strided copy),
2. ``V = B^T D B`` as two GEMMs with ``a``-long inner dimensions,
3. ``M[xi] = U[xi] (K, C) @ V[xi] (C, T)`` for the ``a^2`` points, ``U = G w G^T``,
4. ``Y = A^T M A`` as two GEMMs, the second written with the output column innermost,
   so that the copy into the output moves whole rows.

Weight gradient, GEMM -> F(r x r, 4x4) (ms): 5x5 C64 28x28 18.6 -> 10.0, C256 14x14
73 -> 38, C32 56x56 11.0 -> 6.0, 4x4 C64 14x14 4.6 -> 3.8; one 8x8 plane stays on GEMM
(0.72 vs 1.34).

Float32 error: about 1e-5 relative (max-abs over max), tested against a float64
reference.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..options import get_options
from ..spec import ConvSpec
from ._threads import (RESULTS_HELD_PER_WORKER, Scratch, matmul, run_tiles, run_tiles_sum,
                       workers)
from ._finite import check_block, tile_checks
from ._tiles import CACHE_BYTES, WG_CACHE_BYTES, put, tiles
from .winograd1d import toom_cook

M_OUT = 4
# square kernels handled here (3x3: winograd.py's F(4x4, 3x3)).  Not 2x2: F(4x4, 2x2)
# measured no faster than GEMM (4x4 s2 transposed layer's 2x2 forward, C128 -> 256 on
# 16x16: 7.4-10.5 vs 7.2-9.0 ms) and 1.6-2.6x slower with 256 -> 512 channels on 8x8.
TAPS = (4, 5)


def handles(role: str, spec: ConvSpec) -> bool:
    """Whether this module answers for ``role``: every role of square 2-D kernels of 4 or
    5 taps."""
    k = spec.kernel_size
    return spec.rank == 2 and k[0] == k[1] and k[0] in TAPS


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Every role of stride-1, undilated, ungrouped convolutions whose smallest tile (one
    row of 4x4 output tiles of one sample; for the weight gradient with the products a
    worker may hold) fits every worker's share of the workspace budget (otherwise GEMM,
    whose rows are smaller, runs)."""
    if not (handles(role, spec) and spec.stride == (1, 1) and spec.dilation == (1, 1)
            and spec.groups == 1):
        return False
    r = spec.kernel_size[0]
    item = np.dtype(dtype).itemsize
    a = M_OUT + r - 1
    if role == "input_grad":  # x_shape is gy; the output is the input of the convolution
        C, K = x_shape[1], w_shape[1]
        width = x_shape[3] + r - 1 - sum(spec.padding[1])
    else:
        C, K, width = x_shape[1], w_shape[0], spec.conv_out_shape(x_shape[2:])[1]
    one_row = (1, (M_OUT, max(width, 1)), r, C, K, item)  # one sample, one row of tiles
    if role == "weight_grad":
        _, _, per_row, halo = _wg_plan(*one_row)
        per_row += RESULTS_HELD_PER_WORKER * a * a * K * C * item
    else:
        _, _, per_row, halo = _plan(*one_row)
    return workers() * (per_row + halo) <= get_options().workspace_bytes


def _per_tile(r: int, C: int, K: int, item: int) -> int:
    """Scratch bytes per 4x4 output tile: its share of the padded input (16 C), the
    gathered and the half-transformed windows (a^2 C each), the products (a^2 K), the
    half-transformed outputs (4 a K) and the outputs (16 K)."""
    a = M_OUT + r - 1
    return (M_OUT * M_OUT * C + 2 * a * a * C + a * a * K + M_OUT * a * K
            + M_OUT * M_OUT * K) * item


# Below this many output tiles per call the Winograd-domain products (of this path and of
# :mod:`convolab.algorithms.winograd`'s F(4x4, 3x3)) are (K x C) @ (C x T) with few
# columns, and run far below the BLAS rate: fitted (float32, forward medians, gemm and
# winograd interleaved) on 61 2-D layers, where 3x3 layers of 8-64 tiles measured
# 1.4-5.7x their estimate (2 x 256 x 7 x 7, K256: 5.5 ms, estimated 0.96; GEMM 2.3) and
# the F(4, 5x5) path 2.6-3.2x at 16-32 tiles; from ~128 tiles the estimates held.
FEW_TILES, FEW_TILES_POWER = 128, 0.6


def few_tiles(T: int) -> float:
    """The efficiency of the Winograd-domain products over ``T`` tiles (1 from
    :data:`FEW_TILES`)."""
    return min(1.0, T / FEW_TILES) ** FEW_TILES_POWER


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """GEMM FLOPs of the separable transforms and the point-wise products, and the bytes
    they move, with the factors of :func:`convolab.algorithms.winograd1d.cost`."""
    r = spec.kernel_size[0]
    a, m = M_OUT + r - 1, M_OUT
    N, C, K = p["N"], p["C"], p["K"]
    O = p["O"]
    T = N * -(-O[0] // m) * -(-O[1] // m)
    flops = 2 * T * (2 * a * a * a * C + a * a * C * K + m * a * a * K + m * m * a * K)
    eff = min(1.0, K / 32) * min(1.0, C / 32) * few_tiles(T)
    moved = T * itemsize * (m * m * C + a * a * C * 3 + a * a * K * 2 + m * m * K * 2)
    if role == "weight_grad":
        # no U; the gy tiles gathered and transformed, one (a^2, K, C) product per tile
        # (bytes at 1.2, as fitted for the 1-D weight gradient)
        plan = _wg_plan(N, O, r, C, K, itemsize)[0]
        moved += itemsize * (T * (m * m * K * 2 + a * m * K * 2) + len(plan) * a * a * K * C)
        return 0.6 * flops / max(eff, 1e-3), 1.2 * moved
    # the weight transform U = G w G^T (one GEMM on one BLAS thread, counted twice) and
    # U itself, written once and read by every tile: with 512 channels U is 64 MiB and
    # decided the time (7x7 planes, N1: 39 ms against GEMM's 8.8)
    ubytes = a * a * K * C * itemsize
    flops += 2 * 2 * a * a * r * r * K * C
    moved += ubytes * (1 + len(_plan(N, O, r, C, K, itemsize)[0]))
    return 0.6 * flops / max(eff, 1e-3), 0.5 * moved


def _plan(N: int, O, r: int, C: int, K: int, item: int):
    tw = -(-O[1] // M_OUT)
    # one row of output tiles (its input rows are r - 1 columns wider than 4 tw)
    per_row = _per_tile(r, C, K, item) * tw + M_OUT * (r - 1) * C * item
    plan, most = tiles(N, (-(-O[0] // M_OUT),), per_row, cache=CACHE_BYTES,
                        split_lone=1)
    halo = (r - 1) * (tw * M_OUT + r - 1) * C * item  # the r - 1 extra input rows
    return plan, most, per_row, halo


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """Per-worker scratch of the largest tile, times the workers (the weight gradient:
    its own tiles, and the ``(a^2, K, C)`` products a worker may hold)."""
    item = np.dtype(dtype).itemsize
    r = spec.kernel_size[0]
    args = (p["N"], p["O"], r, p["C"], p["K"], item)
    if role == "weight_grad":
        plan, most, per_row, halo = _wg_plan(*args)
        a = M_OUT + r - 1
        extra = RESULTS_HELD_PER_WORKER * a * a * p["K"] * p["C"] * item
    else:
        (plan, most, per_row, halo), extra = _plan(*args), 0
    nmax = max((bs.stop - bs.start for bs, _ in plan), default=1)
    return workers() * (most * per_row + nmax * halo + extra)


def _gather(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``dst[i, j, c, n, u, v] = src[n, c, 4 u + i, 4 v + j]``: the overlapping windows
    of the 4x4 output tiles, as one strided copy; returns ``dst``."""
    sp = src.strides
    np.copyto(dst, as_strided(src, dst.shape, (sp[2], sp[3], sp[1], sp[0], M_OUT * sp[2],
                                               M_OUT * sp[3]), writeable=False))
    return dst


def _input_tiles(x, tile, lows, tw: int, r: int, bt, buf):
    """Steps 1-2 for ``tile`` (samples ``bs``, rows ``[t0, t1)`` of 4x4 output tiles,
    ``tw`` tiles per row): the padded input rows into ``buf``, the ``a x a`` windows
    gathered (``D[i, j, c, n, u, v] = P[n, c, 4 u + i, 4 v + j]``) and transformed.
    Returns ``V (a, a, C T)``, the offset in ``buf`` after the scratch it used and
    ``(bs, n, t0, t1, T)``."""
    bs, rows = tile
    N, C, S0, S1 = x.shape
    m, a = M_OUT, bt.shape[0]
    lo0, lo1 = lows
    n, t0, t1 = bs.stop - bs.start, rows.start, rows.stop
    nt = t1 - t0
    T = n * nt * tw
    span_h, span_w = nt * m + r - 1, tw * m + r - 1
    w0, w1 = max(0, -lo1), min(S1, span_w - lo1)  # input columns the tiles read
    s0 = t0 * m - lo0
    P = buf[: n * C * span_h * span_w].reshape(n, C, span_h, span_w)
    h0, h1 = max(0, s0), max(max(0, s0), min(S0, s0 + span_h))
    P[:, :, : h0 - s0] = 0
    P[:, :, h1 - s0:] = 0
    P[:, :, h0 - s0: h1 - s0, : w0 + lo1] = 0
    P[:, :, h0 - s0: h1 - s0, max(w0, w1) + lo1:] = 0
    if w1 > w0:
        P[:, :, h0 - s0: h1 - s0, w0 + lo1: w1 + lo1] = x[bs, :, h0:h1, w0:w1]
    off = P.size
    D = _gather(P, buf[off: off + a * a * C * T].reshape(a, a, C, n, nt, tw))
    off += D.size
    Z = buf[off: off + a * a * C * T].reshape(a, a * C * T)
    np.matmul(bt, D.reshape(a, a * C * T), out=Z)  # along i
    V = D.reshape(a, a, C * T)  # D is no longer needed
    np.matmul(bt, Z.reshape(a, a, C * T), out=V)  # along j: V[i', j']
    return V, off + Z.size, (bs, n, t0, t1, T)


def _correlate(x: np.ndarray, w: np.ndarray, O, lows, bias=None) -> np.ndarray:
    """``y[n, k, o0, o1] = sum w[k, c, t0, t1] x[n, c, o0 + t0 - lo0, o1 + t1 - lo1]`` for
    ``o < O``, with ``x`` read as zero outside its extent (plus ``bias`` ``(K,)``, added
    as the tile's outputs are copied into place)."""
    N, C = x.shape[:2]
    K, r = w.shape[0], w.shape[2]
    dtype = np.result_type(x, w)
    y = np.empty((N, K) + tuple(O), dtype=dtype)
    if y.size == 0:
        return y
    m = M_OUT
    a = m + r - 1
    at, g, bt = (t.astype(dtype) for t in toom_cook(m, r))
    # U = G w G^T for every (k, c) as one GEMM: kron(G, G) (a^2, r^2) @ w (r^2, K C), on
    # the tile workers (see winograd._correlate)
    U = matmul(np.kron(g, g), w.reshape(K * C, r * r).T).reshape(a * a, K, C)
    ata = np.ascontiguousarray(at.T)  # (a, m)
    item = dtype.itemsize
    tw = -(-O[1] // m)
    plan, most, per_row, halo = _plan(N, O, r, C, K, item)
    nmax = max(bs.stop - bs.start for bs, _ in plan)
    bufs = Scratch((most * per_row + nmax * halo) // item, dtype)

    def run(tile):
        buf = bufs.get()
        V, off, (bs, n, t0, t1, T) = _input_tiles(x, tile, lows, tw, r, bt, buf)
        nt = t1 - t0
        M = buf[off: off + a * a * K * T].reshape(a * a, K, T)
        np.matmul(U, V.reshape(a * a, C, T), out=M)
        off += M.size
        Z2 = buf[off: off + m * a * K * T].reshape(m, a * K * T)
        np.matmul(at, M.reshape(a, a * K * T), out=Z2)  # along i: (p, j, K T)
        off += Z2.size
        Y = buf[off: off + m * K * T * m].reshape(m, K * T, m)
        np.matmul(Z2.reshape(m, a, K * T).transpose(0, 2, 1), ata, out=Y)  # (p, K, n, u, v, q)
        Yv = Y.reshape(m, K, n, nt, tw, m).transpose(2, 1, 3, 0, 4, 5)
        Yv = Yv.reshape(n, K, nt * m, tw * m)
        r0, r1 = t0 * m, min(O[0], t1 * m)
        put(y[bs, :, r0:r1], Yv[:, :, : r1 - r0, : O[1]],
            None if bias is None else bias.reshape(K, 1, 1))
        check_block(checks, y[bs, :, r0:r1])

    checks = tile_checks(dtype)
    run_tiles(run, plan, bufs)
    return y


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None, *,
            bias=None) -> np.ndarray:
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    return _correlate(x, w, O, [lo for lo, _ in spec.padding], bias)


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """gx[i] = sum_t gy[i + lo - t] w[t]: the correlation of gy, read from ``k - 1 - lo``
    positions before its start in each dimension, with the flipped kernel (channels
    swapped)."""
    r = spec.kernel_size[0]
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].swapaxes(0, 1))
    return _correlate(gy, wf, tuple(in_spatial), [r - 1 - lo for lo, _ in spec.padding])


def _wg_plan(N: int, O, r: int, C: int, K: int, item: int):
    """Tiles of the weight gradient: rows of 4x4 tiles sized like the forward's, plus the
    gy buffers (its rows, gathered tiles, half and whole transforms), within the cache
    target and what the workers' products leave of the workspace budget."""
    a, m = M_OUT + r - 1, M_OUT
    tw = -(-O[1] // m)
    per_row = ((_per_tile(r, C, K, item) + (2 * m * m + a * m + a * a) * K * item) * tw
               + M_OUT * (r - 1) * C * item)
    total = N * -(-O[0] // m) * per_row
    cache = max(WG_CACHE_BYTES, min(-(-total // workers()), 4 * a * a * C * K * item))
    share = (get_options().workspace_bytes // workers()
             - RESULTS_HELD_PER_WORKER * a * a * K * C * item)
    plan, most = tiles(N, (-(-O[0] // m),), per_row, cache=max(1, min(cache, share)))
    halo = (r - 1) * (tw * m + r - 1) * C * item
    return plan, most, per_row, halo


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """gw[k, c, t0, t1] = sum gy[n, k, o0, o1] x[n, c, o0 + t0 - lo0, o1 + t1 - lo1]:
    Winograd F(r x r, 4x4), the transpose of the forward's (``A`` and ``G`` swap roles)::

        gw = G^T [ sum_tiles (A gy_tile A^T) * (B^T d_tile B) ] G

    The input tiles are gathered and transformed as in the forward; the gy tiles (zero
    past the output) by ``A`` on both axes; the sum over tiles is one GEMM per point with
    the long tile axis inside, folded in tile order (:func:`~._threads.run_tiles_sum`).
    ``gy.shape[2:]`` may be smaller than the formula gives (transposed convolution)."""
    N, C = x.shape[:2]
    K, O = gy.shape[1], tuple(gy.shape[2:])
    r = spec.kernel_size[0]
    dtype = np.result_type(x, gy)
    if N == 0 or 0 in O:
        return np.zeros((K, C, r, r), dtype=dtype)
    m = M_OUT
    a = m + r - 1
    at, g, bt = (t.astype(dtype) for t in toom_cook(m, r))
    am = np.ascontiguousarray(at.T)  # (a, m): A
    item = dtype.itemsize
    tw = -(-O[1] // m)
    plan, most, per_row, halo = _wg_plan(N, O, r, C, K, item)
    nmax = max(bs.stop - bs.start for bs, _ in plan)
    # beside its buffer, each worker holds its tile's (a*a, K, C) partial sum
    bufs = Scratch((most * per_row + nmax * halo) // item, dtype, held=a * a * K * C * item)
    lows = [lo for lo, _ in spec.padding]

    def run(tile):
        buf = bufs.get()
        V, off, (bs, n, t0, t1, T) = _input_tiles(x, tile, lows, tw, r, bt, buf)
        nt = t1 - t0
        # gy rows of the tile, zero past O: Gy[i, j, k, n, u, v] = gy[4 u + i, 4 v + j]
        Pg = buf[off: off + n * K * nt * m * tw * m].reshape(n, K, nt * m, tw * m)
        h1 = min(O[0], t1 * m) - t0 * m
        Pg[:, :, :h1, : O[1]] = gy[bs, :, t0 * m: t0 * m + h1]
        Pg[:, :, h1:] = 0
        Pg[:, :, :h1, O[1]:] = 0
        off += Pg.size
        Gy = _gather(Pg, buf[off: off + m * m * K * T].reshape(m, m, K, n, nt, tw))
        off += Gy.size
        Z = buf[off: off + a * m * K * T].reshape(a, m * K * T)
        np.matmul(am, Gy.reshape(m, m * K * T), out=Z)  # along i
        off += Z.size
        Ug = buf[off: off + a * a * K * T].reshape(a, a, K * T)
        np.matmul(am, Z.reshape(a, m, K * T), out=Ug)  # along j
        return [(Ellipsis, np.matmul(Ug.reshape(a * a, K, T),
                                     V.reshape(a * a, C, T).transpose(0, 2, 1)))]

    Msum = run_tiles_sum(run, plan, np.zeros((a * a, K, C), dtype=dtype), bufs)
    gw = matmul(np.kron(g, g).T, Msum.reshape(a * a, K * C))  # (r^2, K C)
    return np.ascontiguousarray(gw.reshape(r, r, K, C).transpose(2, 3, 0, 1))
