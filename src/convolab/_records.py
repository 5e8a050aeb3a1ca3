"""Strict JSON for the records the commands write (``bench.json``, the demo's ``run.json``)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_safe(v: Any) -> Any:
    """``v`` with NaN and infinities as None (strict JSON has no token for them) and NumPy
    scalars as Python numbers, through dicts, lists and tuples."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def dumps(v: Any, **kw) -> str:
    """``json.dumps`` of :func:`json_safe` ``(v)``; refuses anything still not JSON."""
    return json.dumps(json_safe(v), allow_nan=False, **kw)
