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

Subnormal operands are the transforms' other blind spot: the transforms divide (G's
1/24, 1/576 in 2-D) and recombine values whose rounding is then an absolute one
(half the smallest subnormal), not a relative one.  float32 operands ~1e-41 gave errors
of 7e-4 to 7e-2 of the largest output (GEMM: 5e-5, as PyTorch), float64 ones ~1e-315
2e-8 to 2.5e-6 (GEMM 1.7e-9).  Under the automatic choice such calls go to GEMM before
any transform (:func:`too_small_for_transforms`); a forced ``algorithm`` keeps them.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

from ..options import get_options


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


# The transforms' promise (relative to the largest output) and how far they blow up a
# rounding at the subnormal grid: the measured error E of an operand whose largest value
# is A (float32 and float64, F(4, 3), F(6, 7), F(4x4, 5x5), 3-D) stayed below
# 2000 * smallest_subnormal / A; 2**14 leaves 8x of room.
_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.complex64): 1e-4,
              np.dtype(np.float64): 1e-10, np.dtype(np.complex128): 1e-10}
SUBNORMAL_GROWTH = 2.0**14
# the floor of :func:`too_small_for_transforms` per dtype
_FLOOR = {dt: float(np.finfo(dt).smallest_subnormal) * SUBNORMAL_GROWTH / tol
          for dt, tol in _TOLERANCE.items()}


def _largest(a: np.ndarray) -> float:
    """The largest magnitude in ``a`` (of the real and imaginary parts, for complex: within
    sqrt(2)), NaN when a NaN is there; two reductions without a temporary."""
    if np.iscomplexobj(a):
        parts = (_largest(a.real), _largest(a.imag))
    else:
        parts = (abs(float(a.max())), abs(float(a.min())))
    return max(parts) if parts[0] == parts[0] and parts[1] == parts[1] else math.nan


def _largest_bound(a: np.ndarray, floor: float) -> tuple[float, bool]:
    """A lower bound on ``a``'s largest magnitude, and whether it is exact: one finite
    value at or above ``floor`` settles :func:`too_small_for_transforms` for ``a``
    (its largest magnitude reaches the floor), so the first element is tried, then the largest
    value of the first plane (``a[0, 0]``, a view: the first element of a ReLU output is
    often 0), and only then all of ``a``.  Reading all of a 6.4 MB input cost 0.6-0.9 ms
    of an 8-10 ms Winograd call (its second trip from memory), and four reductions of
    the planes 2-4 % of a 0.5 ms one; one element costs well under a microsecond."""
    m = float(abs(a.flat[0]))
    if floor <= m < math.inf:
        return m, False
    if a.ndim > 2 and a.dtype.kind == "f":
        plane = a[0, 0]
        if plane.size < a.size:
            m = float(plane.max()) if plane.size else 0.0
            if floor <= m < math.inf:
                return m, False
    return _largest(a), True


def too_small_for_transforms(a: np.ndarray, b: np.ndarray) -> bool:
    """True when Winograd's or FFT's transforms would round ``a``, ``b`` or their products
    at the subnormal grid coarsely enough to miss the promised accuracy: the largest
    magnitude of either, or their product, below ``smallest_subnormal * SUBNORMAL_GROWTH
    / tolerance`` (float32 2.3e-37, about 20x the smallest normal number; float64 8e-310,
    inside the subnormals); an all-zero operand is never too small.  Also true when
    either holds NaN or inf, where seen (the transforms' result would be recomputed
    anyway).  Each operand's first element usually settles it (a lower bound on its
    largest magnitude, :func:`_largest_bound`); the whole operand is read only when
    neither it nor the first plane reaches the floor."""
    floor = _FLOOR.get(a.dtype) if a.dtype == b.dtype else None
    if floor is None or a.size == 0 or b.size == 0:
        return False
    (ma, exact_a), (mb, exact_b) = _largest_bound(a, floor), _largest_bound(b, floor)
    if ma == 0 or mb == 0:  # (exact) zeros transform exactly: a zero-initialised layer
        return False
    if ma * mb < floor:  # the bounds' product is low: the exact values decide
        ma = ma if exact_a else _largest(a)
        mb = mb if exact_b else _largest(b)
    # (comparisons with NaN are false: a NaN goes to GEMM, and so does an inf)
    return not (floor <= ma < math.inf and floor <= mb < math.inf and ma * mb >= floor)


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
    result is checked as a whole, or block by block by its tiles (:func:`tile_checks`).
    Under the automatic choice, operands too small for the transforms
    (:func:`too_small_for_transforms`) go straight to GEMM."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if get_options().algorithm == "auto" and too_small_for_transforms(*args[:2]):
                from . import gemm

                return getattr(gemm, role)(*args, **kwargs)
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
