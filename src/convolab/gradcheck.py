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
    raise ``AssertionError`` naming the argument otherwise.  Use float64 (or complex128).

    The loss is ``<g, fn(...)>`` for a random ``g``, differenced along random directions
    ``v``: ``(L(a + eps v) - L(a - eps v)) / (2 eps)`` against ``<grad, v>``.  Besides
    ``atol + rtol * |value|``, the comparison allows for the rounding of the two losses,
    ``4 u sum|g * fn(...)| / eps`` (``u``: the unit round-off): when the loss is a sum of
    large terms that cancel, that noise, not the gradient, decides the last digits (a
    loss of 3.1 made of terms summing to 1000 in absolute value differenced to 2e-8,
    against the 1.3e-8 that ``atol + rtol`` alone allowed)."""
    rng = np.random.default_rng(seed)
    out, pullback = vjp(fn, *args, **kwargs)
    g = _random_like(rng, out)
    grads = pullback(g)

    def loss(call_args) -> tuple[float, float]:
        """The loss and the sum of its terms' magnitudes."""
        terms = np.conj(g) * fn(*call_args, **kwargs)
        return float(np.real(terms.sum())), float(np.abs(terms).sum())

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
            (lp, sp), (lm, sm) = loss(plus), loss(minus)
            numeric = (lp - lm) / (2 * eps)
            noise = 4 * np.finfo(a.dtype).eps / 2 * max(sp, sm) / eps
            analytic = float(np.real(np.vdot(grads[i], v)))
            tol = atol + rtol * max(abs(numeric), abs(analytic)) + noise
            if not abs(numeric - analytic) <= tol:
                raise AssertionError(
                    f"gradient of argument {i} of {getattr(fn, '__name__', fn)}: finite "
                    f"differences give {numeric!r}, the VJP gives {analytic!r}"
                )
    return True
