"""``pad`` as ``torch.nn.functional.pad``, and its vector-Jacobian product."""

from __future__ import annotations

import numbers


from ..dtypes import as_array
from ..padding import _check_mode, _pad_forward, pad_backward, parse_pad


def _prepare(input, pad, mode, value):
    x = as_array("input", input)
    if x.dtype == object:
        raise TypeError("input has dtype object, which is not supported")
    pairs = parse_pad(pad, x.ndim)
    _check_mode(mode, x, pairs)
    if value is None:
        value = 0.0
    if not isinstance(value, numbers.Number) or isinstance(value, bool):
        raise TypeError(f"value={value!r} must be a number")
    if mode != "constant" and value != 0:
        raise ValueError(f"value={value!r} is only meaningful with mode='constant', not {mode!r}")
    lead = x.ndim - len(pairs)
    sizes = [n + lo + hi for n, (lo, hi) in zip(x.shape[lead:], pairs)]
    if any(s < 0 for s in sizes):
        raise ValueError(
            f"pad={tuple(pad)} would give a negative size {tuple(sizes)} for input.shape={x.shape}"
        )
    return x, pairs


def pad(input, pad, mode="constant", value=None):
    """Pad the last ``len(pad)//2`` dimensions; ``pad = (last_lo, last_hi, ...)``.

    Modes: ``constant`` (with ``value``; negative entries crop), ``reflect`` (mirror
    without repeating the edge; each pad < that dimension's size), ``replicate``
    (repeat the edge), ``circular`` (wrap around; each pad <= size).
    """
    x, pairs = _prepare(input, pad, mode, value)
    return _pad_forward(x, pairs, mode, 0.0 if value is None else value)


def pad_vjp(input, pad, mode="constant", value=None):
    x, pairs = _prepare(input, pad, mode, value)
    out = _pad_forward(x, pairs, mode, 0.0 if value is None else value)
    return out, lambda g: {"input": pad_backward(g, x.shape, pairs, mode)}


VJPS = {pad: pad_vjp}
