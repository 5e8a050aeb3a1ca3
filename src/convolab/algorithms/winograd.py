"""Winograd minimal filtering F(4, 3) for 3x3 (2-D) and 3-tap (1-D) stride-1 convolutions.

1-D kernels (3 to 9 taps, every role) run F(6, r) / F(4, r) of
:mod:`convolab.algorithms.winograd1d`, measured faster than this module's 1-D F(4, 3)
and F(3, 4) on the 3-tap C64 layer (forward 7.2 vs 9.0 ms, weight gradient 9.8 vs
13.8); the 1-D branches below are no longer reached through the algorithm's roles.
Square 4x4 and 5x5 kernels run F(4x4, r x r) of :mod:`convolab.algorithms.winograd2d`.

Shapes as in :mod:`convolab.algorithms.direct`.  With ``m = 4`` outputs per tile and
``a = m + 3 - 1 = 6`` inputs per tile (Lavin & Gray 2016, interpolation points
0, +-1, +-2, infinity), one output tile of the correlation is::

    Y = A^T [ (G g G^T) * (B^T d B) ] A         (2-D; 1-D drops the right factors)

Tiles (batch chunks, or rows when one sample is too big; sized by the cache target and
the workspace budget) run on both cores (:func:`convolab.algorithms._threads.run_tiles`),
each in two per-thread scratch buffers that every step reads from and writes to in turn:

1. copy the tile's input rows, zero-padded, into scratch (the input is never padded as a
   whole, so it is read from memory once and the later passes stay in the cache),
2. gather the overlapping input tiles into ``D (a^r, C, T)`` (one strided copy),
3. ``V = (B^T x B^T) D`` one axis at a time: two GEMMs with 6-long inner dimensions
   (432 multiply-adds per tile and channel instead of 1296 for ``kron(B^T, B^T)``),
4. ``M[xi] = U[xi] (K, C) @ V[xi] (C, T)`` for the ``a^r`` points (batched GEMM), with
   ``U = (G x G) w`` computed once per call,
5. ``Y = (A^T x A^T) M`` (again separable) and one strided copy into the output.

The multiplications in step 4 are ``36/16 = 2.25`` per output instead of 9 (4x fewer).
Accuracy: float32 relative error stays around 1e-6 (the transforms have
entries up to 8 and 1/24); the roles it does not cover fall back to GEMM.

``input_grad`` (stride 1) is the same correlation on the zero-padded gradient with
the kernel flipped and its channel axes swapped, so it reuses the forward.

``weight_grad`` is Winograd F(3, 4), the transpose of F(4, 3) (A and G swap roles):
``gw = G^T [ sum_tiles (A gy A^T) * (B^T d B) ] G`` over the same tiles, the input tiles
transformed by the forward's code and the sum over tiles done as one GEMM per point
with the long tile axis inside (4x fewer multiplications than im2col + GEMM).

Dilation ``d`` (1-D and 2-D, forward and input gradient; :func:`_dilated`): output phase
``p`` (``y[p::d]``) is the undilated correlation of input phase ``p``, so the ``prod(d)``
phases run as one batch, between a split and an interleaving copy.  Measured (float32,
back to back, GEMM -> Winograd): 3x3 d2 C64 56x56 forward 34.6 -> 27.6 ms and C256 d4
input gradient 57.7 -> 44.7; the dilated 2-D weight gradient ran 5-10 % slower than GEMM,
so it stays on GEMM (1-D kernels take every role at any dilation: :mod:`.winograd1d`).

3-D kernels ``(k0, 3, 3)`` (:func:`_correlate3`, :func:`_weight_grad3`): the planes of a
sample are the batch of the 2-D transforms, each input plane is transformed once, and
the ``k0`` depth taps are ``k0`` batched GEMMs on column blocks of consecutive planes
(``k0 * 36 / 16`` multiplications per output instead of ``k0 * 9``: 4x fewer, as in 2-D).
Measured on the suite's 3x3x3 C32 16^3 layer (float32 medians of back-to-back calls, ms,
GEMM -> Winograd): forward 12.8 -> 5.0, weight gradient 10.3 -> 4.9.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..padding import pad_spatial
from ..spec import ConvSpec
from ._finite import all_finite, check_block, falls_back_to_gemm, tile_checks
from . import winograd1d, winograd2d
from ._threads import Scratch, _blas_single_thread, matmul, run_tiles, run_tiles_sum, workers
from ._tiles import CACHE_BYTES, WG_CACHE_BYTES, put, tiles
from ..options import get_options

M_OUT, R, ALPHA = 4, 3, 6

BT = np.array([
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
], dtype=np.float64)
G = np.array([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
], dtype=np.float64)
AT = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
], dtype=np.float64)


def _sub(role: str, spec: ConvSpec):
    """The module that runs ``role`` of ``spec`` instead of this one's F(4, 3), if any:
    :mod:`~convolab.algorithms.winograd1d` (1-D, 3-9 taps) or
    :mod:`~convolab.algorithms.winograd2d` (square 4x4 and 5x5 kernels)."""
    for mod in (winograd1d, winograd2d):
        if mod.handles(role, spec):
            return mod
    return None


def _kron(mat: np.ndarray, r: int) -> np.ndarray:
    out = mat
    for _ in range(r - 1):
        out = np.kron(out, mat)
    return out


# Fixed seconds per call beyond :func:`cost` (the transforms' set-up, the error bound's
# check, the tiles), for :func:`convolab.select.call_seconds`: tiny 1-D, 2-D and 3-D
# layers measured 130-250 us forward, 130-300 input gradient, 190-560 weight gradient
# (one worker, medians; GEMM's plain lane 35-90).
CALL_SECONDS = {"forward": 180e-6, "input_grad": 200e-6, "weight_grad": 300e-6}


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """Stride 1, groups 1, and 3 taps per dimension in rank 2 (every role; with dilation
    the forward and input gradient only, as phases); in rank 3, undilated, 3x3
    in the last two dimensions and any depth (the depth taps are summed as GEMMs on the
    2-D transforms).  1-D kernels of 3 to 9 taps run F(m, r) from
    :mod:`convolab.algorithms.winograd1d` (every role, any dilation); square 4x4 and 5x5
    kernels F(4x4, r x r) from :mod:`convolab.algorithms.winograd2d` (every role,
    undilated)."""
    if (sub := _sub(role, spec)) is not None:
        return sub.applicable(role, spec, x_shape, w_shape, dtype)
    k = spec.kernel_size
    dilated = any(d > 1 for d in spec.dilation)
    return (
        role in ("forward", "input_grad", "weight_grad")
        and all(s == 1 for s in spec.stride)
        and spec.groups == 1
        and not (dilated and role == "weight_grad")
        and ((spec.rank in (1, 2) and all(ki == R for ki in k))
             or (spec.rank == 3 and k[1:] == (R, R) and not dilated
                 and _planes_fit(k[0], x_shape, w_shape, dtype)))
    )


def _planes_fit(k0: int, x_shape, w_shape, dtype) -> bool:
    """The smallest 3-D tile, ``k0`` planes of one band of 4 output rows, must fit the
    workspace budget on every worker (otherwise GEMM runs)."""
    ck = max(w_shape[0], w_shape[1])
    plane = (M_OUT + R - 1) * (x_shape[-1] + 2 * M_OUT)
    a = ALPHA**2 / M_OUT**2  # transformed values per output position: 2.25
    # per position: k0 padded planes and two transform buffers of k0 planes (1 + 2a each),
    # the products of one plane (a) and the weight gradient's transformed gy (1 + 2a)
    per = ck * ((k0 + 1) * (1 + 2 * a) + a)
    return workers() * per * plane * np.dtype(dtype).itemsize <= get_options().workspace_bytes


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """GEMM FLOPs of the separable transforms and the point-wise products; the copies."""
    if (sub := _sub(role, spec)) is not None:
        return sub.cost(role, spec, p, itemsize)
    r = spec.rank
    N, C, K = p["N"], p["C"], p["K"]
    if r == 3:
        return _cost3(role, spec, p, itemsize)
    T = N * math.prod([-(-o // M_OUT) for o in p["O"]])
    a, m = ALPHA**r, M_OUT**r
    out_macs = sum(M_OUT**s * ALPHA ** (r - s + 1) for s in range(1, r + 1))
    flops = 2 * T * (r * a * ALPHA * C + a * C * K + out_macs * K)
    eff = min(1.0, K / 32) * min(1.0, C / 32)  # the a^r small GEMMs lose speed below that
    eff *= winograd2d.few_tiles(T)
    moved = T * itemsize * (a * C * 3 + a * K * 2 + m * K * 2)
    if any(d > 1 for d in spec.dilation):
        # the phase split of the input and the interleaving of the output, each written
        # and read (measured, C64-C256, d 2-4: forward 0-25 % and input gradient 0-23 %
        # faster than GEMM)
        P = math.prod(spec.padded_shape(p["S"]))
        moved += 2 * itemsize * (N * C * P + N * K * math.prod(p["O"]))
    # Fitted to interleaved medians (benchmarks/RESULTS.md, Winograd rework): the
    # memory-bound transform GEMMs and tile copies run ~1.6x slower than this count says.
    # The transformed weight (a K C) is read again by every tile; once it is bigger than
    # the shared cache (C = K = 512) that traffic decides.
    ubytes = a * K * C * itemsize
    if role == "weight_grad":
        # Same transform and product FLOPs (the gy transform costs what the output
        # transform does); every tile writes an (a, C, K) product (fitted to the
        # interleaved medians of benchmarks/RESULTS.md, "Winograd weight gradient"; past
        # the cache, C = K = 512, measured ~2x slower than GEMM: written, read, added).
        per_tile = ubytes * (3 if ubytes > 2 * CACHE_BYTES else 1)
        return 1.6 * flops / max(eff, 1e-3), 1.6 * moved + len(
            _wg_plan(N, p["O"], C, K, itemsize)) * per_tile
    plan, _ = tiles(N, p["O"], _per_position(r, C, K, itemsize), split_lone=M_OUT)
    reread = len(plan) * ubytes if ubytes > 2 * CACHE_BYTES else 0
    return 1.6 * flops / max(eff, 1e-3), 1.6 * moved + reread


# The 3-D path's cost (:func:`_cost3`), fitted per role to float32 medians of 103 layers
# (3-D kernels of depth 1-5, 3x3 planes, 4^3 to 32^3 and 8x56x56 volumes, C and K 8-512,
# padding 0 or 1; see benchmarks/RESULTS.md, "Twenty-first pass"): seconds per tile, and
# factors on the product FLOPs (at half the GEMM rate: one worker each), on the bytes
# each tile copies and on the bytes of the transformed weight (built once; for the
# weight gradient the k0 (a, C, K) sums, added per tile and transformed back).  Fitted
# on two of the three sets and tested on the third: rms log error 0.24-0.34.  The count
# this replaced (its FLOPs at the peak) had 0.86-1.26, mostly 2-4x under: it took 6^3
# and 4^3 volumes for Winograd where GEMM ran 1.5-5x faster.
COST3 = {"forward": (0.43e-3, 1.5, 1.3, 1.9), "input_grad": (0.52e-3, 2.0, 1.0, 2.25),
         "weight_grad": (0.75e-3, 1.4, 0.95, 4.7)}


def _cost3(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """:func:`cost` of the 3-D path, tile by tile as :func:`_correlate3` and
    :func:`_weight_grad3` run them (the input gradient is the correlation of gy with the
    flipped kernel): each tile's products (``k0`` batched GEMMs, slow on the few columns
    of small planes: ``cols / (cols + 8)`` of the rate, as measured on (36, K, C) @ (36,
    C, cols) products), its copies and its fixed steps, over ``min(workers, tiles)``
    workers; and the transformed weight.  With the factors of :data:`COST3`."""
    from .. import select

    N, C, K, k0 = p["N"], p["C"], p["K"], spec.kernel_size[0]
    S, O, lo0 = p["S"], p["O"], spec.padding[0][0]
    if role == "input_grad":  # the correlation of gy with the flipped kernel
        C, K, S, O, lo0 = K, C, O, S, k0 - 1 - lo0
    a, m = ALPHA**2, M_OUT**2
    per = _per_position(2, C, K, itemsize)
    if role == "weight_grad":
        per += _per_position(2, 0, K, itemsize)
    plan, _, _, _ = _plan3(N, O, k0, per, split=role != "weight_grad")
    flops = moved = 0.0
    tg1 = -(-O[2] // M_OUT)
    for _, d0, d1, r0, r1 in plan:
        q = d1 - d0
        p0, p1 = max(0, d0 - lo0), min(S[0], d1 - 1 - lo0 + k0)
        tg0 = -(-(r1 - r0) // M_OUT)
        t = tg0 * tg1
        for _, e0, e1, _ in _depth_blocks(k0, lo0, d0, d1, p0, p1):
            cols = (e1 - e0) * t
            flops += 2 * a * K * C * (cols + 8)
        area = (tg0 * M_OUT + R - 1) * (tg1 * M_OUT + R - 1)
        moved += (p1 - p0) * (C * area * 2 + a * C * t * 3) + q * t * K * (2 * a + 2 * m)
        if role == "weight_grad":
            moved += q * t * a * K * 4  # the transformed gy, copied to rows
    tile_s, f_flops, f_moved, f_weight = COST3[role]
    par = min(workers(), len(plan)) or 1
    # per worker: FLOPs at half the rate, bytes at half the copy speed, as the whole
    # machine's; the tiles' fixed steps as the bytes copied in that time
    moved = (f_moved * 2 * itemsize * moved + tile_s * select.COPY_BYTES * len(plan)) / par
    return f_flops * 2 * flops / par, moved + f_weight * 2 * k0 * a * C * K * itemsize


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    """Per-thread scratch of the largest tile (padded input tile, two transform buffers)."""
    if (sub := _sub(role, spec)) is not None:
        return sub.workspace(role, spec, p, dtype)
    item = np.dtype(dtype).itemsize
    if spec.rank == 3:
        C, K, k0 = p["C"], p["K"], spec.kernel_size[0]
        per = _per_position(2, C, K, item) + (_per_position(2, 0, K, item)
                                              if role == "weight_grad" else 0)
        _, nd, npl, band = _plan3(p["N"], p["O"], k0, per, split=role != "weight_grad")
        return workers() * npl * per * band * math.prod(p["O"][2:])
    per = _per_position(spec.rank, p["C"], p["K"], item)
    _, most = tiles(p["N"], p["O"], per, split_lone=0 if role == "weight_grad" else M_OUT)
    return workers() * most * per


def _per_position(r: int, C: int, K: int, item: int) -> int:
    """Scratch bytes per output position: the padded input tile (< 2 C with its halo) and
    two buffers of ``(a/m) max(C, K)`` transformed values each."""
    return int((ALPHA / M_OUT) ** r * (2 * C + 2 * max(C, K)) * item) + 1


def _transform(mat: np.ndarray, src: np.ndarray, tmp: np.ndarray, out: np.ndarray, r: int):
    """``kron(mat, mat)`` (2-D) or ``mat`` (1-D) applied to the leading ``q**r`` rows of
    ``src``, one axis at a time (two GEMMs with 6-long inner dimensions: 432 instead of 1296
    multiply-adds per tile and channel for the input transform, measured 1.5-2x faster)."""
    p, q = mat.shape
    if r == 1:  # the result lands in ``tmp``
        rest = src.size // q
        out = tmp.reshape(-1)[: p * rest].reshape(p, rest)
        return np.matmul(mat, src.reshape(q, rest), out=out)
    rest = src.size // q**2
    z = np.matmul(mat, src.reshape(q, q * rest),
                  out=tmp.reshape(-1)[: p * q * rest].reshape(p, q * rest))
    return np.matmul(mat, z.reshape(p, q, rest),
                     out=out.reshape(-1)[: p * p * rest].reshape(p, p, rest))


def _correlate(x: np.ndarray, w: np.ndarray, O, pads, bias=None) -> np.ndarray:
    """Valid correlation of ``x (N, C, *S)`` zero-padded by ``pads`` (``(lo, hi)`` per
    spatial dimension; negative amounts crop) with a 3-tap kernel ``w (K, C, 3[, 3])``,
    giving ``(N, K, *O)`` where ``O = S + lo + hi - 2``.

    Each tile pads its own piece of the input into a per-thread scratch buffer, so the
    input is read once from memory and every later pass stays in the cache.  ``bias``
    ``(K,)`` is added as the tile's outputs are copied into place."""
    r = len(O)
    if r == 3:
        return _correlate3(x, w, O, pads, bias)
    N, C = x.shape[:2]
    K = w.shape[0]
    dtype = np.result_type(x, w)
    y = np.empty((N, K) + tuple(O), dtype=dtype)
    if y.size == 0:
        return y
    tgrid = tuple(-(-o // M_OUT) for o in O)  # tiles per dimension
    bt, at = BT.astype(dtype), AT.astype(dtype)
    a, m, CK = ALPHA**r, M_OUT**r, max(C, K)
    # U[xi] = (G w G^T)[xi] as (a, K, C)
    # on the tile workers (1.9 -> 1.0 ms for 256 -> 256), not on BLAS's threads, which
    # would keep spinning on cores the tiles need (measured: every stage 2-3x slower)
    U = matmul(_kron(G, r).astype(dtype), w.reshape(K * C, R**r).T).reshape(a, K, C)
    plan, _ = tiles(N, O, _per_position(r, C, K, dtype.itemsize), split_lone=M_OUT)
    tmax, pmax = _tile_sizes(plan, tgrid, C)
    bufs = Scratch(pmax + 2 * a * CK * tmax, dtype)
    order = (r + 1, r) + tuple(v for i in range(r) for v in (r + 2 + i, i))
    bv = None if bias is None else bias.reshape((K,) + (1,) * r)

    def run(tile):
        bs, r0, r1, n, tg, T = _row_tile(tile, tgrid)
        buf = bufs.get()
        V, A, B = _input_tiles(x, pads, bs, r0, tg, buf, a * CK * T, bt)
        F, G_ = (A, B) if r == 1 else (B, A)  # V is in A (2-D) or B (1-D)
        Mx = F[: a * K * T].reshape(a, K, T)
        np.matmul(U, V.reshape(a, C, T), out=Mx)
        Yb = _transform(at, Mx, G_[: M_OUT * ALPHA**(r - 1) * K * T], F[: m * K * T], r)
        Y = Yb.reshape((M_OUT,) * r + (K, n) + tg)
        # (m.., K, n, t..) -> (n, K, t0, m0, t1, m1, ...) -> (n, K, *tiles*m)
        Yt = Y.transpose(order).reshape((n, K) + tuple(t * M_OUT for t in tg))
        Oc = (r1 - r0,) + tuple(O[1:])
        put(y[bs, :, r0:r1], Yt[(Ellipsis,) + tuple(slice(0, o) for o in Oc)], bv)
        check_block(checks, y[bs, :, r0:r1])

    checks = tile_checks(dtype)
    run_tiles(run, plan, bufs)
    return y


def _row_tile(tile, tgrid):
    """A 2-D/1-D row tile ``(samples, output rows)`` as ``(samples, r0, r1, n, tiles per
    dimension, tiles in all)``."""
    bs, rows = tile
    n = bs.stop - bs.start
    tg = (-(-(rows.stop - rows.start) // M_OUT),) + tuple(tgrid[1:])
    return bs, rows.start, rows.stop, n, tg, n * math.prod(tg)


def _band_geometry(band: int, O, C: int, CK: int, npl: int):
    """Scratch geometry of the 3-D paths for bands of ``band`` output rows: the 2-D tiles
    of the largest band, their count, one padded input plane's size and the size of each
    of the two transform buffers (``npl`` planes)."""
    tgb = (-(-band // M_OUT), -(-O[2] // M_OUT))
    tmax = tgb[0] * tgb[1]
    pplane = C * math.prod([tt * M_OUT + R - 1 for tt in tgb])
    return tgb, tmax, pplane, ALPHA**2 * CK * tmax * npl


def _tile_sizes(plan, tgrid, C: int) -> tuple[int, int]:
    """Over the row tiles ``plan`` of an output with ``tgrid`` 4-long tiles per dimension:
    the most 4^r output tiles in one tile, and the most padded-input values it copies."""
    rest = math.prod(tgrid[1:])
    tmax = max((b.stop - b.start) * -(-(rw.stop - rw.start) // M_OUT) for b, rw in plan) * rest
    pmax = max((b.stop - b.start) * (-(-(rw.stop - rw.start) // M_OUT) * M_OUT + R - 1)
               for b, rw in plan) * C * math.prod([t * M_OUT + R - 1 for t in tgrid[1:]])
    return tmax, pmax


def _correlate3(x: np.ndarray, w: np.ndarray, O, pads, bias=None) -> np.ndarray:
    """:func:`_correlate` in 3-D with a ``(k0, 3, 3)`` kernel: F(4x4, 3x3) on every depth
    plane, and the ``k0`` depth taps summed in the transformed domain.

    The planes of one sample are the "batch" of the 2-D transform: ``V (a, C, planes*t)``
    holds the transformed tiles of consecutive input planes, so the input planes that
    output planes ``d0..d1`` read through depth tap ``kd`` are one contiguous column block
    and ``M[xi] = sum_kd U[kd, xi] (K, C) @ V[xi, :, block_kd]`` is ``k0`` batched GEMMs
    (each input plane is transformed once, not ``k0`` times).  Depth taps that fall in
    the zero padding are skipped (their column blocks shrink); depth pads may be
    negative (crop).  Planes too big for the cache target run in bands of rows
    (:func:`_plan3`): C64 4x128x128 forward 76.5 -> 45.8 ms, weight gradient 123 -> 82."""
    N, C, D = x.shape[:3]
    K, k0 = w.shape[0], w.shape[2]
    dtype = np.result_type(x, w)
    y = np.empty((N, K) + tuple(O), dtype=dtype)
    if y.size == 0:
        return y
    lo0 = pads[0][0]
    hw_pads = list(pads[1:])
    bt, at = BT.astype(dtype), AT.astype(dtype)
    a, m, CK = ALPHA**2, M_OUT**2, max(C, K)
    # (k0, a, K, C) from one product per depth tap, each on a view of w, written in place:
    # one product as (a, k0*K*C) and then a transposing copy took 7.6 ms for K64 C128;
    # the products stacked by np.concatenate 2-7 ms (a fresh copy of U); these 0.8
    g2 = _kron(G, 2).astype(dtype)
    wk = w.reshape(K * C, k0 * R * R)  # depth tap kd: columns kd*R*R onwards, a view
    U = np.empty((k0, a, K * C), dtype=dtype)
    for kd in range(k0):
        matmul(g2, wk[:, kd * R * R:(kd + 1) * R * R].T, out=U[kd])
    U = U.reshape(k0, a, K, C)
    plan, nd, npl, band = _plan3(N, O, k0, _per_position(2, C, K, dtype.itemsize),
                                 split=True)
    tgb, tmax, pplane, size = _band_geometry(band, O, C, CK, npl)
    bufs = Scratch(npl * pplane + 2 * size + a * K * tmax * nd, dtype)
    order = (3, 2, 4, 0, 5, 1)  # (m0, m1, K, planes, t0, t1) -> (planes, K, t0, m0, t1, m1)

    def run(tile):
        n, d0, d1, r0, r1 = tile
        tg = (-(-(r1 - r0) // M_OUT), tgb[1])  # this band's 2-D tiles
        t = tg[0] * tg[1]
        buf = bufs.get()
        q = d1 - d0
        Mx = buf[buf.size - a * K * tmax * nd:][: a * K * q * t].reshape(a, K, q * t)
        # input planes read by this tile, clipped to the existing ones
        p0, p1 = max(0, d0 - lo0), min(D, d1 - 1 - lo0 + k0)
        if p1 <= p0:
            Mx[...] = 0
        else:
            xn = x[n].swapaxes(0, 1)  # (D, C, H, W): the planes as a batch
            V, _, _ = _input_tiles(xn, hw_pads, slice(p0, p1), r0, tg,
                                   buf[: buf.size - a * K * tmax * nd], size, bt)
            V = V.reshape(a, C, (p1 - p0) * t)
            first = True
            for kd, e0, e1, v0 in _depth_blocks(k0, lo0, d0, d1, p0, p1):
                src = V[:, :, v0 * t: (v0 + e1 - e0) * t]
                if first and e0 == d0 and e1 == d1:
                    np.matmul(U[kd], src, out=Mx)
                    first = False
                    continue
                if first:
                    Mx[...] = 0
                    first = False
                Mx[:, :, (e0 - d0) * t: (e1 - d0) * t] += np.matmul(U[kd], src)
            if first:
                Mx[...] = 0
        # V is dead: the two transform buffers after the padded planes are free
        A2, B2 = buf[npl * pplane: npl * pplane + size], buf[npl * pplane + size:][:size]
        Yb = _transform(at, Mx, A2[: M_OUT * ALPHA * K * q * t], B2[: m * K * q * t], 2)
        Y = Yb.reshape((M_OUT, M_OUT, K, q) + tg)
        Yt = Y.transpose(order).reshape((q, K) + tuple(tt * M_OUT for tt in tg))
        put(y[n].swapaxes(0, 1)[d0:d1, :, r0:r1], Yt[:, :, : r1 - r0, : O[2]],
            None if bias is None else bias.reshape(K, 1, 1))
        check_block(checks, y[n, :, d0:d1, r0:r1])

    checks = tile_checks(dtype)
    run_tiles(run, plan, bufs)
    return y


def _plan3(N: int, O, k0: int, per_position: int, split: bool = False):
    """Tiles ``(sample, first output plane, end, first output row, end)`` of the 3-D
    paths: as many output planes per tile as fit the cache target and the workspace
    budget with the ``k0 - 1`` extra input planes they read; when even one plane does
    not fit, one plane per tile in bands of rows (a multiple of 4).  With ``split`` (the
    forward and input gradient; not the weight gradient, whose tiles are summed) one
    sample's planes are cut into a tile per worker where each holds at least
    ``3 (k0 - 1)`` planes.  Returns the tiles, planes per tile, input planes per tile
    and rows per band."""
    Do, H = O[0], O[1]
    per_plane = per_position * math.prod(O[1:])
    limit = min(CACHE_BYTES, get_options().workspace_bytes // workers())
    if k0 * per_plane <= limit or H <= M_OUT:
        nd, band = max(1, min(Do, limit // max(1, per_plane) - (k0 - 1))), H
        if split and N == 1 and -(-Do // workers()) >= 3 * (k0 - 1):
            # one sample: a tile of planes per worker, where the k0 - 1 planes each
            # tile reads again are a third of its own at most
            nd = min(nd, -(-Do // workers()))
    else:
        per_rows = k0 * per_position * math.prod(O[2:]) * M_OUT
        nd, band = 1, max(1, limit // max(1, per_rows)) * M_OUT
    plan = [(n, d0, min(Do, d0 + nd), r0, min(H, r0 + band))
            for n in range(N) for d0 in range(0, Do, nd) for r0 in range(0, H, band)]
    return plan, nd, nd + k0 - 1, band


def _depth_blocks(k0: int, lo0: int, d0: int, d1: int, p0: int, p1: int):
    """For each depth tap ``kd``: the output planes ``[e0, e1)`` of ``[d0, d1)`` whose
    input plane ``d + kd - lo0`` lies in the loaded planes ``[p0, p1)``, as
    ``(kd, e0, e1, first loaded plane they read)``; taps that read only padding are left
    out."""
    out = []
    for kd in range(k0):
        e0, e1 = max(d0, p0 + lo0 - kd), min(d1, p1 + lo0 - kd)
        if e1 > e0:
            out.append((kd, e0, e1, e0 + kd - lo0 - p0))
    return out


def _input_tiles(x, pads, bs, r0, tg, buf, size, bt):
    """Steps 1-3 for one tile: pad the input rows ``[r0, r0 + 4 tg[0] + 2)`` of samples
    ``bs`` into ``buf``, gather the ``6^r`` overlapping tiles and transform them.  Returns
    ``V (a^r C T flat)`` and the two ``size``-long buffers after the padded input; ``V``
    lies in the first (2-D) or the second (1-D)."""
    r = len(tg)
    N, C = x.shape[:2]
    S = x.shape[2:]
    a = ALPHA**r
    n = bs.stop - bs.start
    T = n * math.prod(tg)
    pshape = (n, C) + tuple(t * M_OUT + R - 1 for t in tg)
    P = buf[: math.prod(pshape)].reshape(pshape)
    src, dst = [], []
    for d in range(r):
        lo, hi = pads[d]
        s0 = r0 if d == 0 else 0
        a0 = max(0, s0 - lo)
        a1 = min(S[d] + min(hi, 0), s0 + pshape[2 + d] - lo)
        a1 = max(a0, a1)
        src.append(slice(a0, a1))
        dst.append(slice(a0 + lo - s0, a1 + lo - s0))
    for d in range(r):  # zero only the border slabs around the copied block
        pre = (slice(None),) * (2 + d)
        P[pre + (slice(0, dst[d].start),)] = 0
        P[pre + (slice(dst[d].stop, None),)] = 0
    P[(slice(None), slice(None)) + tuple(dst)] = x[(bs, slice(None)) + tuple(src)]
    sp = P.strides[2:]
    view = as_strided(
        P,
        (ALPHA,) * r + (C, n) + tuple(tg),
        sp + (P.strides[1], P.strides[0]) + tuple(s_ * M_OUT for s_ in sp),
        writeable=False,
    )
    off = P.size
    A = buf[off: off + size]  # two buffers; every step reads one, writes the other
    B = buf[off + size: off + 2 * size]
    np.copyto(A[: a * C * T].reshape(view.shape), view)
    V = _transform(bt, A[: a * C * T], B[: a * C * T], A[: a * C * T], r)
    return V, A, B


def _phase_split(a: np.ndarray, d, size) -> np.ndarray:
    """``(N, C, *L)`` -> ``(prod(d) * N, C, *size)``: phase ``p`` (``a[..., p::d]``,
    zero-filled to ``size``) as the ``p``-th block of samples."""
    N, C = a.shape[:2]
    nph = math.prod(d)
    out = np.zeros((nph, N, C) + tuple(size), dtype=a.dtype)
    for i, p in enumerate(np.ndindex(*d)):
        src = a[(Ellipsis,) + tuple(slice(pi, None, di) for pi, di in zip(p, d))]
        src = src[(Ellipsis,) + tuple(slice(0, n) for n in size)]
        out[(i, Ellipsis) + tuple(slice(0, n) for n in src.shape[2:])] = src
    return out.reshape((nph * N, C) + tuple(size))


def _dilated(x: np.ndarray, w: np.ndarray, O, pads, d, bias=None) -> np.ndarray:
    """:func:`_correlate` with dilation ``d`` (rank 1-2): output phase ``p`` (``y[p::d]``)
    is the undilated correlation of input phase ``p`` (``xp[p::d]``), so the ``prod(d)``
    phases run as one batch of undilated Winograd, between two copies."""
    N = x.shape[0]
    xp = pad_spatial(x, pads)
    Oph = tuple(-(-o // di) for o, di in zip(O, d))
    Hph = tuple(o + R - 1 for o in Oph)
    Y = _correlate(_phase_split(xp, d, Hph), w, Oph, [(0, 0)] * len(O))
    K = Y.shape[1]
    Y = Y.reshape((math.prod(d), N, K) + Oph)
    y = np.empty((N, K) + tuple(O), dtype=Y.dtype)
    for i, p in enumerate(np.ndindex(*d)):
        dst = y[(Ellipsis,) + tuple(slice(pi, None, di) for pi, di in zip(p, d))]
        put(dst, Y[(i, Ellipsis) + tuple(slice(0, n) for n in dst.shape[2:])],
            None if bias is None else bias.reshape((K,) + (1,) * len(O)))
    return y


# forward takes ``bias=`` and adds it in each tile (see convolab.ops.conv._run_forward)
FORWARD_ADDS_BIAS = True


@falls_back_to_gemm("forward")
def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None, *,
            bias=None) -> np.ndarray:
    if (sub := _sub("forward", spec)) is not None:
        return sub.forward(x, w, spec, out_spatial, bias=bias)
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    if _skips_depth_padding(spec) and not all_finite(w):
        from . import gemm
        return gemm.forward(x, w, spec, O, bias=bias)
    if any(d > 1 for d in spec.dilation):
        return _dilated(x, w, O, spec.padding, spec.dilation, bias)
    return _correlate(x, w, O, spec.padding, bias)


def _skips_depth_padding(spec: ConvSpec) -> bool:
    """The 3-D paths leave out the products of depth taps with the zero planes of the
    depth padding; torch makes them, and a non-finite factor there (the weight in the
    forward, gy in the weight gradient) gives NaN (``inf * 0``) in results that hold
    none without them, so :func:`falls_back_to_gemm` cannot see the difference: such
    calls go to GEMM first.  (The input gradient of a non-finite weight runs ``direct``.)"""
    return spec.rank == 3 and any(v > 0 for v in spec.padding[0])


@falls_back_to_gemm("input_grad")
def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """gx[i] = sum_t gy[i + lo - t d] w[t]: a correlation of gy padded by ``d (k - 1) - lo``
    on the left with the flipped kernel (channels swapped), at the same dilation."""
    if (sub := _sub("input_grad", spec)) is not None:
        return sub.input_grad(gy, w, spec, in_spatial)
    r = spec.rank
    O = gy.shape[2:]
    S = tuple(in_spatial)
    pairs = [(d * (k - 1) - lo, s + d * (k - 1) - o - (d * (k - 1) - lo))
             for (lo, _), s, o, k, d in zip(spec.padding, S, O, spec.kernel_size, spec.dilation)]
    wf = np.ascontiguousarray(
        w[(slice(None), slice(None)) + (slice(None, None, -1),) * r].swapaxes(0, 1))
    if any(d > 1 for d in spec.dilation):
        return _dilated(gy, wf, S, pairs, spec.dilation)
    return _correlate(gy, wf, S, pairs)


def _gy_tiles(gy, bs, r0, r1, tg, O_rest, buf, am) -> np.ndarray:
    """The weight gradient's data-side transform of one tile of ``gy (N, K, *O)``: gather
    the ``4^r`` blocks ``Gd[u.., k, n, t..] = gy[n, k, 4 t + u ..]`` (zero past the
    output) of samples ``bs``, output rows ``[r0, r1)``, transform them with ``am``
    (F(3, 4)'s 6x4) and return them as ``(a, T, K)`` rows in ``buf`` (``(m + 2a) K T``
    long)."""
    r = len(tg)
    K = gy.shape[1]
    n = bs.stop - bs.start
    T = n * math.prod(tg)
    a, m = ALPHA**r, M_OUT**r
    Gd = buf[: m * K * T].reshape((M_OUT,) * r + (K, n) + tuple(tg))
    G1 = buf[m * K * T: (m + a) * K * T]
    G2 = buf[(m + a) * K * T: (m + 2 * a) * K * T]
    Oc = (r1 - r0,) + tuple(O_rest)
    for u in np.ndindex(*(M_OUT,) * r):
        dst = Gd[u].swapaxes(0, 1)  # (n, K, t..)
        cnt = tuple(-(-(o - ui) // M_OUT) for o, ui in zip(Oc, u))
        sl = tuple(slice(0, c_) for c_ in cnt)
        src = (bs, slice(None), slice(r0 + u[0], r1, M_OUT))
        src += tuple(slice(ui, None, M_OUT) for ui in u[1:])
        dst[(slice(None), slice(None)) + sl] = gy[src]
        for d in range(r):  # blocks that run past the output
            if cnt[d] < tg[d]:
                dst[(slice(None),) * (2 + d) + (slice(cnt[d], None),)] = 0
    Ug = _transform(am, Gd, G2, G1, r).reshape(a, K, T)  # in G1 (2-D) or G2 (1-D)
    tmp = (G2 if r == 2 else G1)
    UgT = tmp[: a * K * T].reshape(a, T, K)
    # (T, K) rows: the GEMM that uses them runs ~1.5x faster (NN) than on (K, T) (NT)
    np.copyto(UgT, Ug.transpose(0, 2, 1))
    return UgT


@falls_back_to_gemm("weight_grad")
def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """gw[k, c, t] = sum_{n, i} gy[n, k, i] xp[n, c, i + t]: per 4-long (4x4) block of
    output positions a valid correlation of the 6-long input tile with the gy block, i.e.
    Winograd F(3, 4), the transpose of F(4, 3) (A and G swap roles)::

        gw = G^T [ sum_tiles (A gy_tile A^T) * (B^T d B) ] G

    The input tiles are transformed exactly as in the forward; the sum over tiles is one
    GEMM per point ``M[xi] += Ugy[xi] (K, T) @ V[xi] (C, T)^T`` with the long tile axis
    inside (each thread keeps its own partial ``M``).  gy blocks past the output are
    zero.  ``O = gy.shape[2:]`` may be smaller than the formula gives (transposed conv)."""
    if (sub := _sub("weight_grad", spec)) is not None:
        return sub.weight_grad(x, gy, spec)
    r = spec.rank
    N, C = x.shape[:2]
    S = x.shape[2:]
    K = gy.shape[1]
    O = tuple(gy.shape[2:])
    dtype = np.result_type(x, gy)
    if N == 0 or 0 in O:
        return np.zeros((K, C) + tuple(spec.kernel_size), dtype=dtype)
    if r == 3:
        # only gy's planes that meet a padding plane through some depth tap
        lo0, D, k0 = spec.padding[0][0], S[0], spec.kernel_size[0]
        edge = (gy[:, :, :max(0, lo0)], gy[:, :, max(0, D + lo0 - k0 + 1):])
        if _skips_depth_padding(spec) and not all(all_finite(e) for e in edge):
            from . import gemm
            return gemm.weight_grad(x, gy, spec)
        return _weight_grad3(x, gy, spec)
    pads = [(lo, o + R - 1 - s - lo) for (lo, _), s, o in zip(spec.padding, S, O)]
    tgrid = tuple(-(-o // M_OUT) for o in O)
    bt, am = BT.astype(dtype), AT.T.astype(dtype)  # am: 6x4, F(3, 4)'s data-side transform
    a, m, CK = ALPHA**r, M_OUT**r, max(C, K)
    plan = _wg_plan(N, O, C, K, dtype.itemsize)
    tmax, pmax = _tile_sizes(plan, tgrid, C)
    # beside its buffer, each worker holds its tile's (a, C, K) partial sum
    bufs = Scratch(pmax + 2 * a * CK * tmax + (m + 2 * a) * K * tmax, dtype,
                   held=a * C * K * dtype.itemsize)

    def run(tile):
        bs, r0, r1, n, tg, T = _row_tile(tile, tgrid)
        buf = bufs.get()
        V, A, B = _input_tiles(x, pads, bs, r0, tg, buf, a * CK * T, bt)
        g0 = buf.size - (m + 2 * a) * K * tmax
        UgT = _gy_tiles(gy, bs, r0, r1, tg, O[1:], buf[g0: g0 + (m + 2 * a) * K * T], am)
        return [(Ellipsis, np.matmul(V.reshape(a, C, T), UgT))]

    Msum = run_tiles_sum(run, plan, np.zeros((a, C, K), dtype=dtype), bufs)
    gw = matmul(_kron(G, r).T.astype(dtype), Msum.reshape(a, C * K))  # (3^r, C K)
    gw = np.ascontiguousarray(gw.reshape(R**r, C, K).transpose(2, 1, 0))
    return gw.reshape((K, C) + (R,) * r)


def _weight_grad3(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """:func:`weight_grad` in 3-D with a ``(k0, 3, 3)`` kernel: F(3x3, 4x4) on the planes,
    and for every depth tap ``kd`` one GEMM per point between the transformed input planes
    and the transformed gy planes ``kd - lo0`` planes before them (the column blocks of
    :func:`_correlate3`): ``M[kd, xi] += V[xi, :, block_kd] @ Ugy[xi, block, :]``."""
    N, C = x.shape[:2]
    S = x.shape[2:]
    D = S[0]
    K = gy.shape[1]
    O = tuple(gy.shape[2:])
    k0 = spec.kernel_size[0]
    dtype = np.result_type(x, gy)
    lo0 = spec.padding[0][0]
    hw_pads = [(lo, o + R - 1 - s - lo) for (lo, _), s, o in zip(spec.padding[1:], S[1:], O[1:])]
    bt, am = BT.astype(dtype), AT.T.astype(dtype)
    a, m, CK = ALPHA**2, M_OUT**2, max(C, K)
    item = dtype.itemsize
    plan, nd, npl, band = _plan3(N, O, k0, _per_position(2, C, K, item)
                                 + _per_position(2, 0, K, item))
    tgb, tmax, pplane, size = _band_geometry(band, O, C, CK, npl)
    gsize = (m + 2 * a) * K * tmax * nd
    # beside its buffer, each worker holds its tile's partial sums, one per depth tap
    bufs = Scratch(npl * pplane + 2 * size + gsize, dtype, held=k0 * a * C * K * item)

    def run(tile):
        n, d0, d1, r0, r1 = tile
        p0, p1 = max(0, d0 - lo0), min(D, d1 - 1 - lo0 + k0)
        blocks = _depth_blocks(k0, lo0, d0, d1, p0, p1)
        if not blocks:
            return []
        tg = (-(-(r1 - r0) // M_OUT), tgb[1])  # this band's 2-D tiles
        t = tg[0] * tg[1]
        buf = bufs.get()
        V, _, _ = _input_tiles(x[n].swapaxes(0, 1), hw_pads, slice(p0, p1), r0, tg,
                               buf[: buf.size - gsize], size, bt)
        V = V.reshape(a, C, (p1 - p0) * t)
        q = d1 - d0
        UgT = _gy_tiles(gy[n].swapaxes(0, 1), slice(d0, d1), r0, r1, tg, O[2:],
                        buf[buf.size - gsize:][: (m + 2 * a) * K * t * q], am)  # (a, q t, K)
        return [(kd, np.matmul(V[:, :, v0 * t: (v0 + e1 - e0) * t],
                               UgT[:, (e0 - d0) * t: (e1 - d0) * t]))
                for kd, e0, e1, v0 in blocks]

    Msum = run_tiles_sum(run, plan, np.zeros((k0, a, C, K), dtype=dtype), bufs)
    with _blas_single_thread():
        gw = _kron(G, 2).T.astype(dtype) @ Msum.reshape(k0, a, C * K)  # (k0, 9, C K)
    gw = np.ascontiguousarray(gw.reshape(k0, R * R, C, K).transpose(3, 2, 0, 1))
    return gw.reshape((K, C) + tuple(spec.kernel_size))


def _wg_plan(N: int, O, C: int, K: int, item: int) -> list:
    """Tiles of the weight gradient.  Every tile ends in an ``(a, C, K)`` product added to
    its thread's sum: tiles several times that size (or half the work each) keep the
    GEMMs' inner dimension long and the products few."""
    r = len(O)
    ppos = _per_position(r, C, K, item) + _per_position(r, 0, K, item)
    total = N * math.prod(O) * ppos
    cache = max(WG_CACHE_BYTES, min(-(-total // workers()), 4 * ALPHA**r * C * K * item))
    return tiles(N, O, ppos, cache=cache)[0]
