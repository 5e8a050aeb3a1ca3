"""NaN and inf as PyTorch propagates them, for the algorithms that change the arithmetic.

A direct sum (``direct``, ``gemm``, ``depthwise``) makes an output NaN or infinite exactly
where PyTorch's does: where a non-finite value meets it through a product.  Winograd
and FFT do not: their transforms mix a whole tile (or the whole signal), so one NaN
input spreads over every output of its tile, and ``inf * 0`` inside a transform turns
an infinite output into NaN.  Such results are recomputed through ``gemm``
(:func:`falls_back_to_gemm`), so non-finite inputs give PyTorch's pattern; finite
inputs pay one check of each result (a maximum and a minimum: 0.36 ms on a 12.8 MB
output; measured 56.5 -> 57.9 ms on the 3x3 C64 fwd+bwd, whose three results it
checks).  The Winograd forward and input gradient check each tile's block as it is
written instead (:func:`tile_checks`), on the workers and in the cache, rather than the
whole result in the calling thread afterwards (0.3-0.8 ms there, the other core idle).

A non-finite *weight* needs more for the input gradient (and the transposed conv's
forward): every fast path multiplies ``w`` by zeros there (the border of a padded or
spread ``gy``), where ``inf * 0`` makes NaN that no product of the convolution makes.
Those calls run on ``direct`` (:func:`convolab.ops.conv._input_grad`).
"""

from __future__ import annotations

import functools
import threading

import numpy as np


def all_finite(a: np.ndarray) -> bool:
    """True when every value of ``a`` is finite: a NaN anywhere makes the maximum NaN,
    an inf makes the maximum (or the minimum) infinite.  Two reductions without BLAS:
    a BLAS dot (``a @ a``) was as fast alone but, through the thread-count changes it
    needs not to leave OpenBLAS's threads spinning, cost 4 ms of a 54 ms fwd+bwd."""
    if a.size == 0:
        return True
    if np.iscomplexobj(a):
        # each part on its own: viewing the parts side by side needs a contiguous last
        # axis, which a strided view (a weight sliced w[..., ::2]) does not have
        return all_finite(a.real) and all_finite(a.imag)
    return bool(np.isfinite(a.max()) and np.isfinite(a.min()))


# Per thread: the records of the decorated call running there (see tile_checks)
_LOCAL = threading.local()


def tile_checks(dtype) -> list | None:
    """For an algorithm running under :func:`falls_back_to_gemm` (in the calling thread,
    before its tiles start): a list to which every tile appends, with
    :func:`check_block`, whether the block of the result it wrote is finite.  Taking it
    is a promise to check every block; the decorator then reads these records instead
    of checking the whole result afterwards, in the calling thread, while the other
    cores wait (0.3-0.8 ms after a 3x3 C64 56x56 forward).  None when no decorated call
    runs here, or for complex results (the whole-result check views their real and
    imaginary parts side by side)."""
    checks = getattr(_LOCAL, "checks", None)
    if checks is None or np.dtype(dtype).kind == "c":
        return None
    _LOCAL.claimed = True
    return checks


def check_block(checks: list | None, block: np.ndarray, mags: list | None = None) -> None:
    """Record whether ``block`` (any strides) is all finite, while it is in the cache;
    with ``mags``, also its largest magnitude (for :func:`flag_inaccurate`'s callers)."""
    if block.size and (checks is not None or mags is not None):
        hi, lo = block.max(), block.min()  # (complex: lexicographic, still NaN/inf-aware)
        if checks is not None:
            checks.append(bool(np.isfinite(hi) and np.isfinite(lo)))
        if mags is not None:
            mags.append(np.abs(block).max() if block.dtype.kind == "c"
                        else max(abs(hi), abs(lo)))


def flag_inaccurate() -> None:
    """For an algorithm running under :func:`falls_back_to_gemm`: its error bound says
    the result would miss the accuracy convolab promises (float32 1e-4 relative to the
    largest output, float64 1e-10), so the decorator recomputes it through GEMM."""
    if getattr(_LOCAL, "checks", None) is not None:
        _LOCAL.inaccurate = True


def falls_back_to_gemm(role: str):
    """Decorate an algorithm's ``role`` function: a result with a NaN or inf in it is
    recomputed by :mod:`convolab.algorithms.gemm`'s function for the same role.  The
    result is checked as a whole, or block by block by its tiles (:func:`tile_checks`)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            saved = (getattr(_LOCAL, "checks", None), getattr(_LOCAL, "claimed", False),
                     getattr(_LOCAL, "inaccurate", False))
            _LOCAL.checks, _LOCAL.claimed, _LOCAL.inaccurate = [], False, False
            try:
                # a non-finite input makes the transforms compute inf * 0 and inf - inf:
                # no warning for values that are thrown away (GEMM, which keeps them, is
                # silent)
                with np.errstate(invalid="ignore", over="ignore"):
                    out = fn(*args, **kwargs)
                checks, claimed, inaccurate = _LOCAL.checks, _LOCAL.claimed, _LOCAL.inaccurate
            finally:
                _LOCAL.checks, _LOCAL.claimed, _LOCAL.inaccurate = saved
            if inaccurate or (out.size and not (all(checks) if claimed else all_finite(out))):
                from . import gemm

                return getattr(gemm, role)(*args, **kwargs)
            return out

        return run

    return wrap
