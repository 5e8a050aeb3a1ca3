"""A small thread pool for splitting tile work (copies, ufuncs, GEMMs) across cores.

NumPy releases the GIL inside copies, ufunc loops and BLAS calls, so independent
tiles run in parallel.  :func:`run_tiles` runs tiles on :func:`workers` threads with
OpenBLAS limited to one thread each (through ``threadpoolctl`` when it is
installed; without it, tiles run in order and BLAS keeps its own threads).  Measured
on the shared 2-core machine: im2col + GEMM of the 3x3 / 7x7 / 1-D suite cases ran
1.3-2.4x faster in median this way than one tile at a time with 2 BLAS threads,
because the copies no longer leave a core idle and two single-threaded GEMMs do not
wait on each other when the OS deschedules one thread.  Each worker thread is pinned to
its own CPU (:class:`_Pool`): unpinned, the scheduler often stacked both on one CPU for
part of a call.  Callers pass tiles that write disjoint memory (or return partial
results to be summed).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

import numpy as np

from ..options import get_options


def _usable_cpus() -> list[int]:
    """The CPUs the process may run on (``taskset``, container cpusets), in order: the
    main thread's set, not the calling thread's (a service thread pinned to one CPU
    that made the first call would otherwise put every worker on that CPU)."""
    try:
        return sorted(os.sched_getaffinity(os.getpid()))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


# the default: one per usable core (not os.cpu_count(), which ignores taskset and
# cpusets: 8 workers time-sharing the 2 CPUs of a container), at most 8
WORKERS = max(1, min(8, len(_usable_cpus())))


def workers() -> int:
    """Tile threads in force here: ``options(workers=...)``, else :data:`WORKERS`."""
    n = get_options().workers
    return WORKERS if n is None else n


class _Pool:
    """Worker threads with one job queue each; worker ``i`` is pinned to the ``i``-th
    usable CPU (while there are CPUs left for it).

    Why pinned: unpinned, Linux often put both tile threads on *one* CPU, where they
    took turns in ~4 ms slices until the load balancer moved one away (likely because
    they hand the GIL to each other many times per call, which looks to the wake-up
    placement like a producer and its consumer).  Seen with
    ``sched_getcpu`` on the 1-D k7 forward after 0.2 s sleeps: 8 tiles of 3.4-4.2 ms on
    CPUs 0 and 1 in 16.9-17.9 ms when pinned (six calls out of six); unpinned, both
    threads on one CPU in four calls of six, tiles of 7.3-11.5 ms, 19.0-30.8 ms per call.
    A shared queue cannot keep two pinned threads on two CPUs (two idle threads pinned
    to the same CPU may take the jobs), hence one queue per worker.

    The workers are daemon threads, started on first use; a forked child starts its
    own (:func:`os.register_at_fork`)."""

    def __init__(self) -> None:
        self._queues: list[queue.SimpleQueue] = []
        self._cpus = _usable_cpus()
        self._lock = threading.Lock()

    def _worker(self, q: queue.SimpleQueue, cpu: int | None) -> None:
        if cpu is not None:  # not Linux, or not permitted: the worker stays unpinned
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setaffinity(0, {cpu})
        _LOCAL.in_pool = True
        while True:
            q.get()()

    def run(self, n: int, job) -> None:
        """Run ``job()`` on workers ``0 .. n-1``, wait for all of them, and re-raise the
        first exception one raised."""
        with self._lock:
            while len(self._queues) < n:
                i = len(self._queues)
                q: queue.SimpleQueue = queue.SimpleQueue()
                cpu = self._cpus[i] if i < len(self._cpus) else None
                threading.Thread(target=self._worker, args=(q, cpu), daemon=True,
                                 name=f"convolab-{i}").start()
                self._queues.append(q)
        done: queue.SimpleQueue = queue.SimpleQueue()

        def wrapped() -> None:
            try:
                job()
            except BaseException as exc:  # the worker thread lives on
                done.put(exc)
            else:
                done.put(None)

        for q in self._queues[:n]:
            q.put(wrapped)
        outcomes: list = []
        while len(outcomes) < n:
            # waited in slices, not in one blocking get: a Ctrl-C whose signal arrives
            # just before the get blocks is only acted on when Python code runs again,
            # which a blocking get put off until the workers finished (the whole call;
            # for ever with tiles that wait on the caller: 1 in 30 runs of
            # test_an_interrupted_call_stops_its_workers hung)
            with contextlib.suppress(queue.Empty):
                outcomes.append(done.get(timeout=WAIT_SLICE))
        errors = [e for e in outcomes if e is not None]
        if errors:
            raise errors[0]


# seconds a caller waits on its workers before it checks for a Ctrl-C (see _Pool.run)
WAIT_SLICE = 0.05

_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()


def _pool() -> _Pool:
    """The process's pool, made on first use (once, even when calls race)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool()
        return _POOL


def parallel_map(fn, items, n: int | None = None) -> list:
    """``[fn(i) for i in items]``, spread over :func:`workers` threads (at most ``n``)
    when there are several.

    Each worker pulls the next item from one shared iterator (``next`` on a range
    iterator is atomic under the GIL), so a call costs one pool job per worker, not one
    future per item.  Measured (32-group 3x3 forward, tiles of 4 groups, 128 tiles of
    ~0.1 ms, back to back): 13.0 -> 6.9 ms; the work still balances when one thread
    starts late.  The first exception raised by ``fn`` is re-raised here.  Called from
    inside a tile, it runs in that thread (the workers are busy with the outer call).
    The tiles run under the caller's NumPy error state (``np.errstate``), as they would
    in its own thread.
    """
    items = list(items)
    n = min(workers() if n is None else n, len(items))
    if n <= 1 or getattr(_LOCAL, "in_pool", False):
        return [fn(i) for i in items]
    pool = _pool()
    results: list = [None] * len(items)
    order = iter(range(len(items)))
    failed: list[BaseException] = []
    errstate = np.geterr()  # NumPy's error state is per thread: the caller's applies

    def worker() -> None:
        with np.errstate(**errstate):
            # checked before an item is taken: an item taken is run, so run_tiles_sum's
            # fold, which waits for every earlier tile, is never left one short after an
            # interrupted call (a worker waiting on it would wait for ever)
            while not failed:
                i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as exc:  # re-raised in the caller
                    failed.append(exc)
                    return

    try:
        pool.run(n, worker)
    except BaseException as exc:  # the caller interrupted (Ctrl-C) while it waited
        # the workers stop after their current item: left alone, they ran the abandoned
        # call to its end, and the next call waited behind it (1.15 s after a Ctrl-C
        # 0.05 s into a 1.2 s GEMM forward with 2 workers, however long the call)
        failed.append(exc)
        raise
    if failed:
        raise failed[0]
    return results


_CONTROLLER: object = None


def _controller():
    """A cached ``threadpoolctl.ThreadpoolController`` (None without threadpoolctl).

    Building one scans the loaded libraries (~0.5 ms); ``threadpool_limits`` does that
    on every call, which cost the demo's many small convolutions seconds per run."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional (the "fast" extra): without it, tiles run in order
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER or None


def threading_info() -> dict:
    """How the fast paths use the cores: ``workers`` (tile threads), ``threadpoolctl``
    (whether tiles with BLAS calls can run on them, one BLAS thread each),
    ``blas_tiles_parallel`` (whether they do: both of the above), and ``pinned_cpus`` (the
    CPUs the workers run on, one each; empty when tiles run in the calling thread or
    the platform cannot pin threads).  Without threadpoolctl
    (``pip install 'convolab[fast]'``) tiles with BLAS calls run one at a time on BLAS's
    own threads (only element-wise tiles, such as the depthwise tap loop's, use the
    workers): measured 1.75-2.8x slower on Winograd 3x3 and 3-D layers and 1.2x on the
    1-D k7 layer, 0.8-0.9x on the 3x3 stride-2 and transposed layers (fwd and fwd+bwd
    medians)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        have = False
    else:
        have = True
    n = workers()
    pinned: list[int] = []
    if n > 1 and hasattr(os, "sched_setaffinity"):
        pinned = (_POOL._cpus if _POOL is not None else _usable_cpus())[:n]
    return {"workers": n, "threadpoolctl": have, "blas_tiles_parallel": have and n > 1,
            "pinned_cpus": pinned}


_LIMIT_LOCK = threading.Lock()
_LIMIT_USERS = 0
_SAVED: list = []  # (library controller, its thread count) while limited
# per thread: how deep inside _blas_single_thread it is (nested entries skip the lock:
# a small fwd+bwd entered it 8 times, 170 -> 210 us with workers=1)
_LIMIT_DEPTH = threading.local()


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: the parent's pool threads, and any
    other thread that held a lock or the BLAS limit at the fork, do not exist there."""
    global _POOL, _POOL_LOCK, _LIMIT_LOCK, _LIMIT_USERS, _SAVED, _LIMIT_DEPTH
    _POOL, _POOL_LOCK = None, threading.Lock()
    if _LIMIT_USERS:  # forked inside a call: the child would keep one BLAS thread for good
        _release_blas_control()
        for lib, n in _SAVED:
            if n is not None and n != 1:
                lib.set_num_threads(n)
        _release_blas_control()
    _LIMIT_LOCK, _LIMIT_USERS, _SAVED = threading.Lock(), 0, []
    _LIMIT_DEPTH = threading.local()  # the forking thread's own depth goes with the call


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _blas_single_thread():
    """One BLAS thread while inside (yields False without threadpoolctl).

    Every public call holds this for its whole run (:func:`convolab.ops.conv` enters it
    once), so all of convolab's products run on one BLAS thread whatever the worker
    count: OpenBLAS's sums round differently on 1 and 2 threads, and a ``workers=1``
    call that left its GEMMs to BLAS's threads changed its last bits whenever another
    Python thread's call had set the count to 1 (188 of 200 calls of a 1-D k63 layer
    beside a 3x3 layer in another thread); results also no longer depend on the count
    the program sets for its own products.

    The BLAS thread count is process-wide, so concurrent and nested users share one
    limit: the first to enter sets it, the last to leave restores the original.  Each
    entering and restoring on its own, as before, could interleave (A saves 2 and sets 1,
    B saves 1, A restores 2, B restores 1) and leave the whole process on one BLAS
    thread after convolutions ran in several threads at once.  The libraries' own
    get/set calls are used directly: ``ThreadpoolController.limit`` took 23 us per
    enter and leave (it builds a limiter and reads every library's info), this 4-8."""
    global _LIMIT_USERS, _SAVED
    local = _LIMIT_DEPTH
    depth = getattr(local, "depth", 0)
    if depth:  # nested in this thread (a call's tiles, its bias gradient): already limited
        local.depth = depth + 1
        try:
            yield local.limited
        finally:
            local.depth -= 1
        return
    libs = _blas_libraries()
    if libs is None:
        yield False
        return
    release = _release_blas_control if _through_threadpoolctl(libs) else _nothing
    with _LIMIT_LOCK:
        if _LIMIT_USERS == 0:
            release()
            _SAVED = [(lib, lib.get_num_threads()) for lib in libs]
            for lib, n in _SAVED:
                if n is not None and n != 1:  # a count it cannot read, it cannot restore
                    lib.set_num_threads(1)
            release()
        _LIMIT_USERS += 1
    local.depth, local.limited = 1, True
    try:
        yield True
    finally:
        local.depth = 0
        with _LIMIT_LOCK:
            _LIMIT_USERS -= 1
            if _LIMIT_USERS == 0:
                release()
                for lib, n in _SAVED:
                    if n != 1 and n is not None:
                        lib.set_num_threads(n)
                _SAVED = []
                release()


def _through_threadpoolctl(libs) -> bool:
    """Whether some library's count goes through threadpoolctl (not
    :class:`_OpenBLASCount`), whose claim on OpenBLAS must be released around it."""
    return any(not isinstance(lib, _OpenBLASCount) for lib in libs)


def _nothing() -> None:
    return None


_BLAS_LIBS: list | None = None


def _blas_libraries() -> list | None:
    """The BLAS libraries' controllers (threadpoolctl's), found once; None without
    threadpoolctl.  NumPy's own BLAS is loaded with NumPy, before the first call."""
    global _BLAS_LIBS
    if _BLAS_LIBS is None:
        ctl = _controller()
        if ctl is None:
            return None
        _BLAS_LIBS = [_direct(lib) for lib in ctl.lib_controllers if lib.user_api == "blas"]
    return _BLAS_LIBS


class _OpenBLASCount:
    """A pthreads OpenBLAS's own ``openblas_get_num_threads`` / ``openblas_set_num_threads``,
    called directly.  threadpoolctl's controller methods add a symbol lookup, a lock and
    its controlling-thread bookkeeping to each call: a limit and its restore took 9.5 us
    of every convolution (~5 % of a small layer's forward), these calls 0.6.  That
    bookkeeping only keeps threadpoolctl's users in different threads from fighting over
    the process-wide count; convolab's own calls share one limit under ``_LIMIT_LOCK``,
    and used to clear threadpoolctl's claim around each change anyway
    (:func:`_release_blas_control`), which these calls leave untouched."""

    def __init__(self, get, set_) -> None:
        self._get, self._set = get, set_

    def get_num_threads(self) -> int:
        return self._get()

    def set_num_threads(self, n: int) -> None:
        self._set(n)


def _direct(lib):
    """``lib`` as :class:`_OpenBLASCount` where it is a pthreads OpenBLAS with both
    symbols, else the threadpoolctl controller itself."""
    if type(lib).__name__ != "OpenBLASController" or getattr(
            lib, "threading_layer", None) != "pthreads":
        return lib
    try:
        get = lib._get_symbol("openblas_get_num_threads")
        set_ = lib._get_symbol("openblas_set_num_threads")
    except Exception:  # pragma: no cover - another threadpoolctl's internals
        return lib
    return lib if get is None or set_ is None else _OpenBLASCount(get, set_)


_CLEAR_CONTROL = None


def _release_blas_control() -> None:
    """Let the next thread set OpenBLAS's thread count.

    threadpoolctl (3.8+) lets only one Python thread change a pthreads OpenBLAS's
    process-wide count, the first to try, for as long as it lives; the others' calls
    do nothing, silently.  So the first thread to run a convolution kept that right,
    and calls from every other thread (a service's request threads) ran each tile's
    GEMM on all of BLAS's threads, beside the tile workers: 6.3 ms in the main thread,
    32 ms in another, for one 3x3 layer.  Setting and restoring happen under
    ``_LIMIT_LOCK`` here, so convolab's threads never race for the count; each one
    takes the right when it sets it and gives it back at once."""
    global _CLEAR_CONTROL
    if _CLEAR_CONTROL is None:
        try:
            from threadpoolctl import OpenBLASController
        except ImportError:  # pragma: no cover - no threadpoolctl, or an old one
            _CLEAR_CONTROL = False
        else:
            _CLEAR_CONTROL = getattr(OpenBLASController, "clear_controlling_thread", False)
    if _CLEAR_CONTROL:
        _CLEAR_CONTROL(force=True)


def run_tiles(fn, items, bufs: Scratch | None = None) -> list:
    """Run independent tiles ``fn(item)``; see the module docstring.  With ``bufs``, the
    tiles' :class:`Scratch`, on at most ``bufs.workers`` threads (the workers whose
    buffers fit the workspace together)."""
    items = list(items)
    n = workers() if bufs is None else bufs.workers
    with _blas_single_thread() as ok:
        if not ok or n == 1 or len(items) < 2:
            return [fn(i) for i in items]
        return parallel_map(fn, items, n)


# run_tiles_sum: results that may wait to be folded, per worker, and so the results a
# worker may hold at once (its own tile's and the waiting ones)
PARKED_PER_WORKER = 2
RESULTS_HELD_PER_WORKER = 1 + PARKED_PER_WORKER


def run_tiles_sum(fn, items, acc: np.ndarray, bufs: Scratch | None = None) -> np.ndarray:
    """``acc[index] += value`` for every ``(index, value)`` pair of every ``fn(item)``,
    with the tiles run by :func:`run_tiles` but folded into ``acc`` in the order of
    ``items``, whichever thread computed them.

    Float sums then round the same way on every run and for any number of workers:
    per-thread partial sums (how the weight gradients were summed before) made them
    differ in the last bits from run to run (13-15 of 15 runs of a weight gradient
    differed bitwise from the first).  A result that finishes before an earlier tile
    waits in a small buffer; tiles are handed out in order, and a thread more than
    ``PARKED_PER_WORKER * workers()`` tiles ahead of the fold waits for it, so each
    worker holds at most :data:`RESULTS_HELD_PER_WORKER` results (callers whose results
    are big count them against the workspace).  The adds run under a lock (they release the GIL).
    ``bufs``: as :func:`run_tiles`'s.

    Fewer results wait where they do not fit the workspace beside the workers' buffers
    and the results being computed (down to none: a thread then waits for the fold with
    its one result).  Weight-sized results had waited regardless: a grouped 2-D weight
    gradient whose partial sums were 100 KiB each took 448 KiB under a 139 KiB budget on
    two workers (198 KiB on one).
    """
    items = list(items)
    cond = threading.Condition()
    pending: dict[int, list] = {}
    nxt = 0
    failed = False
    n = workers() if bufs is None else bufs.workers
    ahead = PARKED_PER_WORKER * n
    room = get_options().workspace_bytes - (0 if bufs is None else n * bufs.nbytes)

    def run(i: int) -> None:
        nonlocal nxt, failed
        try:
            pairs = list(fn(items[i]))
        except BaseException:
            with cond:  # wake the threads waiting for this tile's turn
                failed = True
                cond.notify_all()
            raise
        with cond:
            # A thread far ahead of the fold waits with its one result instead of
            # parking it: results pile up only ``ahead`` deep, whatever the scheduling
            # (a descheduled thread once left ~80 weight-gradient products parked, 4 MiB
            # over a 1 MiB workspace).  The tile ``nxt`` never waits, so this ends.
            size = sum(getattr(v, "nbytes", 0) for _, v in pairs)
            deep = ahead if not size else min(ahead, max(0, room // size - n))
            while i - nxt > deep and not failed:
                cond.wait()
            if failed:
                return
            pending[i] = pairs
            while nxt in pending:
                for index, value in pending.pop(nxt):
                    acc[index] += value
                nxt += 1
            cond.notify_all()

    run_tiles(run, range(len(items)), bufs)
    return acc


# Products below this many FLOPs run in the calling thread (a pool round trip costs
# about as much as a 4 MFLOP single-threaded GEMM on the measured machine).
MATMUL_TILE_FLOPS = 8e6


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a (M, K) @ b (K, N)`` without waking BLAS's own threads: rows of ``a`` (or, when
    ``N > M``, columns of ``b``) in tiles on the workers, or, for small products, in the
    calling thread, one BLAS thread each.

    For code around the convolutions (the ``Linear`` layer).  A matmul on BLAS's threads
    leaves them spinning for a while after it returns, competing with the pinned tile
    threads of the next convolution: the demo's MNIST-1D network, whose only matmul is
    a 128 x 1280 x 10 ``Linear``, trained in 18.2-19.0 s with it single-threaded and
    23.0-24.5 s with it on two BLAS threads.  With ``workers=1`` it is ``a @ b`` on one
    BLAS thread (without threadpoolctl, on BLAS's own threads).

    Also for the Winograd weight transforms, short and wide products such as ``(36, 9) @
    (9, K*C)``: in the calling thread on one BLAS thread, ``U`` of a 256 -> 256 3x3 layer
    took 1.9 ms, which the tiles of the convolution then waited for; split by columns
    over the workers, each reads half of ``b``.  ``out``: where to write the ``(M, N)``
    result (as :func:`numpy.matmul`'s)."""
    M, N = a.shape[0], b.shape[1]
    if workers() == 1 or _controller() is None or (
            2.0 * M * N * a.shape[1] < MATMUL_TILE_FLOPS or max(M, N) < 2):
        with _blas_single_thread():
            return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    by_rows = M >= N
    step = -(-(M if by_rows else N) // workers())

    def run(i: int) -> None:
        if by_rows:
            np.matmul(a[i:i + step], b, out=out[i:i + step])
        else:
            np.matmul(a, b[:, i:i + step], out=out[:, i:i + step])

    run_tiles(run, range(0, M if by_rows else N, step))
    return out


class Scratch:
    """One flat scratch buffer per worker thread, reused across that thread's tiles.

    ``workers``: how many threads may hold one at once, :func:`workers` or fewer where
    that many buffers would not fit the workspace together.  The tile plans aim at a
    worker's share of the budget, but their smallest tile (one row of one sample) can
    be larger, and each worker then held one: on a 16-core machine (8 workers) a C64
    5x5 stride-2 forward on 7x7 planes under a 64 KiB budget took 144 KiB, three
    tiles of 51 KiB at once.  Pass the buffer to :func:`run_tiles` (or
    :func:`run_tiles_sum`), which then runs the tiles on that many threads."""

    def __init__(self, size: int, dtype, held: int = 0) -> None:
        # held: bytes a worker holds beside its buffer while it runs a tile (the partial
        # sum a weight-gradient tile returns, say)
        self.size, self.dtype = max(1, int(size)), dtype
        self._bufs: dict[int, np.ndarray] = {}
        self.nbytes = self.size * np.dtype(dtype).itemsize  # one worker's buffer
        self.workers = max(1, min(workers(), get_options().workspace_bytes
                                  // (self.nbytes + held)))

    def get(self) -> np.ndarray:
        key = threading.get_ident()
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = np.empty(self.size, dtype=self.dtype)
        return buf
