"""Gradients of convolutions with torch.nn.grad's signatures.

``conv{1,2,3}d_input(input_size, weight, grad_output, ...)`` and
``conv{1,2,3}d_weight(input, weight_size, grad_output, ...)``.  ``input_size`` and
``weight_size`` are full shapes, e.g. ``(N, C_in, H, W)`` and ``(C_out, C_in/g, kh, kw)``.
They validate like ``conv`` (with a zero-cost stand-in for the array that is given by its
size) and compute only the gradient asked for.

Each has a VJP (:func:`convolab.vjp`), so a backward pass written with them can itself be
differentiated (double backward: gradient penalties, Hessian-vector products).  Both are
linear in each array argument; with ``y = conv(x, w)``::

    gx = conv_input(x.shape, w, gy):   d<v, gx>/dw  = conv_weight(v, w.shape, gy)
                                       d<v, gx>/dgy = conv(v, w)
    gw = conv_weight(x, w.shape, gy):  d<V, gw>/dx  = conv_input(x.shape, V, gy)
                                       d<V, gw>/dgy = conv(x, V)

(complex arrays too: these are the adjoints under ``Re<a, b>``, torch's convention).
"""

from __future__ import annotations

import numpy as np

from ._limits import check_size
from .dtypes import as_array, check_dtypes
from .ops.conv import Prepared, conv1d, conv2d, conv3d, grads, prepare


def _check_grad_output(p: Prepared, grad_output, out_channels: int) -> np.ndarray:
    gy = as_array("grad_output", grad_output)
    expect = (p.x.shape[0], out_channels) + p.out_spatial
    expect = expect[1:] if p.unbatched else expect
    if gy.shape != expect:
        raise ValueError(f"grad_output.shape={gy.shape} must be {expect}")
    return gy


def _size(arg: str, size, rank: int) -> tuple[int, ...]:
    """A full shape given by the caller: rank + 2 (or rank + 1, unbatched) ints >= 0."""
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or np.ndim(size) != 1:
        raise TypeError(f"{arg}={size!r} must be a sequence of ints (a full shape)")
    size = tuple(size)
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in size):
        raise TypeError(f"{arg}={size} must hold ints")
    if len(size) not in (rank + 1, rank + 2) or any(v < 0 for v in size):
        raise ValueError(
            f"{arg}={size} must be {rank + 2} (or {rank + 1}, unbatched) non-negative sizes"
        )
    return tuple(int(v) for v in size)


def _stand_in(size, dtype) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype), size)


def _input(rank):
    def fn(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
        grad_output = as_array("grad_output", grad_output)  # native byte order, once
        # checked here, by their names: the stand-in below has grad_output's dtype, so
        # prepare() would blame "input", an argument this function does not take
        weight = as_array("weight", weight)
        dtype = check_dtypes(weight=weight, grad_output=grad_output)
        size = _size("input_size", input_size, rank)
        check_size(f"conv{rank}d_input", "the input gradient", size, dtype,
                   lambda: f"input_size={size}")
        p = prepare(
            _stand_in(size, dtype),
            weight,
            None,
            stride,
            padding,
            dilation,
            groups,
            transposed=False,
            rank=rank,
            what=f"conv{rank}d_input",
            shape_only="input",
        )
        gy = _check_grad_output(p, grad_output, p.w.shape[0])
        return grads(p, gy, ("input",))["input"]

    fn.__name__ = f"conv{rank}d_input"
    fn.__doc__ = f"Gradient of conv{rank}d with respect to its input."
    return fn


def _weight(rank):
    def fn(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
        x = as_array("input", input)
        grad_output = as_array("grad_output", grad_output)
        check_dtypes(input=x, grad_output=grad_output)
        weight_size = _size("weight_size", weight_size, rank)
        if len(weight_size) != rank + 2:
            raise ValueError(f"weight_size={weight_size} must have {rank + 2} entries")
        p = prepare(
            x,
            _stand_in(weight_size, x.dtype),
            None,
            stride,
            padding,
            dilation,
            groups,
            transposed=False,
            rank=rank,
            what=f"conv{rank}d_weight",
            shape_only="weight",
        )
        gy = _check_grad_output(p, grad_output, weight_size[0])
        return grads(p, gy, ("weight",))["weight"]

    fn.__name__ = f"conv{rank}d_weight"
    fn.__doc__ = f"Gradient of conv{rank}d with respect to its weight."
    return fn


conv1d_input, conv2d_input, conv3d_input = (_input(r) for r in (1, 2, 3))
conv1d_weight, conv2d_weight, conv3d_weight = (_weight(r) for r in (1, 2, 3))

_CONV = {1: conv1d, 2: conv2d, 3: conv3d}
_INPUT = {1: conv1d_input, 2: conv2d_input, 3: conv3d_input}
_WEIGHT = {1: conv1d_weight, 2: conv2d_weight, 3: conv3d_weight}


def _input_vjp(rank):
    def vjp_impl(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
        w = as_array("weight", weight)
        gy = as_array("grad_output", grad_output)
        settings = (stride, padding, dilation, groups)
        out = _INPUT[rank](input_size, w, gy, *settings)

        def pullback(v):
            return {
                "weight": _WEIGHT[rank](v, w.shape, gy, *settings),
                "grad_output": _CONV[rank](v, w, None, *settings),
            }

        return out, pullback

    return vjp_impl


def _weight_vjp(rank):
    def vjp_impl(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
        x = as_array("input", input)
        gy = as_array("grad_output", grad_output)
        settings = (stride, padding, dilation, groups)
        out = _WEIGHT[rank](x, weight_size, gy, *settings)

        def pullback(v):
            return {
                "input": _INPUT[rank](x.shape, v, gy, *settings),
                "grad_output": _CONV[rank](x, v, None, *settings),
            }

        return out, pullback

    return vjp_impl


VJPS = {_INPUT[r]: _input_vjp(r) for r in _INPUT} | {_WEIGHT[r]: _weight_vjp(r) for r in _WEIGHT}

__all__ = [
    "conv1d_input",
    "conv2d_input",
    "conv3d_input",
    "conv1d_weight",
    "conv2d_weight",
    "conv3d_weight",
]
