"""The options mechanism: context-local, restored on exit, process default via set_options."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import convolab as cl
from convolab import select
from convolab.spec import make_spec


def test_options_context_is_restored_and_nested():
    before = cl.get_options()
    with cl.options(algorithm="direct") as o:
        assert o.algorithm == "direct" and cl.get_options().algorithm == "direct"
        with cl.options(workspace_bytes=1 << 20):
            assert cl.get_options().algorithm == "direct"
            assert cl.get_options().workspace_bytes == 1 << 20
        assert cl.get_options().workspace_bytes == before.workspace_bytes
    assert cl.get_options() == before


def test_options_restored_after_an_exception():
    before = cl.get_options()
    try:
        with cl.options(algorithm="direct"):
            raise KeyError("boom")
    except KeyError:
        pass
    assert cl.get_options() == before


def test_set_options_changes_the_process_default():
    before = cl.get_options()
    try:
        cl.set_options(algorithm="direct")
        assert cl.get_options().algorithm == "direct"
        seen = []
        t = threading.Thread(target=lambda: seen.append(cl.get_options().algorithm))
        t.start()
        t.join()
        assert seen == ["direct"]
    finally:
        cl.set_options(algorithm=before.algorithm)


def test_context_options_do_not_leak_into_other_threads():
    seen = []
    with cl.options(algorithm="direct"):
        t = threading.Thread(target=lambda: seen.append(cl.get_options().algorithm))
        t.start()
        t.join()
    assert seen == ["auto"]


def test_forced_algorithm_is_the_one_chosen():
    spec = make_spec((3, 3))
    for name in ("direct", "gemm"):
        with cl.options(algorithm=name):
            c = select.choose("forward", spec, (1, 2, 8, 8), (4, 2, 3, 3), np.float64)
        assert c.algorithm == name


def test_workers_option_runs_tiles_in_the_calling_thread_or_on_more_threads():
    """options(workers=1) never touches the pool; more workers than cores still work;
    results agree, and threading_info() reports the setting."""
    from convolab.algorithms import _threads

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8, 14, 14))
    w = rng.standard_normal((8, 4, 3, 3))

    def fwd_bwd():
        with cl.options(workspace_bytes=20000):
            y, pb = cl.vjp(cl.conv2d, x, w, padding=1, groups=2)
            return (y,) + tuple(pb(y))

    ref = fwd_bwd()

    class NoPool:
        def run(self, *a, **k):
            raise AssertionError("the pool was used with workers=1")

    saved = _threads._POOL
    _threads._POOL = NoPool()
    try:
        with cl.options(workers=1):
            assert cl.threading_info()["workers"] == 1
            one = fwd_bwd()
    finally:
        _threads._POOL = saved
    with cl.options(workers=3):
        assert cl.threading_info()["workers"] == 3
        three = fwd_bwd()
    for a, b, c in zip(ref, one, three):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)


def _numpy_blas_threads(threadpoolctl):
    """A function giving the thread counts of the BLAS that NumPy's own products call:
    the ones loaded by importing NumPy alone.  Another one loaded later (SciPy's
    OpenBLAS, after convolab's controller was made) is not in the controller's list and
    keeps its threads, which is harmless: the tiles' products are NumPy's (a test that
    counted every BLAS failed on a 16-core machine as [[1, 16], [1, 16]])."""
    probe = ("import json, numpy, threadpoolctl; print(json.dumps([i['filepath'] for i in "
             "threadpoolctl.threadpool_info() if i['user_api'] == 'blas']))")
    numpy_blas = set(json.loads(subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout))
    return lambda: [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas" and i["filepath"] in numpy_blas]


@pytest.mark.parametrize("direct", [True, False])
def test_blas_is_limited_from_any_thread(direct, monkeypatch):
    """threadpoolctl lets one Python thread at a time set OpenBLAS's thread count; the
    tiles must get one BLAS thread whichever thread calls, not only the first.  Both
    ways: OpenBLAS's own calls (``_OpenBLASCount``, where it is a pthreads OpenBLAS) and
    threadpoolctl's controllers (any other BLAS)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from convolab.algorithms import _threads

    blas_threads = _numpy_blas_threads(threadpoolctl)
    cl.conv2d(np.ones((2, 4, 8, 8), np.float32), np.ones((4, 4, 3, 3), np.float32))
    libs = _threads._blas_libraries()
    if not direct:
        monkeypatch.setattr(_threads, "_BLAS_LIBS", [
            lib for lib in _threads._controller().lib_controllers if lib.user_api == "blas"])
    elif not any(isinstance(lib, _threads._OpenBLASCount) for lib in libs):
        pytest.skip("no pthreads OpenBLAS here")
    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs one thread here anyway")
    seen = []

    def inside():
        with _threads._blas_single_thread():
            seen.append(blas_threads())

    for _ in range(2):  # a new thread each time, after the main thread used convolab
        t = threading.Thread(target=inside)
        t.start()
        t.join()
    assert seen and all(max(s) == 1 for s in seen), seen
    assert blas_threads() == before


def test_worker_cpus_are_the_process_ones(monkeypatch):
    import os


    from convolab.algorithms import _threads

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs and sched_setaffinity")
    everything = _threads._usable_cpus()
    got = []

    def narrow():
        os.sched_setaffinity(0, {everything[-1]})
        got.append(_threads._usable_cpus())

    t = threading.Thread(target=narrow)
    t.start()
    t.join()
    assert got == [everything]


def test_autotune_cache_is_bounded_and_keyed_by_workers(monkeypatch):
    spec = make_spec((3, 3), 1, 1)
    x_shape, w_shape = (1, 4, 8, 8), (4, 4, 3, 3)
    select.clear_autotune_cache()
    with cl.options(workers=1):
        k1 = select._tune_key("forward", spec, x_shape, w_shape, "<f4")
    with cl.options(workers=2):
        k2 = select._tune_key("forward", spec, x_shape, w_shape, "<f4")
    assert k1 != k2
    monkeypatch.setattr(select, "AUTOTUNE_CACHE_SIZE", 3)
    for n in range(1, 6):
        with cl.options(autotune=True):
            cl.conv2d(np.ones((n, 4, 8, 8), np.float32), np.ones((4, 4, 3, 3), np.float32))
    assert 0 < len(select._TUNED) <= 3
    select.clear_autotune_cache()
    assert not select._TUNED


def test_transforms_false_keeps_every_output_accurate_next_to_a_loud_value():
    """Winograd and FFT spread one loud sample's rounding over their tiles and blocks;
    transforms=False keeps the automatic choice (and the choices inside polyphase,
    fused and autotune) off them, per call and per cache entry."""
    rng = np.random.default_rng(0)
    # (on smaller layers GEMM is chosen: 2 x 32 x 20 x 20 ran 0.75 ms against Winograd's 0.82)
    x = rng.standard_normal((2, 128, 28, 28)).astype(np.float32)
    x[0, 3, 5, 5] = 1e6
    w = rng.standard_normal((128, 128, 3, 3)).astype(np.float32)
    spec = make_spec((3, 3), 1, 1, 1, 1)
    assert select.choose("forward", spec, x.shape, w.shape, np.float32).algorithm == "winograd"
    ref = cl.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    # output row 7 never reads input row 5, but shares its 4-row Winograd tile
    far = (0, slice(None), 7)
    loose = np.abs(cl.conv2d(x, w, padding=1) - ref)[far].max()
    with cl.options(transforms=False):
        assert select.choose("forward", spec, x.shape, w.shape, np.float32).algorithm == "gemm"
        y, pb = cl.vjp(cl.conv2d, x, w, padding=1)
        gx, gw = pb(np.ones_like(y))[:2]
        long = make_spec((63,), 1, 31, 1, 1)
        for role in ("forward", "input_grad", "weight_grad"):
            names = select.candidates(role, long, (4, 16, 4096), (16, 16, 63), np.float32)
            assert not {"winograd", "fft"} & set(names)
        with cl.options(autotune=True):
            a = select.choose("forward", spec, x.shape, w.shape, np.float32).algorithm
            assert a not in ("winograd", "fft")
    tight = np.abs(y - ref)[far].max()
    assert tight < 1e-3 and loose > 0.1, (tight, loose)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()
    # the cached automatic choice did not leak either way
    assert select.choose("forward", spec, x.shape, w.shape, np.float32).algorithm == "winograd"
    with pytest.raises(TypeError, match="transforms=1 must be a bool"):
        cl.options(transforms=1).__enter__()


# Mutation testing: (kills OP1: workers=MAX_WORKERS is allowed, one more is not)
def test_workers_bounds_are_inclusive():
    from convolab.options import MAX_WORKERS

    with cl.options(workers=MAX_WORKERS) as o:
        assert o.workers == MAX_WORKERS
    with cl.options(workers=1) as o:
        assert o.workers == 1
    for bad in (0, MAX_WORKERS + 1):
        with pytest.raises(ValueError, match="must be between 1 and"), cl.options(workers=bad):
            pass


# Mutation testing: (kills SE1: the autotune cache is keyed by transforms=, so a
# winner tuned without Winograd/FFT is not reused where they are candidates)
def test_autotune_cache_is_keyed_by_transforms(monkeypatch):
    spec = make_spec((3, 3), 1, 1, 1, 8)  # depthwise 3x3: gemm, depthwise (+ fft)
    xs, ws = (2, 8, 12, 12), (8, 1, 3, 3)
    select.clear_autotune_cache()
    timed = []
    real_time = select._time
    monkeypatch.setattr(select, "_time", lambda name, *a: timed.append(name) or real_time(name, *a))
    with cl.options(autotune=True, transforms=False, workers=2):
        assert select.choose("forward", spec, xs, ws, np.float32).reason.startswith("autotuned")
    assert "fft" not in timed
    with cl.options(autotune=True, transforms=True, workers=2):
        assert "fft" in select.candidates("forward", spec, xs, ws, np.float32)
        select.choose("forward", spec, xs, ws, np.float32)
    assert "fft" in timed  # the transforms=True choice timed its own candidates
    select.clear_autotune_cache()


# Mutation testing: (kills SE3: the autotune cache drops the least recently used
# winner, keeps the newest, and a read refreshes an entry)
def test_autotune_cache_drops_the_least_recently_used(monkeypatch):
    monkeypatch.setattr(select, "AUTOTUNE_CACHE_SIZE", 2)
    select.clear_autotune_cache()
    select._tuned_put(("k", 1), "gemm", "test")
    select._tuned_put(("k", 2), "gemm", "test")
    assert select._tuned_get(("k", 1)) is not None  # now ("k", 2) is the oldest
    select._tuned_put(("k", 3), "gemm", "test")
    assert list(select._TUNED) == [("k", 1), ("k", 3)]
    select.clear_autotune_cache()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_do_not_depend_on_the_process_blas_thread_count(workers):
    """Every call runs its products on one BLAS thread: OpenBLAS rounds differently on
    1 and 2 threads, and ``workers=1`` calls used to leave their GEMMs to BLAS's own
    threads, so their bits changed whenever another thread's call (or the program) set
    the count (a concurrency audit: 188 of 200 calls of this layer beside another)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(0)
    cases = [
        (cl.conv1d, (2, 8, 2000), (8, 8, 63), dict(padding=31)),
        (cl.conv2d, (4, 16, 24, 24), (32, 16, 3, 3), dict(stride=2, padding=1)),
        (cl.conv_transpose2d, (4, 16, 12, 12), (16, 8, 4, 4), dict(stride=2, padding=1)),
    ]
    for fn, xs, ws, kw in cases:
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        gy = rng.standard_normal(fn(x, w, **kw).shape)
        runs = []
        for blas in (1, 2):
            with threadpoolctl.threadpool_limits(blas, user_api="blas"), \
                    cl.options(algorithm="gemm", workers=workers):
                y, pb = cl.vjp(fn, x, w, None, **kw)
                runs.append((y, *pb(gy)[:2]))
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)


def test_a_call_keeps_the_options_it_started_with(monkeypatch):
    """A ``set_options`` from another thread in the middle of a call does not reach it:
    the algorithm chosen under one default was tiled under another (a result neither
    default gives)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 300)).astype(np.float32)
    w = rng.standard_normal((16, 16, 7)).astype(np.float32)
    first = dict(workers=2, workspace_bytes=512 * 2**20)
    second = dict(workers=3, workspace_bytes=2**14)
    before = cl.get_options()
    choose = select.choose

    def choose_then_another_thread_sets_options(*args):
        choice = choose(*args)
        t = threading.Thread(target=cl.set_options, kwargs=second)
        t.start()
        t.join()
        return choice

    try:
        cl.set_options(**first)
        alone = cl.conv1d(x, w, padding=3)
        monkeypatch.setattr(select, "choose", choose_then_another_thread_sets_options)
        cl.set_options(**first)
        raced = cl.conv1d(x, w, padding=3)
    finally:
        cl.set_options(workers=before.workers, workspace_bytes=before.workspace_bytes)
    np.testing.assert_array_equal(raced, alone)


def test_set_options_from_two_threads_keeps_both_changes(monkeypatch):
    options_module = sys.modules["convolab.options"]
    validated = options_module._validated

    def slow(*args, **kwargs):  # widen the window between reading and writing
        out = validated(*args, **kwargs)
        time.sleep(0.02)
        return out

    before = cl.get_options()
    monkeypatch.setattr(options_module, "_validated", slow)
    try:
        ts = [threading.Thread(target=cl.set_options, kwargs=kw)
              for kw in (dict(workers=1), dict(workspace_bytes=2**20))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        now = cl.get_options()
        assert (now.workers, now.workspace_bytes) == (1, 2**20)
    finally:
        monkeypatch.undo()
        cl.set_options(workers=before.workers, workspace_bytes=before.workspace_bytes)


def test_threads_autotuning_the_same_call_time_it_once_and_agree(monkeypatch):
    """Threads that miss the autotune cache together wait for one timing and use its
    winner (each used to time the candidates itself and run its own winner)."""
    timed = []
    time_one = select._time

    def slow_time(name, *args):
        timed.append(name)
        time.sleep(0.02)
        return time_one(name, *args)

    monkeypatch.setattr(select, "_time", slow_time)
    select.clear_autotune_cache()
    x = np.random.default_rng(0).standard_normal((4, 16, 300)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((16, 16, 7)).astype(np.float32)
    go = threading.Barrier(4)
    outs = []

    def call():
        go.wait()
        with cl.options(autotune=True, workers=2):
            outs.append(cl.conv1d(x, w, padding=3))

    ts = [threading.Thread(target=call) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    try:
        assert len(timed) == len(set(timed)), timed  # each candidate timed once
        with cl.options(autotune=True, workers=2):
            after = cl.conv1d(x, w, padding=3)
        for y in outs:
            np.testing.assert_array_equal(y, after)
    finally:
        select.clear_autotune_cache()


def _forked(child) -> int:
    """Exit status of ``child()`` run in a forked child (-1: it hung for 20 s)."""
    import os
    import signal

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            signal.alarm(20)
            code = 0 if child() else 2
        finally:
            os._exit(code)
    for _ in range(250):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_a_child_forked_while_another_thread_tunes_or_limits_blas_is_whole():
    """Locks and limits held by a thread that does not exist in a forked child: the
    autotune lock made the child's first autotuned call wait for ever, and a fork during
    a call left the child's BLAS on one thread for good (a review of this pass)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from convolab.algorithms import _threads

    x, w = np.ones((1, 2, 8, 8), np.float32), np.ones((2, 2, 3, 3), np.float32)
    cl.conv2d(x, w)
    counts = _numpy_blas_threads(threadpoolctl)
    before = counts()
    holding, release = threading.Event(), threading.Event()

    def hold():
        with select._TUNING_LOCK, _threads._blas_single_thread():
            holding.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(10)
    try:
        def child():
            with cl.options(autotune=True):
                cl.conv2d(x, w, padding=1)
            return counts() == before

        assert _forked(child) == 0
    finally:
        release.set()
        t.join()
    assert counts() == before


@pytest.mark.small_calls_serial
def test_small_calls_run_in_the_calling_thread_whatever_workers_says():
    """Handing tiles to the workers costs more than sharing a small call saves: under
    SMALL_CALL_FLOPS and SMALL_CALL_ELEMENTS a call never touches the pool (and gives the
    bits of workers=1); above either, the workers share it."""
    from convolab.algorithms import _threads
    from convolab.ops import conv

    rng = np.random.default_rng(0)
    small = (rng.standard_normal((8, 16, 14, 14)), rng.standard_normal((8, 16, 3, 3)))
    big = (rng.standard_normal((16, 32, 64, 64)), rng.standard_normal((16, 32, 1, 1)))
    assert conv.SMALL_CALL_FLOPS > 2 * 8 * 8 * 16 * 9 * 14 * 14  # small by FLOPs
    assert conv.SMALL_CALL_ELEMENTS <= 16 * 16 * 64 * 64  # big by its output only

    def run(x, w):
        y, pb = cl.vjp(cl.conv2d, x, w, padding=1)
        return (y,) + tuple(pb(np.ones_like(y)))

    with cl.options(workers=1):
        ref = run(*small)
    used = []

    class Counting:
        def __init__(self, pool):
            self.pool = pool

        def run(self, n, job):
            used.append(n)
            return self.pool.run(n, job)

    saved = _threads._POOL
    _threads._POOL = Counting(_threads._pool())
    try:
        with cl.options(workers=2):
            got = run(*small)
            assert not used
            run(*big)
            assert used
    finally:
        _threads._POOL = saved
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
