"""dtype rules shared by every operation.

* Supported: float16, float32, float64, complex64, complex128.
* float16 is computed in float32 and returned as float16 (as torch's CPU kernels do).
* The arrays of one call must share one dtype; integer and bool arrays are rejected.
"""

from __future__ import annotations

import numpy as np

SUPPORTED = (np.float16, np.float32, np.float64, np.complex64, np.complex128)
SUPPORTED_NAMES = ", ".join(np.dtype(t).name for t in SUPPORTED)


def as_array(name: str, value: object) -> np.ndarray:
    """Accept ndarrays and array-likes (objects with ``__array__``, lists) as a plain
    ndarray (a view of a subclass such as ``np.matrix`` or ``np.memmap``; a masked array
    with masked entries is refused, not silently read through its mask).

    Arrays in the non-native byte order (big-endian ``>f4`` on x86, as read from IDX or
    FITS files) are converted to a native copy: mixed byte orders are one dtype to the
    user, and BLAS only runs on native arrays (NumPy's ``matmul`` falls back to a slow
    loop otherwise)."""
    if type(value) is np.ndarray:  # the common case first: every op call comes here
        return value if value.dtype.isnative else value.astype(value.dtype.newbyteorder("="))
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmaskarray(value).any():
        raise TypeError(
            f"{name} is a masked array with {int(np.ma.getmaskarray(value).sum())} masked "
            "entries; a convolution has no rule for a missing value (torch neither): fill "
            "them first (e.g. .filled(0)), or pass .data to use the stored values")
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be a NumPy array, got {type(value).__name__}")
    try:  # lists, __array__ objects; np.matrix, memmap, ... as a plain N-d view
        value = np.asarray(value)
    except Exception as exc:  # a ragged list, a torch tensor that requires grad, ...
        # NumPy's or the object's own reason says what to change: array-likes are taken
        raise TypeError(
            f"{name} must be a NumPy array or convertible to one; np.asarray on this "
            f"{type(value).__name__} failed: {exc}") from exc
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    return value


def check_dtypes(**arrays: np.ndarray | None) -> np.dtype:
    """All non-None arrays must have one supported dtype; returns it."""
    given = {k: a.dtype for k, a in arrays.items() if a is not None}
    for name, dt in given.items():
        if dt.type not in SUPPORTED:
            raise TypeError(
                f"{name} has dtype {dt.name}, which is not supported; convolab computes in "
                f"{SUPPORTED_NAMES} (cast integer/bool data first, e.g. x.astype(np.float32))"
            )
    dts = set(given.values())
    if len(dts) > 1:
        desc = ", ".join(f"{k}={v.name}" for k, v in given.items())
        raise TypeError(f"dtypes must match, got {desc}")
    return next(iter(dts))


def compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype the arithmetic runs in (float16 -> float32)."""
    return np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
