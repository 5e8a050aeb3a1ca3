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
    """Return True if every array argument's gradient (positional or keyword) matches
    finite differences; raise ``AssertionError`` naming the argument otherwise, and
    ``ValueError`` when no argument is a NumPy array with a gradient.  Use float64 (or
    complex128).

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

    def loss(call_args, call_kwargs) -> tuple[float, float]:
        """The loss and the sum of its terms' magnitudes."""
        terms = np.conj(g) * fn(*call_args, **call_kwargs)
        return float(np.real(terms.sum())), float(np.abs(terms).sum())

    # every array argument, positional or keyword: (label, its gradient, a call with it replaced)
    checks = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and grads[i] is not None:
            checks.append((f"argument {i}", a, grads[i], _replace_arg(args, kwargs, i)))
    for k, a in kwargs.items():
        if isinstance(a, np.ndarray) and grads.by_name.get(k) is not None:
            checks.append((f"argument {k!r}", a, grads.by_name[k], _replace_arg(args, kwargs, k)))
    if not checks:
        raise ValueError(
            f"gradcheck: no NumPy array argument of {getattr(fn, '__name__', fn)} has a "
            "gradient to check"
        )
    if not (isinstance(directions, (int, np.integer)) and directions >= 1):
        raise ValueError(f"gradcheck: directions={directions!r} must be a positive int")
    for label, a, _, _ in checks:
        if a.dtype not in (np.float64, np.complex128):
            raise TypeError(f"gradcheck needs float64/complex128 arrays; {label} is {a.dtype}")
    for label, a, grad, call_with in checks:
        for _ in range(directions):
            v = _random_like(rng, a)
            (lp, sp), (lm, sm) = loss(*call_with(a + eps * v)), loss(*call_with(a - eps * v))
            numeric = (lp - lm) / (2 * eps)
            noise = 4 * np.finfo(a.dtype).eps / 2 * max(sp, sm) / eps
            analytic = float(np.real(np.vdot(grad, v)))
            tol = atol + rtol * max(abs(numeric), abs(analytic)) + noise
            if not abs(numeric - analytic) <= tol:
                raise AssertionError(
                    f"gradient of {label} of {getattr(fn, '__name__', fn)}: finite "
                    f"differences give {numeric!r}, the VJP gives {analytic!r}"
                )
    return True


def _replace_arg(args: tuple, kwargs: dict, key: int | str):
    """A function of a new value: the call's ``(args, kwargs)`` with ``key`` replaced."""

    def call_with(value):
        new_args, new_kwargs = list(args), dict(kwargs)
        if isinstance(key, int):
            new_args[key] = value
        else:
            new_kwargs[key] = value
        return new_args, new_kwargs

    return call_with
