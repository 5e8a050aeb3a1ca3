"""Winograd minimal filtering F(4, 3) for 3-tap (1-D) and 3x3 (2-D) stride-1 convolutions.

Shapes as in :mod:`convolab.algorithms.direct`.  With ``m = 4`` outputs per tile and
``a = m + 3 - 1 = 6`` inputs per tile (Lavin & Gray 2016, interpolation points
0, +-1, +-2, infinity), one output tile of the correlation is::

    Y = A^T [ (G g G^T) * (B^T d B) ] A         (2-D; 1-D drops the right factors)

Every step is a BLAS call over all tiles at once:

1. gather the overlapping input tiles into ``D (a^r, C, T)`` (one strided copy),
2. ``V = kron(B^T, B^T) @ D``, ``U = kron(G, G) @ w``         (transforms as GEMMs),
3. ``M[xi] = U[xi] (K, C) @ V[xi] (C, T)`` for the ``a^r`` points (batched GEMM),
4. ``Y = kron(A^T, A^T) @ M`` and one strided copy into the output.

The multiplications in step 3 are ``36/16 = 2.25`` per output instead of 9 (4x fewer).
Tiles run over batch chunks (or rows) sized by the cache target and the workspace
budget, on both cores (:func:`convolab.algorithms._threads.run_tiles`).
Accuracy: float32 relative error stays around 1e-6 (the transforms have
entries up to 8 and 1/24); the roles it does not cover fall back to GEMM.

``input_grad`` (stride 1) is the same correlation on the zero-padded gradient with
the kernel flipped and its channel axes swapped, so it reuses the forward.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..padding import pad_spatial
from ..spec import ConvSpec
from ._threads import run_tiles
from ._tiles import tiles

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


def _kron(mat: np.ndarray, r: int) -> np.ndarray:
    out = mat
    for _ in range(r - 1):
        out = np.kron(out, mat)
    return out


def applicable(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    """3 taps per dimension, rank 1 or 2, stride 1, dilation 1, groups 1; forward and
    input_grad (the weight gradient stays on GEMM)."""
    return (
        role in ("forward", "input_grad")
        and spec.rank in (1, 2)
        and all(k == R for k in spec.kernel_size)
        and all(s == 1 for s in spec.stride)
        and all(d == 1 for d in spec.dilation)
        and spec.groups == 1
    )


def cost(role: str, spec: ConvSpec, p: dict, itemsize: int) -> tuple[float, float]:
    """GEMM FLOPs of the transforms and the point-wise products; the tile copies."""
    r = spec.rank
    N, C, K = p["N"], p["C"], p["K"]
    T = N * int(np.prod([-(-o // M_OUT) for o in p["O"]]))
    a, m = ALPHA**r, M_OUT**r
    flops = 2 * T * (a * a * C + a * C * K + m * a * K)
    eff = min(1.0, K / 32) * min(1.0, C / 32)  # the a^r small GEMMs lose speed below that
    moved = T * itemsize * (a * C * 3 + a * K * 2 + m * K * 2)
    # Fitted: in the suite's interleaved runs (benchmarks/RESULTS.md) the tile gathers,
    # transform GEMMs with 36-long inner dimensions and 64-wide point-wise GEMMs made
    # F(4,3) as slow as im2col + GEMM at C=K=64..256 (the 4x fewer multiplications are
    # eaten by the transforms), so the model charges 2.5x and GEMM stays the default.
    return 2.5 * flops / max(eff, 1e-3), 2.5 * moved


def workspace(role: str, spec: ConvSpec, p: dict, dtype) -> int:
    item = np.dtype(dtype).itemsize
    N, C, K = p["N"], p["C"], p["K"]
    padded = N * (C if role == "forward" else K) * int(
        np.prod([o + R - 1 + M_OUT for o in p["O"]])) * item
    _, most = tiles(N, p["O"], _per_position(spec.rank, C, K, item))
    return padded + most * _per_position(spec.rank, C, K, item)


def _per_position(r: int, C: int, K: int, item: int) -> int:
    return int((ALPHA / M_OUT) ** r * (2 * C + 2 * K) * item) + 1


def _correlate(xp: np.ndarray, w: np.ndarray, O) -> np.ndarray:
    """Valid correlation of an already padded ``xp (N, C, *P)`` (``P >= O + 2``) with a
    3-tap kernel ``w (K, C, 3[, 3])``, giving ``(N, K, *O)``."""
    r = len(O)
    N, C = xp.shape[:2]
    K = w.shape[0]
    dtype = np.result_type(xp, w)
    tgrid = tuple(-(-o // M_OUT) for o in O)  # tiles per dimension
    need = tuple(t * M_OUT + R - 1 for t in tgrid)
    extra = [(0, max(0, n - p)) for n, p in zip(need, xp.shape[2:])]
    if any(hi for _, hi in extra):
        xp = pad_spatial(xp, extra)
    kb = _kron(BT, r).astype(dtype)
    ka = _kron(AT, r).astype(dtype)
    a = ALPHA**r
    # U[xi] = (G w G^T)[xi] as (a, K, C)
    U = (_kron(G, r).astype(dtype) @ w.reshape(K * C, R**r).T).reshape(a, K, C)
    y = np.empty((N, K) + tuple(O), dtype=dtype)
    plan, _ = tiles(N, O, _per_position(r, C, K, dtype.itemsize))

    def run(tile):
        bs, rows = tile
        r0, r1 = rows.start, rows.stop
        # tile rows covering output rows [r0, r1); r0 is a multiple of M_OUT unless the
        # plan split rows, in which case tiles simply start at r0.
        th = -(-(r1 - r0) // M_OUT)
        tg = (th,) + tgrid[1:]
        xt = xp[bs, :, r0:]
        n = xt.shape[0]
        if xt.shape[2] < th * M_OUT + R - 1:
            xt = pad_spatial(xt, [(0, th * M_OUT + R - 1 - xt.shape[2])] + [(0, 0)] * (r - 1))
        sp = xt.strides[2:]
        view = as_strided(
            xt,
            (ALPHA,) * r + (C, n) + tg,
            sp + (xt.strides[1], xt.strides[0]) + tuple(s * M_OUT for s in sp),
            writeable=False,
        )
        T = n * int(np.prod(tg))
        D = np.ascontiguousarray(view).reshape(a, C * T)
        V = np.matmul(kb, D).reshape(a, C, T)
        Mx = np.matmul(U, V)  # (a, K, T)
        Y = np.matmul(ka, Mx.reshape(a, K * T)).reshape((M_OUT,) * r + (K, n) + tg)
        # (m.., K, n, t..) -> (n, K, t0, m0, t1, m1, ...) -> (n, K, *tiles*m)
        order = (r + 1, r) + tuple(v for i in range(r) for v in (r + 2 + i, i))
        Yt = Y.transpose(order).reshape((n, K) + tuple(t * M_OUT for t in tg))
        Oc = (r1 - r0,) + tuple(O[1:])
        y[bs, :, r0:r1] = Yt[(Ellipsis,) + tuple(slice(0, o) for o in Oc)]

    run_tiles(run, plan)
    return y


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    return _correlate(pad_spatial(x, spec.padding), w, O)


def _pad_or_crop(a: np.ndarray, pairs) -> np.ndarray:
    """Zero-pad the spatial dims by ``(lo, hi)``; negative amounts crop."""
    crop = tuple(slice(max(0, -lo), a.shape[2 + i] - max(0, -hi))
                 for i, (lo, hi) in enumerate(pairs))
    a = a[(slice(None), slice(None)) + crop]
    return pad_spatial(a, [(max(0, lo), max(0, hi)) for lo, hi in pairs])


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """gx[i] = sum_t gy[i + lo - t] w[t]: a correlation of gy padded by ``(2 - lo)`` on the
    left with the flipped kernel (channels swapped)."""
    r = spec.rank
    O = gy.shape[2:]
    S = tuple(in_spatial)
    pairs = [(R - 1 - lo, s + R - 1 - o - (R - 1 - lo))
             for (lo, _), s, o in zip(spec.padding, S, O)]
    wf = w[(slice(None), slice(None)) + (slice(None, None, -1),) * r].swapaxes(0, 1)
    return _correlate(_pad_or_crop(gy, pairs), np.ascontiguousarray(wf), S)
