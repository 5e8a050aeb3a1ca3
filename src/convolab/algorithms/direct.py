"""The reference algorithm: the convolution written the way the math reads.

Notation (used by every algorithm module)::

    x  : (N, C, *S)      input, C = in_channels, S = input spatial shape
    w  : (K, C/g, *k)    weight, K = out_channels, g = groups, k = kernel_size
    y  : (N, K, *O)      output, O = output spatial shape

For one output position ``o`` and output channel ``m`` in group ``j``::

    y[n, m, o] = sum_{c in group j} sum_{t in kernel offsets}
                 w[m, c, t] * xpad[n, c, o*s + t*d]

This module sums over the kernel offsets ``t`` with a Python loop (there are
``prod(k)`` of them) and over the channels with ``einsum``: each term is a
strided slice of the padded input, so there is no loop over batch or pixels.
It is slow but obviously right, and every other algorithm is tested against it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..padding import crop_spatial, pad_spatial
from ..spec import ConvSpec


def tap_slices(t, spec: ConvSpec, out_spatial) -> tuple[slice, ...]:
    """The slice of the padded input read by kernel offset ``t`` for every output position."""
    return tuple(
        slice(ti * d, ti * d + s * (o - 1) + 1, s)
        for ti, d, s, o in zip(t, spec.dilation, spec.stride, out_spatial)
    )


def kernel_offsets(spec: ConvSpec):
    return itertools.product(*(range(k) for k in spec.kernel_size))


def _grouped(a: np.ndarray, g: int) -> np.ndarray:
    """(N, C, *rest) -> (N, g, C/g, *rest)."""
    return a.reshape(a.shape[0], g, a.shape[1] // g, *a.shape[2:])


def forward(x: np.ndarray, w: np.ndarray, spec: ConvSpec, out_spatial=None) -> np.ndarray:
    """y = conv(x, w): x (N, C, *S), w (K, C/g, *k) -> y (N, K, *O)."""
    g = spec.groups
    N, K = x.shape[0], w.shape[0]
    xp = pad_spatial(x, spec.padding)
    O = spec.conv_out_shape(x.shape[2:]) if out_spatial is None else tuple(out_spatial)
    wg = w.reshape(g, K // g, *w.shape[1:])  # (g, K/g, C/g, *k)
    y = np.zeros((N, g, K // g) + O, dtype=np.result_type(x, w))
    for t in kernel_offsets(spec):
        xs = _grouped(xp[(slice(None), slice(None)) + tap_slices(t, spec, O)], g)
        y += np.einsum("njc...,jmc->njm...", xs, wg[(Ellipsis,) + t])
    return y.reshape((N, K) + O)


def input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial) -> np.ndarray:
    """The adjoint of :func:`forward` in ``x`` (= transposed convolution).

    gy (N, K, *O), w (K, C/g, *k) -> gx (N, C, *in_spatial).  Each kernel offset
    scatters ``w[:, :, t]^T gy`` into the strided slice it was read from.
    """
    g = spec.groups
    N, K, Cg = gy.shape[0], w.shape[0], w.shape[1]
    O = gy.shape[2:]
    # The windows of O outputs end within the padded input (for a transposed conv with
    # output_padding >= stride, O is smaller than the conv formula gives for in_spatial,
    # and they stop short of its end)
    padded = spec.padded_shape(in_spatial)
    gxp = np.zeros((N, g, Cg) + padded, dtype=np.result_type(gy, w))
    wg = w.reshape(g, K // g, *w.shape[1:])
    gyg = _grouped(gy, g)
    for t in kernel_offsets(spec):
        sl = (Ellipsis,) + tap_slices(t, spec, O)
        gxp[sl] += np.einsum("njm...,jmc->njc...", gyg, wg[(Ellipsis,) + t])
    gxp = gxp.reshape((N, g * Cg) + padded)
    return np.ascontiguousarray(crop_spatial(gxp, spec.padding))


def weight_grad(x: np.ndarray, gy: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The adjoint of :func:`forward` in ``w``: x (N, C, *S), gy (N, K, *O) -> (K, C/g, *k)."""
    g = spec.groups
    K, C = gy.shape[1], x.shape[1]
    O = gy.shape[2:]
    xp = pad_spatial(x, spec.padding)
    gw = np.zeros((g, K // g, C // g) + spec.kernel_size, dtype=np.result_type(x, gy))
    gyg = _grouped(gy, g)
    for t in kernel_offsets(spec):
        xs = _grouped(xp[(slice(None), slice(None)) + tap_slices(t, spec, O)], g)
        P = math.prod(O)
        gw[(Ellipsis,) + t] = np.einsum(
            "njcp,njmp->jmc", xs.reshape(xs.shape[:3] + (P,)), gyg.reshape(gyg.shape[:3] + (P,))
        )
    return gw.reshape((K, C // g) + spec.kernel_size)
