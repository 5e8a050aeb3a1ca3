"""Which algorithm runs, and why.

Each algorithm module in :mod:`convolab.algorithms` provides up to three plain
functions with one signature per role:

* ``forward(x, w, spec, out_spatial=None) -> y``
* ``input_grad(gy, w, spec, in_spatial) -> gx``   (also the transposed conv forward)
* ``weight_grad(x, gy, spec) -> gw``

and may provide ``applicable(role, spec, x_shape, w_shape, dtype) -> bool`` when it
only handles some configurations.  :func:`choose` returns the module and a reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from .options import get_options
from .spec import ConvSpec

ROLES = ("forward", "input_grad", "weight_grad")

# Tried in this order by the automatic choice; the first applicable one wins.
_REGISTRY: dict[str, str] = {
    "direct": "convolab.algorithms.direct",
    "gemm": "convolab.algorithms.gemm",
}
_AUTO_ORDER: list[str] = ["gemm"]


def register(name: str, module: str, *, auto_rank: int | None = None) -> None:
    """Make an algorithm module selectable by name (and, with ``auto_rank``, by default)."""
    _REGISTRY[name] = module
    if auto_rank is not None and name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(auto_rank, name)


def _module(name: str):
    return importlib.import_module(_REGISTRY[name])


@dataclass(frozen=True)
class Choice:
    algorithm: str
    reason: str

    @property
    def module(self):
        return _module(self.algorithm)


def _applicable(mod, role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    if not hasattr(mod, role):
        return False
    check = getattr(mod, "applicable", None)
    return True if check is None else bool(check(role, spec, x_shape, w_shape, dtype))


def choose(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> Choice:
    """Pick the algorithm for one role of one convolution."""
    opts = get_options()
    dtype = np.dtype(dtype)
    if opts.algorithm != "auto":
        name = opts.algorithm
        if name not in _REGISTRY:
            raise ValueError(f"algorithm={name!r} is not available in this installation")
        if _applicable(_module(name), role, spec, x_shape, w_shape, dtype):
            return Choice(name, f"forced by options(algorithm={name!r})")
        return Choice("gemm", f"{name!r} does not handle {role} here; fell back to 'gemm'")
    for name in _AUTO_ORDER:
        if _applicable(_module(name), role, spec, x_shape, w_shape, dtype):
            return Choice(name, "first applicable algorithm in the default order")
    return Choice("gemm", "general fallback")
