"""A small thread pool for splitting NumPy copy and element-wise work across cores.

NumPy releases the GIL inside copies and ufunc loops, so independent tiles run in
parallel on the cores that BLAS would otherwise be alone in using.  Callers pass
tiles that write disjoint memory (or return partial results to be summed).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None
WORKERS = max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn, items) -> list:
    """``[fn(i) for i in items]``, spread over ``WORKERS`` threads when there are several."""
    global _POOL
    items = list(items)
    if WORKERS == 1 or len(items) < 2:
        return [fn(i) for i in items]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(WORKERS, thread_name_prefix="convolab")
    return list(_POOL.map(fn, items))
