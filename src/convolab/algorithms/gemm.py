"""im2col + GEMM: the general fast path.

Shapes as in :mod:`convolab.algorithms.direct`.  The padded input is viewed as
sliding windows ``(N, g, C/g, *k, *O)`` with :func:`numpy.lib.stride_tricks.as_strided`
(no copy), then copied once into columns ``(N, g, C/g*prod(k), prod(O))`` and
contracted with the weight ``(g, K/g, C/g*prod(k))`` by one batched BLAS matmul.

Backward:
* ``weight_grad``: ``gy @ cols^T`` summed over the batch (GEMMs).
* ``input_grad``: ``dcols = w^T @ gy`` then col2im: one strided slice-add per
  kernel offset (a loop over offsets, never over pixels; no ``np.add.at``).

Work is split into batch chunks so the column buffer stays within the
``workspace_bytes`` option.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..options import get_options
from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec
from .direct import kernel_offsets, tap_slices


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
    kk = int(np.prod(spec.kernel_size))
    P = int(np.prod(out_spatial))
    if kk == 1 and all(s == 1 for s in spec.stride) and xp.shape[2:] == tuple(out_spatial):
        return xp.reshape(N, C, P)  # 1x1, stride 1: the input is already the columns
    return windows(xp, spec, out_spatial).reshape(N, C * kk, P)


def col2im(cols: np.ndarray, spec: ConvSpec, in_spatial, out_spatial) -> np.ndarray:
    """Adjoint of :func:`im2col`: ``cols (N, C*prod(k), prod(O))`` -> ``(N, C, *in_spatial)``."""
    N = cols.shape[0]
    kk = int(np.prod(spec.kernel_size))
    C = cols.shape[1] // kk
    O = tuple(out_spatial)
    padded = spec.padded_shape(in_spatial)
    need = tuple(d * (k - 1) + s * (o - 1) + 1 for k, d, s, o in
                 zip(spec.kernel_size, spec.dilation, spec.stride, O))
    buf_shape = tuple(max(p, n) for p, n in zip(padded, need))
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


def _batch_chunks(N: int, bytes_per_sample: int):
    budget = get_options().workspace_bytes
    step = max(1, min(N, budget // max(1, bytes_per_sample)))
    return [slice(i, min(N, i + step)) for i in range(0, max(N, 1), step)] if N else []


def _wmat(w: np.ndarray, g: int) -> np.ndarray:
    """(K, C/g, *k) -> (g, K/g, C/g*prod(k))."""
    K = w.shape[0]
    return w.reshape(g, K // g, -1)


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    g = spec.groups
    N, C = x.shape[:2]
    K = w.shape[0]
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    P = int(np.prod(O))
    dtype = np.result_type(x, w)
    y = np.empty((N, g, K // g, P), dtype=dtype)
    wm = _wmat(w, g)
    xp = pad_spatial(x, spec.padding)
    per_sample = C * int(np.prod(spec.kernel_size)) * P * dtype.itemsize
    for b in _batch_chunks(N, per_sample):
        cols = im2col(x[b], spec, O, xp=xp[b])
        cols = cols.reshape(cols.shape[0], g, -1, P)
        np.matmul(wm, cols, out=y[b])
    return y.reshape((N, K) + O)


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    g = spec.groups
    N, C = x.shape[:2]
    K = gy.shape[1]
    O = gy.shape[2:]
    P = int(np.prod(O))
    dtype = np.result_type(x, gy)
    kk = int(np.prod(spec.kernel_size))
    gw = np.zeros((g, K // g, C // g * kk), dtype=dtype)
    xp = pad_spatial(x, spec.padding)
    gyg = gy.reshape(N, g, K // g, P)
    for b in _batch_chunks(N, C * kk * P * dtype.itemsize):
        cols = im2col(x[b], spec, O, xp=xp[b]).reshape(-1, g, C // g * kk, P)
        gw += np.matmul(gyg[b], cols.transpose(0, 1, 3, 2)).sum(axis=0)
    return gw.reshape((K, C // g) + tuple(spec.kernel_size))


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    g = spec.groups
    N, K = gy.shape[:2]
    Cg = w.shape[1]
    O = gy.shape[2:]
    P = int(np.prod(O))
    kk = int(np.prod(spec.kernel_size))
    dtype = np.result_type(gy, w)
    wt = _wmat(w, g).transpose(0, 2, 1)  # (g, C/g*kk, K/g)
    gyg = gy.reshape(N, g, K // g, P)
    gx = np.empty((N, g * Cg) + tuple(in_spatial), dtype=dtype)
    for b in _batch_chunks(N, g * Cg * kk * P * dtype.itemsize):
        dcols = np.matmul(wt, gyg[b])  # (n, g, C/g*kk, P)
        gx[b] = col2im(dcols.reshape(dcols.shape[0], g * Cg * kk, P), spec, in_spatial, O)
    return gx
