"""Padding modes (``constant``/``reflect``/``replicate``/``circular``) and their adjoints.

``pad`` follows ``torch.nn.functional.pad``: ``pad`` is a flat sequence
``(last_lo, last_hi, second_last_lo, second_last_hi, ...)``, last dimension first.
Padding resolution for convolutions ('same', 'valid', 'causal', per-side) lives in
:func:`convolab.spec.resolve_padding`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .spec import _check_int

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_spatial(
    x: np.ndarray, pairs: Sequence[tuple[int, int]], value: float = 0.0
) -> np.ndarray:
    """Pad the last ``len(pairs)`` dims of ``x`` by ``(lo, hi)`` each with ``value``
    (zeros by default; no copy if there is nothing to pad).  Negative amounts crop."""
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        x = crop_spatial(x, [(max(0, -lo), max(0, -hi)) for lo, hi in pairs])
        pairs = [(max(0, lo), max(0, hi)) for lo, hi in pairs]
    if all(lo == 0 and hi == 0 for lo, hi in pairs):
        return x
    lead = x.ndim - len(pairs)
    out = np.full(
        x.shape[:lead] + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[lead:], pairs)),
        value,
        dtype=x.dtype,
    )
    out[(Ellipsis,) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape[lead:], pairs))] = x
    return out


def crop_spatial(x: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Inverse of :func:`pad_spatial` (a view)."""
    lead = x.ndim - len(pairs)
    return x[(Ellipsis,) + tuple(slice(lo, n - hi) for n, (lo, hi) in zip(x.shape[lead:], pairs))]


def parse_pad(pad: Sequence[int], ndim: int) -> list[tuple[int, int]]:
    """torch's flat ``pad`` -> per-dimension ``(lo, hi)`` for the last dims, first dim first."""
    if isinstance(pad, (str, bytes)) or not hasattr(pad, "__len__") or np.ndim(pad) != 1:
        raise TypeError(f"pad={pad!r} must be a sequence of ints (last dimension first)")
    vals = [_check_int(f"pad[{i}]", p) for i, p in enumerate(pad)]
    if len(vals) % 2:
        raise ValueError(f"pad={tuple(vals)} must have an even length (lo, hi per dimension)")
    if len(vals) // 2 > ndim:
        raise ValueError(
            f"pad={tuple(vals)} pads {len(vals) // 2} dimensions but input has only {ndim}"
        )
    pairs = [(vals[2 * i], vals[2 * i + 1]) for i in range(len(vals) // 2)]
    return pairs[::-1]


def _check_mode(mode: str, x: np.ndarray, pairs: list[tuple[int, int]]) -> None:
    if mode not in PAD_MODES:
        raise ValueError(f"mode={mode!r} is not a padding mode; expected one of {PAD_MODES}")
    if mode == "constant":
        return
    nd = len(pairs)
    if nd > 3:
        raise ValueError(
            f"mode={mode!r} pads at most the last 3 dimensions (pad has {2 * nd} entries)"
        )
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(
            f"mode={mode!r} with {2 * nd} pad entries expects a {nd + 1}-D (unbatched) "
            f"or {nd + 2}-D (batched) input, got {x.ndim}-D"
        )
    sizes = x.shape[x.ndim - nd :]
    if mode in ("reflect", "replicate") and 0 in x.shape[x.ndim - nd - 1 :]:
        raise ValueError(
            f"{mode} padding needs non-empty channel and padded dimensions (as torch; "
            f"only a batch dimension may be empty), got input.shape={x.shape}"
        )
    outs = [n + lo + hi for n, (lo, hi) in zip(sizes, pairs)]
    if mode in ("reflect", "replicate") and max(outs) < 1:
        # torch's rule: some padded dimension keeps an element (others may be empty)
        raise ValueError(
            f"{mode} padding {tuple(pairs)} of dimensions of size {tuple(sizes)} leaves an "
            f"output of size 0 in every padded dimension ({tuple(outs)}); at least one must "
            "be at least 1 (as torch)"
        )
    for dim, (n, (lo, hi)) in enumerate(zip(sizes, pairs), start=x.ndim - nd):
        m = n - max(-lo, 0) - max(-hi, 0)  # what is left after negative entries crop
        if n + lo + hi < 0:
            raise ValueError(
                f"{mode} padding ({lo}, {hi}) on dimension {dim} of size {n} leaves an "
                f"output of size {n + lo + hi}; it must be at least 0"
            )
        if mode == "replicate":
            continue
        if mode == "circular" and m <= 0 and max(lo, 0) + max(hi, 0) > 0:
            raise ValueError(
                f"{mode} padding ({lo}, {hi}) on dimension {dim} of size {n} leaves nothing "
                "to pad from"
            )
        if mode == "reflect" and (lo >= n or hi >= n):
            raise ValueError(
                f"reflect padding ({lo}, {hi}) on dimension {dim} must be smaller than "
                f"that dimension's size {n}"
            )
        if mode == "circular" and (lo > n or hi > n):
            raise ValueError(
                f"circular padding ({lo}, {hi}) on dimension {dim} must be at most "
                f"that dimension's size {n}"
            )


def _index_map(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """For each output position along one axis, the input position it copies (torch's rules).

    ``replicate`` clamps ``i - lo`` into the input and ``reflect`` mirrors it (negative
    entries included); ``circular`` first crops the negative entries, then wraps the rest.
    """
    i = np.arange(n + lo + hi)
    if mode == "replicate":
        return np.clip(i - lo, 0, n - 1)
    if mode == "reflect":
        j = np.abs(i - lo)
        return np.where(j >= n, 2 * (n - 1) - j, j)
    clo, chi = max(-lo, 0), max(-hi, 0)
    if i.size == 0:
        return i
    return np.mod(i - max(lo, 0), n - clo - chi) + clo


def _take_adjoint(g: np.ndarray, axis: int, idx: np.ndarray, n: int) -> np.ndarray:
    """Adjoint of ``np.take(x, idx, axis)`` for an axis of length ``n``: sums of the
    gradient entries that read the same input position (sort + ``add.reduceat``)."""
    shape = list(g.shape)
    shape[axis] = n
    out = np.zeros(shape, dtype=g.dtype)
    if idx.size == 0:
        return out
    order = np.argsort(idx, kind="stable")
    uniq, starts = np.unique(idx[order], return_index=True)
    sums = np.add.reduceat(np.take(g, order, axis=axis), starts, axis=axis)
    index = [slice(None)] * g.ndim
    index[axis] = uniq
    out[tuple(index)] = sums
    return out


def _pad_forward(x: np.ndarray, pairs: list[tuple[int, int]], mode: str, value: float):
    lead = x.ndim - len(pairs)
    if mode != "constant":
        out = x
        for i, (lo, hi) in enumerate(pairs):
            out = np.take(out, _index_map(x.shape[lead + i], lo, hi, mode), axis=lead + i)
        return out if out is not x else x.copy()
    # Negative entries crop; do that first, then pad the rest.
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    xc = crop_spatial(x, crop)
    out = np.full(
        xc.shape[:lead] + tuple(n + lo + hi for n, (lo, hi) in zip(xc.shape[lead:], grow)),
        value,
        dtype=x.dtype,
    )
    out[(Ellipsis,) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(xc.shape[lead:], grow))] = xc
    return out


def pad_backward(
    grad: np.ndarray, in_shape: tuple[int, ...], pairs: list[tuple[int, int]], mode: str
) -> np.ndarray:
    """Gradient of :func:`pad` with respect to its input (no ``np.add.at``)."""
    lead = len(in_shape) - len(pairs)
    if mode != "constant":
        g = grad
        for i, (lo, hi) in enumerate(pairs):
            n = in_shape[lead + i]
            g = _take_adjoint(g, lead + i, _index_map(n, lo, hi, mode), n)
        return g
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    return np.ascontiguousarray(pad_spatial(crop_spatial(grad, grow), crop))
