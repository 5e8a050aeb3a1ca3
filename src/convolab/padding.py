"""Padding modes (``constant``/``reflect``/``replicate``/``circular``) and their adjoints.

``pad`` follows ``torch.nn.functional.pad``: ``pad`` is a flat sequence
``(last_lo, last_hi, second_last_lo, second_last_hi, ...)``, last dimension first.
Padding resolution for convolutions ('same', 'valid', 'causal', per-side) lives in
:func:`convolab.spec.resolve_padding`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import _check_int

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_spatial(x: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the last ``len(pairs)`` dims of ``x`` by ``(lo, hi)`` each (no copy if none)."""
    if all(lo == 0 and hi == 0 for lo, hi in pairs):
        return x
    lead = x.ndim - len(pairs)
    out = np.zeros(
        x.shape[:lead] + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[lead:], pairs)),
        dtype=x.dtype,
    )
    out[(Ellipsis,) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape[lead:], pairs))] = x
    return out


def crop_spatial(x: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Inverse of :func:`pad_spatial` (a view)."""
    lead = x.ndim - len(pairs)
    return x[
        (Ellipsis,)
        + tuple(slice(lo, n - hi) for n, (lo, hi) in zip(x.shape[lead:], pairs))
    ]


def parse_pad(pad: Sequence[int], ndim: int) -> list[tuple[int, int]]:
    """torch's flat ``pad`` -> per-dimension ``(lo, hi)`` for the last dims, first dim first."""
    if isinstance(pad, (str, bytes)) or not hasattr(pad, "__len__"):
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
    for dim, (n, (lo, hi)) in enumerate(zip(sizes, pairs), start=x.ndim - nd):
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
        if mode == "circular" and (lo < 0 or hi < 0) and (-lo >= n or -hi >= n):
            raise ValueError(f"negative circular padding ({lo}, {hi}) removes all of dim {dim}")
        if mode in ("replicate", "reflect") and (lo < 0 or hi < 0):
            if n + min(lo, 0) + min(hi, 0) <= 0:
                raise ValueError(
                    f"negative padding ({lo}, {hi}) on dimension {dim} removes all of it"
                )
        if n == 0 and (lo > 0 or hi > 0):
            raise ValueError(f"mode={mode!r} cannot pad dimension {dim} of size 0")


_NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad_forward(x: np.ndarray, pairs: list[tuple[int, int]], mode: str, value: float):
    lead = x.ndim - len(pairs)
    # Negative entries crop; do that first, then pad the rest.
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    if mode == "circular":
        # torch crops the circularly padded result, so wrap first, then crop.
        full = np.pad(x, [(0, 0)] * lead + grow, mode="wrap")
        return np.ascontiguousarray(crop_spatial(full, crop))
    xc = crop_spatial(x, crop)
    if mode == "constant":
        out = np.full(
            xc.shape[:lead]
            + tuple(n + lo + hi for n, (lo, hi) in zip(xc.shape[lead:], grow)),
            value,
            dtype=x.dtype,
        )
        out[(Ellipsis,) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(xc.shape[lead:], grow))] = xc
        return out
    return np.pad(xc, [(0, 0)] * lead + grow, mode=_NP_MODE[mode])


def _pad_adjoint_1d(g: np.ndarray, axis: int, n: int, lo: int, hi: int, mode: str):
    """Adjoint of padding one axis of length ``n`` by ``(lo, hi)`` (both >= 0)."""
    g = np.moveaxis(g, axis, -1)
    out = g[..., lo : lo + n].copy()
    if mode == "replicate":
        if lo:
            out[..., 0] += g[..., :lo].sum(-1)
        if hi:
            out[..., -1] += g[..., lo + n :].sum(-1)
    elif mode == "reflect":
        # padded index j < lo reads input lo - j; j >= lo + n reads 2(n-1) - (j - lo)
        if lo:
            out[..., 1 : lo + 1] += g[..., :lo][..., ::-1]
        if hi:
            out[..., n - 1 - hi : n - 1] += g[..., lo + n :][..., ::-1]
    elif mode == "circular":
        if lo:
            out[..., n - lo :] += g[..., :lo]
        if hi:
            out[..., :hi] += g[..., lo + n :]
    return np.moveaxis(out, -1, axis)


def pad_backward(
    grad: np.ndarray, in_shape: tuple[int, ...], pairs: list[tuple[int, int]], mode: str
) -> np.ndarray:
    """Gradient of :func:`pad` with respect to its input (no ``np.add.at``)."""
    lead = len(in_shape) - len(pairs)
    if mode == "circular":
        crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
        grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
        full_shape = grad.shape[:lead] + tuple(
            n + lo + hi for n, (lo, hi) in zip(in_shape[lead:], grow)
        )
        g = np.zeros(full_shape, dtype=grad.dtype)
        g[(Ellipsis,) + tuple(slice(lo, n - hi) for n, (lo, hi) in zip(full_shape[lead:], crop))] = grad
        for i, (lo, hi) in enumerate(grow):
            g = _pad_adjoint_1d(g, lead + i, in_shape[lead + i], lo, hi, mode)
        return g
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    g = grad
    cropped = tuple(n - a - b for n, (a, b) in zip(in_shape[lead:], crop))
    if mode == "constant":
        g = crop_spatial(g, grow)
    else:
        for i, (lo, hi) in enumerate(grow):
            g = _pad_adjoint_1d(g, lead + i, cropped[i], lo, hi, mode)
    return np.ascontiguousarray(pad_spatial(g, crop))
