"""unfold (im2col) and fold (col2im) for any spatial rank; each is the other's adjoint.

``unfold(x)``: ``(N, C, *S)`` -> ``(N, C*prod(k), L)`` with ``L = prod(O)``, the
columns that the GEMM path multiplies by the weight.  ``fold`` sums overlapping
blocks back into ``(N, C, *output_size)``.  torch only does 2-D; here the rank is
``len(kernel_size)`` when it is a sequence; for an int ``kernel_size`` it is
``len(output_size)`` (``fold``, when that is a sequence), else 2 (torch's).
"""

from __future__ import annotations

import math

import numpy as np

from .._limits import check_size
from ..algorithms.gemm import col2im, im2col
from ..dtypes import as_array, check_dtypes, compute_dtype
from ..spec import as_tuple, make_spec
from .conv import _idle_strides


def _rank(kernel_size, output_size=None) -> int:
    if isinstance(kernel_size, (tuple, list, np.ndarray)) and np.size(kernel_size) == 0:
        raise ValueError(f"kernel_size={kernel_size!r} must have one entry per spatial "
                         "dimension, at least one")
    for v in (kernel_size, output_size):
        if isinstance(v, (tuple, list)) or (isinstance(v, np.ndarray) and v.ndim == 1):
            return len(v)
    return 2


def _own(result: np.ndarray, *sources: np.ndarray) -> np.ndarray:
    """``result``, copied if it may be a view of a caller's array (a 1x1 unfold, a fold
    of one block per position and their gradients are the input itself, reshaped):
    writing to a result must never change an input, as with torch.  Copied too if it is
    read-only: the columns are a read-only window view, which ``ascontiguousarray``
    passes through where it is already contiguous (one block covering the whole padded
    input, an empty batch)."""
    if not result.flags.writeable or any(np.may_share_memory(result, s) for s in sources):
        return result.copy()
    return result


def _non_empty(what: str, a: np.ndarray, batched: bool) -> None:
    """torch's rule: only the batch dimension may be empty."""
    if 0 in a.shape[1 if batched else 0 :]:
        raise ValueError(
            f"{what}: input.shape={a.shape} has an empty dimension; as in torch, only the "
            "batch dimension may be empty"
        )


def _spec(kernel_size, dilation, padding, stride, rank):
    k = as_tuple("kernel_size", kernel_size, rank)
    return make_spec(k, stride, padding, dilation)


def _unfold_prepare(input, kernel_size, dilation, padding, stride):
    x = as_array("input", input)
    dt = check_dtypes(input=x)
    r = _rank(kernel_size)
    if x.ndim not in (r + 1, r + 2):
        raise ValueError(
            f"unfold: expected a {r + 1}-D (unbatched) or {r + 2}-D (batched) input for "
            f"kernel_size={kernel_size!r}, got input.shape={x.shape}"
        )
    spec = _spec(kernel_size, dilation, padding, stride, r)
    unbatched = x.ndim == r + 1
    _non_empty("unfold", x, not unbatched)
    xb = x[None] if unbatched else x
    O = spec.conv_out_shape(xb.shape[2:])
    if any(o <= 0 for o in O):
        raise ValueError(
            f"unfold: input spatial size {xb.shape[2:]} with kernel_size={spec.kernel_size}, "
            f"dilation={spec.dilation}, padding={spec.padding}, stride={spec.stride} gives "
            f"{O} sliding blocks; every dimension must have at least one"
        )
    cdt = compute_dtype(dt)
    N, C = xb.shape[:2]
    check_size("unfold", "columns", (N, C * math.prod(spec.kernel_size), math.prod(O)), cdt,
               lambda: f"padding={spec.padding}, stride={spec.stride}, "
               f"dilation={spec.dilation}")
    check_size("unfold", "a padded input", (N, C) + spec.padded_shape(xb.shape[2:]), cdt,
               lambda: f"padding={spec.padding}")
    return xb.astype(cdt, copy=False), _idle_strides(spec, xb.shape[2:], O), O, unbatched, dt


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Extract sliding blocks: ``(N, C, *S)`` (or unbatched ``(C, *S)``) ->
    ``(N, C*prod(kernel_size), L)``.  The rank is ``len(kernel_size)``; an int
    ``kernel_size`` means 2-D, as torch."""
    xb, spec, O, unbatched, dt = _unfold_prepare(input, kernel_size, dilation, padding, stride)
    cols = np.ascontiguousarray(im2col(xb, spec, O))
    return _own((cols[0] if unbatched else cols).astype(dt, copy=False), xb)


def _fold_prepare(input, output_size, kernel_size, dilation, padding, stride):
    c = as_array("input", input)
    dt = check_dtypes(input=c)
    r = _rank(kernel_size, output_size)
    out = as_tuple("output_size", output_size, r)
    spec = _spec(kernel_size, dilation, padding, stride, r)
    if c.ndim not in (2, 3):
        raise ValueError(
            f"fold: expected a 2-D (unbatched) or 3-D (batched) input (N, C*prod(k), L), "
            f"got input.shape={c.shape}"
        )
    unbatched = c.ndim == 2
    _non_empty("fold", c, not unbatched)
    cb = c[None] if unbatched else c
    kk = math.prod(spec.kernel_size)
    if cb.shape[1] % kk:
        raise ValueError(
            f"fold: input.shape[-2]={cb.shape[1]} must be divisible by the product of "
            f"kernel_size={spec.kernel_size} ({kk})"
        )
    O = spec.conv_out_shape(out)
    if any(o <= 0 for o in O) or cb.shape[2] != math.prod(O):
        raise ValueError(
            f"fold: output_size={out}, kernel_size={spec.kernel_size}, dilation="
            f"{spec.dilation}, padding={spec.padding}, stride={spec.stride} give {O} blocks "
            f"(L={math.prod(O) if all(o > 0 for o in O) else 0}), but input.shape[-1]="
            f"{cb.shape[2]}; they must match"
        )
    cdt = compute_dtype(dt)
    check_size("fold", "a padded output", (cb.shape[0], cb.shape[1] // kk)
               + spec.padded_shape(out), cdt,
               lambda: f"output_size={out}, padding={spec.padding}")
    return cb.astype(cdt, copy=False), _idle_strides(spec, out, O), out, O, unbatched, dt


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding blocks back: ``(N, C*prod(k), L)`` (or unbatched) -> ``(N, C,
    *output_size)``.  The rank is ``len(kernel_size)``, or for an int ``kernel_size``
    ``len(output_size)``; both ints mean 2-D, as torch."""
    cb, spec, out, O, unbatched, dt = _fold_prepare(
        input, output_size, kernel_size, dilation, padding, stride
    )
    y = col2im(cb, spec, out, O)
    return _own((y[0] if unbatched else y).astype(dt, copy=False), cb)


def unfold_vjp(input, kernel_size, dilation=1, padding=0, stride=1):
    xb, spec, O, unbatched, dt = _unfold_prepare(input, kernel_size, dilation, padding, stride)
    cols = np.ascontiguousarray(im2col(xb, spec, O))
    out = _own((cols[0] if unbatched else cols).astype(dt, copy=False), xb)
    spatial, cdt = xb.shape[2:], xb.dtype  # not xb: the pullback would keep it alive

    def pullback(g):
        gb = g[None] if unbatched else g
        gx = col2im(gb.astype(cdt, copy=False), spec, spatial, O)
        return {"input": _own((gx[0] if unbatched else gx).astype(dt, copy=False), g)}

    return out, pullback


def fold_vjp(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    cb, spec, out_size, O, unbatched, dt = _fold_prepare(
        input, output_size, kernel_size, dilation, padding, stride
    )
    y = col2im(cb, spec, out_size, O)
    out = _own((y[0] if unbatched else y).astype(dt, copy=False), cb)
    cdt = cb.dtype  # not cb: the pullback would keep it alive

    def pullback(g):
        gb = g[None] if unbatched else g
        gc = np.ascontiguousarray(im2col(gb.astype(cdt, copy=False), spec, O))
        return {"input": _own((gc[0] if unbatched else gc).astype(dt, copy=False), g)}

    return out, pullback


VJPS = {unfold: unfold_vjp, fold: fold_vjp}
