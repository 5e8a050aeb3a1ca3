"""Check a VJP against central finite differences (no PyTorch needed).

For a scalar ``L = Re(<g, f(a)>)`` with a random ``g``, the directional derivative of
``L`` along a random direction ``v`` must equal ``Re(<grad_a, v>)``, where ``grad_a``
comes from ``convolab.vjp``. This is the convention torch uses for complex inputs
too (the gradient is the conjugate Wirtinger derivative).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import numpy as np

from .autodiff import vjp


def _random_like(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    r = rng.standard_normal(a.shape)
    if np.iscomplexobj(a):
        r = r + 1j * rng.standard_normal(a.shape)
    return r.astype(a.dtype)


def gradcheck(
    fn: Callable,
    *args: Any,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    directions: int = 3,
    seed: int = 0,
    **kwargs: Any,
) -> bool:
    """Return True if every array argument's gradient matches finite differences;
    raise ``AssertionError`` naming the argument otherwise.  Use float64 (or complex128)."""
    rng = np.random.default_rng(seed)
    out, pullback = vjp(fn, *args, **kwargs)
    g = _random_like(rng, out)
    grads = pullback(g)

    def loss(call_args):
        return float(np.real(np.vdot(g, fn(*call_args, **kwargs))))

    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray) or grads[i] is None:
            continue
        if a.dtype not in (np.float64, np.complex128):
            raise TypeError(f"gradcheck needs float64/complex128 arrays; argument {i} is {a.dtype}")
        for _ in range(directions):
            v = _random_like(rng, a)
            plus = list(args)
            minus = list(args)
            plus[i] = a + eps * v
            minus[i] = a - eps * v
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = float(np.real(np.vdot(grads[i], v)))
            if not abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)):
                raise AssertionError(
                    f"gradient of argument {i} of {getattr(fn, '__name__', fn)}: finite "
                    f"differences give {numeric!r}, the VJP gives {analytic!r}"
                )
    return True
