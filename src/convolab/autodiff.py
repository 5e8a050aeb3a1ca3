"""``vjp(fn, *args, **kwargs)``: forward value and a pullback for every public op."""

from __future__ import annotations

import functools
import inspect
from typing import Any
from collections.abc import Callable

import numpy as np

from . import grad as _grad
from .dtypes import as_array
from .ops import conv as _conv
from .ops import pad as _pad
from .ops import unfold as _unfold

_VJPS: dict[Callable, Callable] = {}
for _m in (_conv, _unfold, _pad, _grad):
    _VJPS.update(_m.VJPS)
# inspect.signature costs ~40 us a call: computed once per public op
_SIGNATURES = {f: inspect.signature(f) for f in _VJPS}


class Grads(tuple):
    """A tuple with one entry per positional argument of the call (``None`` where the
    argument takes no gradient: ``stride``, ``padding``, a ``bias`` of ``None``, ...).
    ``.by_name`` maps every array argument's name, positional or keyword, to its
    gradient."""

    by_name: dict[str, Any]


def vjp(fn: Callable, *args: Any, **kwargs: Any):
    """Run ``fn(*args, **kwargs)`` and return ``(out, pullback)``.

    ``pullback(grad_out)`` returns :class:`Grads`: for ``conv2d(x, w, b)``,
    ``(grad_input, grad_weight, grad_bias)``.  ``grad_out`` must have ``out``'s shape.

    The pullback keeps references to C-contiguous float32/float64/complex arguments,
    not copies: change such an input array in place before calling it and the gradients
    follow the changed values (torch would raise; copy first if you must).  float16
    arrays, other layouts (strided views, Fortran order, other byte order) and
    array-likes (lists) are converted once, so later changes to them are not seen.

    ``fn`` may be a ``functools.partial`` of a known function (settings bound once,
    ``partial(conv2d, padding=1)``); the tuple then has one entry per positional
    argument given here, and ``.by_name`` has the bound arrays' gradients too.
    """
    bound_first = 0
    while isinstance(fn, functools.partial) and fn.func is not fn:
        args, kwargs = fn.args + args, {**fn.keywords, **kwargs}
        bound_first += len(fn.args)
        fn = fn.func
    impl = _VJPS.get(fn)
    if impl is None:
        known = sorted(f.__name__ for f in _VJPS)
        raise TypeError(f"vjp: no gradient is defined for {fn!r}; known functions: {known}")
    try:
        bound = _SIGNATURES[fn].bind(*args, **kwargs)
    except TypeError as exc:  # inspect's message names no function: "got an unexpected ..."
        names = ", ".join(_SIGNATURES[fn].parameters)
        raise TypeError(f"vjp: {fn.__name__}() {exc} (its arguments: {names})") from None
    out, core = impl(*args, **kwargs)
    pos_names = list(bound.arguments)[bound_first: len(args)]
    # the pullback needs only these: holding ``out`` would keep it alive (torch does not)
    shape, dtype = out.shape, out.dtype

    def pullback(grad_out):
        if dtype.kind not in "fc":
            raise TypeError(
                f"{fn.__name__}: the output has dtype {dtype} (from an integer or bool "
                "input): only float and complex inputs have gradients, as in torch"
            )
        g = as_array("grad_out", grad_out)
        if g.shape != shape:
            raise ValueError(f"grad_out.shape={g.shape} must equal the output's shape {shape}")
        if not (np.issubdtype(g.dtype, np.number)):
            raise TypeError(f"grad_out has dtype {g.dtype}, expected a numeric array")
        if np.iscomplexobj(g) and dtype.kind != "c":
            # casting would drop the imaginary part: a wrong gradient, not a conversion
            raise TypeError(
                f"grad_out has dtype {g.dtype} but the output is real ({dtype}); "
                "a real output needs a real grad_out"
            )
        grads = core(g.astype(dtype, copy=False))
        # the op's own gradients decide: an array-like given as a list gets its gradient
        res = Grads(grads.get(n) for n in pos_names)
        res.by_name = {k: v for k, v in grads.items() if v is not None}
        return res

    return out, pullback
