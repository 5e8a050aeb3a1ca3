"""Check a VJP against central finite differences (no PyTorch needed).

For a scalar ``L = Re(<g, f(a)>)`` with a random ``g``, the directional derivative of
``L`` along a random direction ``v`` must equal ``Re(<grad_a, v>)``, where ``grad_a``
comes from ``convolab.vjp`` (or a VJP of your own, ``vjp=``). This is the convention
torch uses for complex inputs too (the gradient is the conjugate Wirtinger derivative).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .autodiff import _VJPS
from .autodiff import vjp as _convolab_vjp
from .options import options


def _random_like(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    r = rng.standard_normal(a.shape)
    if np.iscomplexobj(a):
        r = r + 1j * rng.standard_normal(a.shape)
    return r.astype(a.dtype)


def gradcheck(
    fn: Callable,
    *args: Any,
    vjp: Callable | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 0.0,
    directions: int = 3,
    seed: int = 0,
    raise_exception: bool = True,
    **kwargs: Any,
) -> bool:
    """Return True if every array argument's gradient (positional or keyword) matches
    finite differences; raise :class:`GradcheckError` (an ``AssertionError``) naming the
    argument otherwise (return False instead with ``raise_exception=False``, as torch's
    ``gradcheck``), and ``ValueError`` when no argument is a NumPy array with a
    gradient, or when the check could not tell a right gradient from a wrong one.
    Arrays must be float64 or complex128 (``TypeError`` otherwise: float32 rounding
    would hide a wrong gradient).  Unlike torch's, ``eps`` is relative (below) and the
    default tolerances are tighter (``rtol=1e-6``, ``atol=0``, where torch takes 1e-3
    and 1e-5): a 0.1% error in a gradient fails here.

    ``vjp``: the VJP under test, called as ``vjp(*args, **kwargs)`` and returning
    ``(output, pullback)``; ``pullback(g)`` returns one gradient per positional argument
    (None for one without), or a mapping from positions / keyword names to gradients.
    Default: :func:`convolab.vjp` of ``fn``, run under ``options(transforms=False)``:
    Winograd and FFT round at the size of their inputs, which finite differences cannot
    tell from a wrong gradient near zero (force ``options(algorithm=...)`` to check one).

    Every array argument of a floating dtype with at least one dimension must get a
    gradient of its own shape and dtype.  The loss is ``<g, fn(...)>`` for a random ``g``,
    differenced along random directions ``v`` with a step of ``eps`` times the argument's
    RMS (so that the check means the same at any scale): ``L(a + h v) - L(a - h v)``
    against ``<grad, (a + h v) - (a - h v)>``, the step actually taken after rounding
    (at ``a = 1e4`` a step of ``1e-6`` rounds by ~1e-12 relative, which decided the
    last digits).  The allowance is ``atol + rtol * |value|`` plus the rounding of the
    two losses, ``4 u sum|g * fn(...)|`` (``u``: the unit round-off), and of the product
    ``<grad, step>``: when the loss is a sum of large terms that cancel, that noise, not
    the gradient, decides the last digits.  Where that allowance reaches a tenth of the
    size of the gradient's own terms, the check could pass a wrong gradient and raises
    ``ValueError`` ("inconclusive") instead of returning True."""
    if not isinstance(raise_exception, (bool, np.bool_)):
        raise TypeError(f"gradcheck: raise_exception={raise_exception!r} must be True or "
                        "False")
    settings = (eps, rtol, atol, directions, seed)
    try:
        if vjp is None:
            with options(transforms=False):
                return _gradcheck(fn, args, kwargs, None, *settings)
        return _gradcheck(fn, args, kwargs, vjp, *settings)
    except GradcheckError:
        if raise_exception:
            raise
        return False


class GradcheckError(AssertionError):
    """A gradient that finite differences contradict, or that the VJP does not give
    (missing, or of the wrong shape or dtype): what ``raise_exception=False`` turns into
    a False result."""


def _gradcheck(fn: Callable, args: tuple, kwargs: dict, vjp: Callable | None, eps, rtol,
               atol, directions, seed) -> bool:
    """:func:`gradcheck` itself (under the options it chose)."""
    eps = _positive_float("eps", eps, allow_zero=False)
    rtol = _positive_float("rtol", rtol)
    atol = _positive_float("atol", atol)
    if isinstance(directions, bool) or not isinstance(directions, numbers.Integral) or (
            directions < 1):
        raise ValueError(f"gradcheck: directions={directions!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"gradcheck: seed={seed!r} must be an int >= 0")
    name = getattr(fn, "__name__", repr(fn))
    args, kwargs = _as_arrays(args), _as_arrays(kwargs)
    labels = _labels(fn, len(args))
    targets = [(i, a) for i, a in enumerate(args) if _differentiable(a)]
    targets += [(k, a) for k, a in kwargs.items() if _differentiable(a)]
    if not targets:
        raise ValueError(f"gradcheck: no NumPy array argument of {name} has a gradient to "
                         "check")
    for key, a in targets:
        if a.dtype not in (np.float64, np.complex128):
            raise TypeError(f"gradcheck needs float64/complex128 arrays; {labels(key)} is "
                            f"{a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"gradcheck: {labels(key)} has NaN or inf entries; finite "
                             "differences need finite values")

    rng = np.random.default_rng(seed)
    biggest = max(float(np.abs(a).max()) if a.size else 0.0 for _, a in targets)
    if vjp is None:
        if not _has_vjp(fn):
            raise TypeError(f"gradcheck: convolab.vjp has no gradient for {name}; to check "
                            "a VJP of your own, pass it as vjp= (called with the same "
                            "arguments, returning (output, pullback))")
        out, pullback = _convolab_vjp(fn, *args, **kwargs)
    else:
        got = vjp(*args, **kwargs)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and callable(got[1])):
            raise TypeError(f"gradcheck: vjp(*args, **kwargs) returned {type(got).__name__}; it "
                            "must return (output, pullback), pullback a function of the output "
                            "gradient (as convolab.vjp)")
        out, pullback = got
    out = np.asarray(out)
    if not np.isfinite(out).all():
        raise ValueError(f"gradcheck: {name} gives NaN or inf at these arguments; finite "
                         "differences need finite values")
    g = _random_like(rng, out)
    grads = _by_key(pullback(g), len(args))

    def loss(call_args, call_kwargs) -> tuple[float, float]:
        """The loss and the sum of its terms' magnitudes."""
        terms = np.conj(g) * fn(*call_args, **call_kwargs)
        return float(np.real(terms.sum())), float(np.abs(terms).sum())

    l0 = loss(args, kwargs)[0]
    for key, a in targets:
        label = labels(key)
        grad = grads.get(key)
        if grad is None:
            raise GradcheckError(f"gradient of {label} of {name}: the VJP gives none")
        grad = np.asarray(grad)
        if grad.shape != a.shape or grad.dtype != a.dtype:
            raise GradcheckError(
                f"gradient of {label} of {name}: the VJP gives shape {grad.shape} "
                f"{grad.dtype}, the argument is {a.shape} {a.dtype}")
        call_with = _replace_arg(args, kwargs, key)
        big = float(np.abs(a).max()) if a.size else 0.0
        rms = big * float(np.sqrt(np.mean(np.abs(a / big) ** 2))) if big > 0 else 0.0
        h = eps * (rms if rms > 0 else 1.0)
        flat = _flat_step(biggest)
        for j in range(directions):
            v = _random_like(rng, a)
            # where the loss's rounding drowns this argument's part of it, a step large
            # enough to lift it out (exact for convolab's ops, linear in each argument).
            # The signal is the larger of the VJP's terms and the measured difference, so
            # a VJP that wrongly gives zero cannot stop the step from growing.
            step, grown = h, 0
            for _ in range(MAX_STEPS):
                numeric, analytic, tol, scale, allowed, terms = _directional(
                    loss, call_with, a, v, step, grad, atol, rtol, label, name, l0)
                signal = max(scale, abs(numeric))
                if allowed <= 0.1 * signal or step >= flat:
                    break  # conclusive; or a step so large that only a true zero is left
                tried = step
                if signal == 0 or grown >= 2:  # nothing moved, or only the noise shrank
                    step = max(10 * step, flat)
                else:
                    step = max(10 * step, 4 * np.finfo(a.dtype).eps / 2 * terms / signal * 100)
                    grown += 1
            else:
                raise ValueError(
                    f"gradcheck: inconclusive for {label} of {name}: even at a step of "
                    f"{tried:.3g} the rounding of the loss allows {allowed:.3g}, as much as "
                    f"the gradient ({signal:.3g}), so a wrong gradient could pass; check "
                    "where this argument's part of the output is not so small against the "
                    "rest (or with a smaller atol)")
            if not abs(numeric - analytic) <= tol:
                rel = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-300)
                what = (f"gradient of {label} of {name}: finite differences give {numeric!r}, "
                        f"the VJP gives {analytic!r} (relative error {rel:.3g}; difference "
                        f"{abs(numeric - analytic):.3g}, allowed {tol:.3g} = atol + "
                        "rtol*|value| + the loss's rounding; random direction "
                        f"{j} of seed={seed}")
                if step > h and vjp is not None:  # a user function may not be linear:
                    # half the step must give the same difference, else the larger step's
                    # truncation error, not the gradient, may explain the mismatch
                    half = _directional(loss, call_with, a, v, step / 2, grad, atol, rtol,
                                        label, name, l0)[0]
                    if not abs(half - numeric) <= tol:
                        raise ValueError(
                            f"gradcheck: inconclusive: {what}, at a step of {step:.3g}, "
                            f"where half the step gives {half!r}: the function is not linear "
                            "at that scale, so the difference may not be the gradient's)")
                    # a difference within the loss's rounding says nothing where the
                    # output did move: a bounded function (tanh) beside a large output
                    # value stays drowned at every step, however large
                    if abs(numeric) <= allowed and _moved(fn, call_with, a, v, step):
                        raise ValueError(
                            f"gradcheck: inconclusive: {what}, at a step of {step:.3g}, "
                            f"where the output moves but the difference stays within the "
                            f"loss's rounding ({allowed:.3g}): the rest of the output drowns "
                            "this argument's part, and the function is not linear, so no "
                            "step tells; check a function of the part that depends on it)")
                raise GradcheckError(what + ")")
    return True


def _moved(fn: Callable, call_with, a: np.ndarray, v: np.ndarray, h: float) -> bool:
    """Whether any output of ``fn`` differs between ``a + h v`` and ``a - h v``."""
    (pa, pk), (ma, mk) = call_with(a + h * v), call_with(a - h * v)
    return not np.array_equal(np.asarray(fn(*pa, **pk)), np.asarray(fn(*ma, **mk)))


def _has_vjp(fn: Callable) -> bool:
    """Whether :func:`convolab.vjp` knows ``fn`` (or the function a partial binds)."""
    while isinstance(fn, functools.partial) and fn.func is not fn:
        fn = fn.func
    try:
        return fn in _VJPS
    except TypeError:  # unhashable
        return False


# at most this many steps per direction, each larger than the last
MAX_STEPS = 12


def _flat_step(biggest: float) -> float:
    """A step so large (1e50 times the largest value of any argument) that an output
    still exactly unchanged does not depend on the argument at all: an argument whose
    part of the output is tiny next to the rest moves nothing at smaller steps (x*1e-30
    next to a bias of 1), and a VJP that wrongly gives zero must not pass there."""
    return min(1e50 * max(1.0, biggest), 1e100)  # and no overflow in the products


def _directional(loss, call_with, a, v, h, grad, atol, rtol, label, name, l0):
    """Finite difference and VJP along ``v`` with step ``h``: (numeric, analytic, the
    allowed difference, the size of the gradient's terms, the part of the allowance that
    does not scale with the value, the size of the loss's terms).  ``l0``: the loss at
    ``a``; the second difference ``L(a+hv) - 2 L(a) + L(a-hv)`` measures the rounding of
    the function itself (zero for an exact linear function), which for FFT convolutions
    follows the inputs' size, not the output's."""
    h = float(h)
    ap, am = a + h * v, a - h * v
    (lp, sp), (lm, sm) = loss(*call_with(ap)), loss(*call_with(am))
    if not all(map(math.isfinite, (lp, sp, lm, sm))):
        raise ValueError(f"gradcheck: inconclusive for {label} of {name}: the loss "
                         f"overflows at a step of {h:.3g} (values too large for finite "
                         "differences)")
    taken = ap - am  # 2 h v, after rounding
    numeric = float((lp - lm) / (2 * h))
    analytic = float(np.real(np.vdot(grad, taken))) / (2 * h)
    scale = float(np.abs(grad * taken).sum()) / (2 * h)  # the terms of <grad, step>
    u = np.finfo(a.dtype).eps / 2
    noise = (4 * u * max(sp, sm) / h + 4 * u * max(1.0, math.log2(max(a.size, 2))) * scale
             + 3 * abs(lp - 2 * l0 + lm) / (2 * h))
    tol = atol + rtol * max(abs(numeric), abs(analytic)) + noise
    return numeric, analytic, tol, scale, atol + noise, max(sp, sm)


def _positive_float(name: str, value: Any, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"gradcheck: {name}={value!r} must be a real number")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"gradcheck: {name}={value!r} must be finite and {rule}")
    return v


def _differentiable(a: Any) -> bool:
    """An argument that must get a gradient: a floating array with a dimension (a 0-d
    array, like a pad value, may have none)."""
    return isinstance(a, np.ndarray) and a.ndim >= 1 and a.dtype.kind in "fc"


def _as_arrays(values):
    """Nested lists of numbers as arrays (they are checked like arrays), native byte order;
    everything else (ints, tuples of ints, strings) as it is."""
    def one(v):
        if isinstance(v, list):
            try:
                arr = np.asarray(v)
            except ValueError:
                return v
            return arr if arr.dtype.kind in "fc" and arr.ndim >= 1 else v
        if isinstance(v, np.ndarray) and not v.dtype.isnative:
            return v.astype(v.dtype.newbyteorder("="))
        if isinstance(v, np.ndarray) and type(v) is not np.ndarray:
            return np.asarray(v)
        return v
    if isinstance(values, dict):
        return {k: one(v) for k, v in values.items()}
    return tuple(one(v) for v in values)


def _labels(fn: Callable, n_args: int) -> Callable[[int | str], str]:
    """``argument 1 ('weight')`` for a positional argument (its name from ``fn``'s
    signature where it has one), ``argument 'bias'`` for a keyword."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:n_args]

    def label(key: int | str) -> str:
        if isinstance(key, str):
            return f"argument {key!r}"
        return f"argument {key}" + (f" ({names[key]!r})" if key < len(names) else "")
    return label


def _by_key(grads: Any, n_args: int) -> dict:
    """The pullback's result as ``{position or keyword name: gradient}``."""
    if isinstance(grads, Mapping):
        out = dict(grads)
    elif isinstance(grads, (tuple, list)):
        if len(grads) > n_args:
            raise TypeError(f"gradcheck: the pullback returned {len(grads)} gradients for "
                            f"{n_args} positional argument(s); it must return one per "
                            "positional argument (None where there is none)")
        out = dict(enumerate(grads))
    elif isinstance(grads, np.ndarray) and n_args == 1:
        out = {0: grads}
    else:
        raise TypeError(f"gradcheck: the pullback returned {type(grads).__name__}; it must "
                        "return one gradient per positional argument, or a mapping")
    by_name = getattr(grads, "by_name", None)  # convolab.vjp's gradients, by keyword too
    if by_name:
        out.update(by_name)
    return out


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
