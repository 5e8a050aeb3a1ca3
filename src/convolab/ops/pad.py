"""``pad`` as ``torch.nn.functional.pad``, and its vector-Jacobian product."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._limits import check_size

from ..dtypes import as_array
from ..padding import _check_mode, _pad_forward, pad_backward, parse_pad


def _prepare(input, pad, mode, value):
    x = as_array("input", input)
    if x.dtype.kind not in "biufc":
        raise TypeError(
            f"input has dtype {x.dtype}, which is not supported; pad takes numeric or bool "
            "arrays"
        )
    pairs = parse_pad(pad, x.ndim)
    _check_mode(mode, x, pairs)
    if value is None:
        value = 0.0
    if not isinstance(value, (numbers.Number, np.bool_)):
        raise TypeError(f"value={value!r} must be a number")
    if mode != "constant" and value != 0:
        raise ValueError(f"value={value!r} is only meaningful with mode='constant', not {mode!r}")
    _check_value(value, x.dtype)
    lead = x.ndim - len(pairs)
    out = x.shape[:lead] + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[lead:], pairs))
    check_size("pad", "an output", out, x.dtype, lambda: f"pad={tuple(pad)}")
    for dim, (n, (lo, hi)) in enumerate(zip(x.shape[lead:], pairs), start=lead):
        # constant and circular crop first, then pad; replicate and reflect map each
        # output position into the input (_index_map), so a crop wider than the input
        # is defined there, as in torch (its other rules in _check_mode)
        if mode in ("constant", "circular") and max(-lo, 0) + max(-hi, 0) > n:
            raise ValueError(
                f"pad={tuple(pad)} crops {max(-lo, 0) + max(-hi, 0)} elements from dimension "
                f"{dim} of size {n} (input.shape={x.shape}); a crop cannot exceed the size"
            )
    return x, pairs


def _check_value(value, dtype: np.dtype) -> None:
    """The fill value must be representable in the input's dtype (as torch checks):
    no NaN/inf or out-of-range value into integers, no overflow to inf, no imaginary
    part dropped."""
    if isinstance(value, (complex, np.complexfloating)):
        if dtype.kind != "c":  # as torch, even with a zero imaginary part
            raise TypeError(f"value={value!r} is complex but the input is {dtype}")
        value = value.real
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not (math.isfinite(value) and info.min <= value <= info.max):
            raise ValueError(
                f"value={value!r} cannot be converted to the input's dtype {dtype} "
                f"(range [{info.min}, {info.max}])"
            )
    elif dtype.kind in "fc":
        big = float(np.finfo(dtype).max)
        if math.isfinite(value) and abs(value) > big:
            raise ValueError(
                f"value={value!r} overflows the input's dtype {dtype} (largest {big:g})"
            )


def pad(input, pad, mode="constant", value=None):
    """Pad the last ``len(pad)//2`` dimensions; ``pad = (last_lo, last_hi, ...)``.

    Modes: ``constant`` (with ``value``; negative entries crop), ``reflect`` (mirror
    without repeating the edge; each pad < that dimension's size), ``replicate``
    (repeat the edge), ``circular`` (wrap around; each pad <= size).  A circular pad
    wider than what the negative entries leave wraps around again (periodically);
    torch refuses some of these and returns uninitialised values for others.
    ``reflect`` and ``replicate`` map output position ``i`` to an input position (the
    clamp or mirror of ``i - lo``), so, as in torch, their crops may pass the input
    (``replicate`` ``(-4, 5)`` of 3 values repeats the last one four times), and an
    output dimension may be empty while another padded dimension keeps an element.
    """
    x, pairs = _prepare(input, pad, mode, value)
    return _pad_forward(x, pairs, mode, 0.0 if value is None else value)


def pad_vjp(input, pad, mode="constant", value=None):
    x, pairs = _prepare(input, pad, mode, value)
    out = _pad_forward(x, pairs, mode, 0.0 if value is None else value)
    shape = x.shape  # not x: the pullback would keep it alive

    def pullback(g):
        gx = pad_backward(g, shape, pairs, mode)
        # pad (0, 0) is the identity: its gradient must still not be grad_out itself
        return {"input": gx.copy() if np.may_share_memory(gx, g) else gx}

    return out, pullback


VJPS = {pad: pad_vjp}
