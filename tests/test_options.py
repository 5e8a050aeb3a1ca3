"""The options mechanism: context-local, restored on exit, process default via set_options."""

from __future__ import annotations

import threading

import numpy as np

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
