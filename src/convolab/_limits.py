"""Refuse, at once and clearly, arrays that a call could never allocate.

A huge stride, padding or size (``padding=2**31``) asks for an output or a padded
input of terabytes or more: NumPy would fail late (after the cost model had planned a
billion tiles), with an ``OverflowError`` from a view's strides, or not at all until
the machine runs out of memory.  :func:`check_size` compares the bytes with the
machine's physical memory first and raises :class:`TooLarge` naming the arguments.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TooLarge", "check_arrays", "check_size", "human_bytes", "physical_memory"]


class TooLarge(ValueError, MemoryError):
    """An array the call needs is larger than the machine's memory (a ``ValueError``,
    and a ``MemoryError`` for code that catches allocation failures)."""


@functools.cache
def physical_memory() -> int:
    """The machine's physical memory in bytes (``2**63 - 1`` where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 2**63 - 1


@functools.cache
def _limit() -> int:
    return min(physical_memory(), int(np.iinfo(np.intp).max))


def short_repr(value: Any) -> str:
    """``repr`` of an argument for a one-line error: an array or tensor by its shape,
    anything else cut to 60 characters (the repr of a batch of data is not a message)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def check_arrays(what: str, arrays: Mapping[str, Sequence[int]], dtype,
                 because: str | Callable[[], str]) -> None:
    """Raise :class:`TooLarge` when the arrays (name -> shape) of ``dtype`` together
    would not fit in the machine's memory (nor in NumPy's index range); ``because``
    names the arguments that make them (a callable is called only then: formatting
    costs microseconds on every call)."""
    itemsize = np.dtype(dtype).itemsize
    # Python ints: NumPy integers in a shape would wrap
    nbytes = sum(math.prod(map(int, shape)) for shape in arrays.values()) * itemsize
    limit = _limit()
    if nbytes > limit:
        which = ", ".join(f"{name} of shape {tuple(int(n) for n in shape)}"
                          for name, shape in arrays.items())
        why = because() if callable(because) else because
        raise TooLarge(
            f"{what}: {why} gives {which} ({human_bytes(nbytes)}), more than this "
            f"machine's memory ({human_bytes(limit)})"
        )


def check_size(what: str, name: str, shape: Sequence[int], dtype,
               because: str | Callable[[], str]) -> None:
    """:func:`check_arrays` for one array."""
    check_arrays(what, {name: shape}, dtype, because)
