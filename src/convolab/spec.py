"""Convolution parameters, normalised once.

Every public function turns its ``stride``/``padding``/``dilation``/``groups``/
``output_padding`` arguments into a frozen :class:`ConvSpec` here; the algorithms
below trust it and never re-parse arguments.  The output-size formulas live in
this module only (:func:`conv_output_size`, :func:`conv_transpose_output_size`)
and are shared by the ops, ``explain``, ``draw`` and the tests.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

IntOrTuple = int | Sequence[int]
PaddingArg = int | str | Sequence[int] | Sequence[Sequence[int]]

PADDING_STRINGS = ("valid", "same", "causal")


def _check_int(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_, np.timedelta64)) or not isinstance(
        value, numbers.Integral
    ):
        raise TypeError(f"{name}={value!r} must be an int, got {type(value).__name__}")
    return int(value)


def as_tuple(name: str, value: IntOrTuple, rank: int) -> tuple[int, ...]:
    """``3`` -> ``(3,)*rank``; a sequence must have exactly ``rank`` ints."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()  # np.array(2) is a scalar, not a sequence
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = tuple(value)
        if len(vals) == 1 and rank != 1:
            vals = vals * rank
        if len(vals) != rank:
            raise ValueError(
                f"{name}={tuple(value)!r} must have {rank} "
                f"{'entry' if rank == 1 else 'entries'}, one per spatial dimension "
                f"(got {len(vals)})"
            )
        return tuple(_check_int(f"{name}[{i}]", v) for i, v in enumerate(vals))
    return (_check_int(name, value),) * rank


def _positive(name: str, vals: tuple[int, ...], given: object) -> tuple[int, ...]:
    for v in vals:
        if v <= 0:
            raise ValueError(f"{name}={_fmt(given)} must be positive (every entry >= 1)")
    return vals


def _fmt(given: object) -> str:
    """The value as the caller wrote it (lists and arrays shown as tuples)."""
    if isinstance(given, np.ndarray) and given.ndim == 0:
        given = given.item()
    if isinstance(given, (list, tuple, np.ndarray)):
        return str(tuple(int(v) if isinstance(v, numbers.Integral) else v for v in given))
    return repr(given)


def resolve_padding(
    padding: PaddingArg,
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
    *,
    transposed: bool = False,
) -> tuple[tuple[int, int], ...]:
    """Turn every accepted padding form into ``((lo, hi), ...)`` per spatial dim.

    Forms: an int; a tuple of ints (symmetric per dim); ``[(lo, hi), ...]`` per side
    (JAX style, a convolab extension); ``'valid'`` (none); ``'same'`` (output size
    equals input size, stride 1 only; total ``d*(k-1)`` with the odd element on the
    right, as torch does); ``'causal'`` (all ``d*(k-1)`` on the left, as Keras, any
    stride: output ``i`` sees inputs up to ``i*stride``; a convolab extension).
    Strings are rejected for transposed convolutions; ``unfold`` and ``fold`` also
    accept them (a convolab extension: torch's
    ``F.unfold``/``F.fold`` take ints only).
    """
    rank = len(kernel_size)
    if isinstance(padding, str):
        if transposed:
            raise ValueError(
                f"padding={padding!r}: string padding is not supported for transposed "
                "convolutions; give an int, a tuple or per-side pairs"
            )
        if padding == "valid":
            return ((0, 0),) * rank
        if padding in ("same", "causal"):
            if padding == "same" and any(s != 1 for s in stride):
                raise ValueError(
                    f"padding={padding!r} is not supported for strided convolutions "
                    f"(stride={stride}); the output could not keep the input size"
                )
            totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
            if padding == "same":
                return tuple((t // 2, t - t // 2) for t in totals)
            return tuple((t, 0) for t in totals)
        raise ValueError(
            f"padding={padding!r} is not a known padding string; expected one of "
            f"{PADDING_STRINGS} or an int / tuple / per-side pairs"
        )
    if isinstance(padding, (list, tuple)) and any(
        isinstance(p, (list, tuple, np.ndarray)) for p in padding
    ):
        if len(padding) != rank or not all(
            isinstance(p, (list, tuple, np.ndarray)) and len(p) == 2 for p in padding
        ):
            raise ValueError(
                f"padding={padding!r}: per-side padding must be {rank} pairs (lo, hi), "
                "one per spatial dimension"
            )
        pairs = tuple(
            (_check_int(f"padding[{i}][0]", lo), _check_int(f"padding[{i}][1]", hi))
            for i, (lo, hi) in enumerate(padding)
        )
    else:
        sym = as_tuple("padding", padding, rank)  # type: ignore[arg-type]
        pairs = tuple((p, p) for p in sym)
    for lo, hi in pairs:
        if lo < 0 or hi < 0:
            raise ValueError(f"padding={_fmt(padding)} must be non-negative")
    return pairs


def _conv_out(size: int, k: int, s: int, lo: int, hi: int, d: int) -> int:
    """The formula of :func:`conv_output_size`, unchecked (<= 0: the kernel does not fit)."""
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def _conv_transpose_out(size: int, k: int, s: int, lo: int, hi: int, d: int, op: int) -> int:
    """The formula of :func:`conv_transpose_output_size`, unchecked."""
    return (size - 1) * s - lo - hi + d * (k - 1) + op + 1


def _check_sizes(what: str, **values: object) -> dict[str, int]:
    """Ints, each within its rule: ``size``, pads, ``op`` >= 0; ``k``, ``s``, ``d`` >= 1."""
    out = {name: _check_int(name, v) for name, v in values.items()}
    for name, v in out.items():
        low = 1 if name in ("k", "s", "d") else 0
        if v < low:
            raise ValueError(f"{what}: {name}={v} must be >= {low}")
    return out


def conv_output_size(size: int, k: int, s: int = 1, lo: int = 0, hi: int | None = None,
                     d: int = 1) -> int:
    """Output length of a convolution along one dimension: input ``size``, kernel ``k``,
    stride ``s``, padding ``lo`` / ``hi`` on the low / high side (``hi`` defaults to
    ``lo``), dilation ``d``.

    ``floor((size + lo + hi - d*(k-1) - 1) / s) + 1``; a ``ValueError`` when the
    effective kernel ``d*(k-1) + 1`` does not fit in the padded input.
    """
    hi = lo if hi is None else hi
    a = _check_sizes("conv_output_size", size=size, k=k, s=s, lo=lo, hi=hi, d=d)
    o = _conv_out(**a)
    if o <= 0:
        raise ValueError(
            f"conv_output_size: the effective kernel d*(k-1)+1 = {a['d'] * (a['k'] - 1) + 1} "
            f"is larger than the padded input, size + lo + hi = {size + lo + hi}"
        )
    return o


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of a max/avg pooling along one dimension, as torch.

    ``conv_output_size`` with padding ``p`` on both sides, rounding up with
    ``ceil_mode``; a last window that would start in the right padding is dropped.
    """
    o = _conv_out(size, k, s, p, p + (s - 1 if ceil_mode else 0), d)
    if ceil_mode and (o - 1) * s >= size + p:
        o -= 1
    return o


def conv_transpose_output_size(size: int, k: int, s: int = 1, lo: int = 0,
                               hi: int | None = None, d: int = 1, op: int = 0) -> int:
    """Output length of a transposed convolution along one dimension: as
    :func:`conv_output_size`, plus ``op``, the output_padding.

    ``(size - 1)*s - lo - hi + d*(k-1) + op + 1``; a ``ValueError`` for an ``op`` not
    below the stride or the dilation, or a size that is not positive.
    """
    hi = lo if hi is None else hi
    a = _check_sizes(
        "conv_transpose_output_size", size=size, k=k, s=s, lo=lo, hi=hi, d=d, op=op
    )
    if a["op"] >= a["s"] and a["op"] >= a["d"]:
        raise ValueError(
            f"conv_transpose_output_size: op={op} (output_padding) must be smaller than "
            f"either s={s} or d={d}"
        )
    o = _conv_transpose_out(**a)
    if o <= 0:
        raise ValueError(
            f"conv_transpose_output_size: (size-1)*s - lo - hi + d*(k-1) + op + 1 = {o} "
            "must be positive"
        )
    return o


@dataclass(frozen=True)
class ConvSpec:
    """Normalised parameters of an N-d (transposed) convolution.

    ``padding`` is per side, ``((lo, hi), ...)``.  For a transposed convolution it
    is the padding of the forward convolution it is the transpose (gradient) of,
    i.e. what is cropped from each side of the full output.
    """

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1
    output_padding: tuple[int, ...] = ()
    transposed: bool = False

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def effective_kernel(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    def conv_out_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape of the forward convolution for input ``spatial``."""
        return tuple(
            _conv_out(n, k, s, lo, hi, d)
            for n, k, s, (lo, hi), d in zip(
                spatial, self.kernel_size, self.stride, self.padding, self.dilation
            )
        )

    def transpose_out_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        op = self.output_padding or (0,) * self.rank
        return tuple(
            _conv_transpose_out(n, k, s, lo, hi, d, o)
            for n, k, s, (lo, hi), d, o in zip(
                spatial, self.kernel_size, self.stride, self.padding, self.dilation, op
            )
        )

    def out_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        if self.transposed:
            return self.transpose_out_shape(spatial)
        return self.conv_out_shape(spatial)

    def padded_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(spatial, self.padding))


def make_spec(
    kernel_size: tuple[int, ...],
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    output_padding: IntOrTuple | None = None,
    *,
    transposed: bool = False,
) -> ConvSpec:
    """Validate and normalise parameters that do not depend on the input shape."""
    rank = len(kernel_size)
    for i, k in enumerate(kernel_size):
        if k <= 0:
            raise ValueError(
                f"kernel_size={kernel_size} must be positive in every spatial dimension "
                f"(dimension {i} is {k})"
            )
    stride_t = _positive("stride", as_tuple("stride", stride, rank), stride)
    dilation_t = _positive("dilation", as_tuple("dilation", dilation, rank), dilation)
    groups = _check_int("groups", groups)
    if groups <= 0:
        raise ValueError(f"groups={groups} must be a positive integer")
    pad = resolve_padding(padding, kernel_size, dilation_t, stride_t, transposed=transposed)
    op: tuple[int, ...] = ()
    if transposed:
        op = as_tuple("output_padding", 0 if output_padding is None else output_padding, rank)
        for o, s, d in zip(op, stride_t, dilation_t):
            if o < 0:
                raise ValueError(f"output_padding={op} must be non-negative")
            if o >= s and o >= d:
                raise ValueError(
                    f"output_padding={op} must be smaller than either stride={stride_t} "
                    f"or dilation={dilation_t} in every dimension"
                )
    return ConvSpec(kernel_size, stride_t, pad, dilation_t, groups, op, transposed)
