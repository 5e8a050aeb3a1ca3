"""Gradients of convolutions with torch.nn.grad's signatures.

``conv{1,2,3}d_input(input_size, weight, grad_output, ...)`` and
``conv{1,2,3}d_weight(input, weight_size, grad_output, ...)``.  ``input_size`` and
``weight_size`` are full shapes, e.g. ``(N, C_in, H, W)`` and ``(C_out, C_in/g, kh, kw)``.
"""

from __future__ import annotations

import numpy as np

from . import select
from .ops.conv import prepare


def _input(rank):
    def fn(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
        size = tuple(int(s) for s in input_size)
        gy = np.asarray(grad_output)
        # Validate through conv's rules with a stand-in input of the right shape.
        dummy = np.broadcast_to(np.zeros((), gy.dtype), size)
        p = prepare(
            dummy,
            weight,
            None,
            stride,
            padding,
            dilation,
            groups,
            transposed=False,
            rank=rank,
            what=f"conv{rank}d_input",
        )
        gyb = gy[None] if p.unbatched else gy
        expect = (p.x.shape[0], p.w.shape[0]) + p.out_spatial
        if gyb.shape != expect:
            raise ValueError(f"grad_output.shape={gy.shape} must be {expect[int(p.unbatched) :]}")
        gyb = gyb.astype(p.x.dtype, copy=False)
        w = np.conj(p.w) if np.iscomplexobj(p.w) else p.w
        algo = select.choose("input_grad", p.spec, gyb.shape, w.shape, gyb.dtype).module
        gx = algo.input_grad(gyb, w, p.spec, p.x.shape[2:])
        return (gx[0] if p.unbatched else gx).astype(p.dtype, copy=False)

    fn.__name__ = f"conv{rank}d_input"
    fn.__doc__ = f"Gradient of conv{rank}d with respect to its input."
    return fn


def _weight(rank):
    def fn(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
        x = np.asarray(input)
        size = tuple(int(s) for s in weight_size)
        if len(size) != rank + 2:
            raise ValueError(f"weight_size={size} must have {rank + 2} entries")
        dummy = np.broadcast_to(np.zeros((), x.dtype), size)
        p = prepare(
            x,
            dummy,
            None,
            stride,
            padding,
            dilation,
            groups,
            transposed=False,
            rank=rank,
            what=f"conv{rank}d_weight",
        )
        gy = np.asarray(grad_output)
        gyb = gy[None] if p.unbatched else gy
        expect = (p.x.shape[0], size[0]) + p.out_spatial
        if gyb.shape != expect:
            raise ValueError(f"grad_output.shape={gy.shape} must be {expect[int(p.unbatched) :]}")
        xb = np.conj(p.x) if np.iscomplexobj(p.x) else p.x
        gyb = gyb.astype(xb.dtype, copy=False)
        algo = select.choose("weight_grad", p.spec, xb.shape, size, xb.dtype).module
        return algo.weight_grad(xb, gyb, p.spec).astype(p.dtype, copy=False)

    fn.__name__ = f"conv{rank}d_weight"
    fn.__doc__ = f"Gradient of conv{rank}d with respect to its weight."
    return fn


conv1d_input, conv2d_input, conv3d_input = (_input(r) for r in (1, 2, 3))
conv1d_weight, conv2d_weight, conv3d_weight = (_weight(r) for r in (1, 2, 3))

__all__ = [
    "conv1d_input",
    "conv2d_input",
    "conv3d_input",
    "conv1d_weight",
    "conv2d_weight",
    "conv3d_weight",
]
