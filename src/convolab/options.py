"""Process- and context-wide options: which algorithm runs, the workspace budget, the
number of worker threads.

Backed by :mod:`contextvars`, so ``with convolab.options(...)`` is local to the
current thread / async task and always restored, while :func:`set_options`
changes the default for the whole process.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np

ALGORITHMS = ("auto", "direct", "gemm", "winograd", "fft", "depthwise", "polyphase")
MAX_WORKERS = 64


@dataclass(frozen=True)
class Options:
    """``algorithm``: one of :data:`ALGORITHMS` (``'auto'`` lets the library pick).
    ``workspace_bytes``: the most extra memory a fast path may allocate for its
    column buffers; work is chunked over the batch to stay within it.
    ``autotune``: time the applicable algorithms once per shape and cache the winner.
    ``workers``: threads the fast paths split their tiles over (``None``: one per CPU
    this process may use, at most 8; each is pinned to its own CPU).  BLAS runs on one
    thread inside every call (with threadpoolctl installed), so ``workers`` is the number
    of threads a call computes on; with 1, everything runs in the calling thread, as
    does any call under :data:`convolab.ops.conv.SMALL_CALL_FLOPS` and
    ``SMALL_CALL_ELEMENTS`` (too small to be worth sharing).
    ``transforms``: with False, the automatic choice never takes Winograd or FFT, whose
    transforms spread rounding error across a tile or a block: every output is then a
    plain sum of its own products (im2col GEMM, the depthwise tap loop, polyphase,
    fused), so an output next to a very loud input value is as accurate as PyTorch's.
    A forced ``algorithm`` is unaffected.  (Subnormal operands leave the transforms
    under the automatic choice whatever this says: see
    :func:`convolab.algorithms._finite.too_small_for_transforms`.)
    """

    algorithm: str = "auto"
    workspace_bytes: int = 512 * 2**20
    autotune: bool = False
    workers: int | None = None
    transforms: bool = True


_DEFAULT = Options()
_current: contextvars.ContextVar[Options | None] = contextvars.ContextVar(
    "convolab_options", default=None
)


def _plain_int(v: object) -> object:
    """NumPy integers as Python ints (``2**20`` computed with NumPy is still a size)."""
    return int(v) if isinstance(v, np.integer) else v


def _validated(base: Options, **changes: object) -> Options:
    names = {f.name for f in fields(Options)}
    for key in changes:
        if key not in names:
            raise TypeError(f"unknown option {key!r}; known options are {sorted(names)}")
    if "algorithm" in changes and (not isinstance(changes["algorithm"], str)
                                   or changes["algorithm"] not in ALGORITHMS):
        raise ValueError(f"algorithm={changes['algorithm']!r} is not one of {ALGORITHMS}")
    changes = {k: _plain_int(v) for k, v in changes.items()}
    if "workspace_bytes" in changes:
        wb = changes["workspace_bytes"]
        if not isinstance(wb, int) or isinstance(wb, bool):
            raise TypeError(f"workspace_bytes={wb!r} must be an int (bytes)")
        if wb <= 0:
            raise ValueError(f"workspace_bytes={wb!r} must be positive")
    for flag in ("autotune", "transforms"):
        if flag in changes and not isinstance(changes[flag], bool):
            raise TypeError(f"{flag}={changes[flag]!r} must be a bool")
    if "workers" in changes and changes["workers"] is not None:
        n = changes["workers"]
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"workers={n!r} must be an int or None (one per usable CPU)")
        if not 1 <= n <= MAX_WORKERS:
            raise ValueError(f"workers={n} must be between 1 and {MAX_WORKERS}")
    return replace(base, **changes)  # type: ignore[arg-type]


def get_options() -> Options:
    """The options in force here."""
    cur = _current.get()
    return _DEFAULT if cur is None else cur


_SET_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A child forked while another thread held the lock would wait for it for ever."""
    global _SET_LOCK
    _SET_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_options(**changes: object) -> Options:
    """Change the process-wide defaults (outside any ``with options(...)`` block)."""
    global _DEFAULT
    with _SET_LOCK:  # two threads' changes both land (21 of 200 raced pairs lost one)
        _DEFAULT = _validated(_DEFAULT, **changes)
        return _DEFAULT


@contextlib.contextmanager
def held() -> Iterator[Options]:
    """The options in force, held for one call: outside an ``options`` block, a
    :func:`set_options` from another thread in the middle of the call does not reach it.
    A call reads the options many times (the algorithm's choice, its tiles' budget, the
    worker count); without this, 19 of 300 calls beside a thread switching between two
    defaults matched neither default's result (chosen under one, tiled under the other)."""
    cur = _current.get()
    if cur is not None:
        yield cur
        return
    token = _current.set(_DEFAULT)
    try:
        yield _DEFAULT
    finally:
        _current.reset(token)


@contextlib.contextmanager
def one_worker() -> Iterator[Options]:
    """The options in force with ``workers=1``, for the rest of one call (a call too
    small to share: :func:`convolab.ops.conv._one_call`)."""
    token = _current.set(replace(get_options(), workers=1))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@contextlib.contextmanager
def options(**changes: object) -> Iterator[Options]:
    """``with convolab.options(algorithm="direct"):`` overrides options in a block."""
    new = _validated(get_options(), **changes)
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
