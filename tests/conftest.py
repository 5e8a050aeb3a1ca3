"""Hypothesis profiles: exploring locally, reproducible in CI.

Locally every run draws new examples (that is how the rank-3 pooling and float32
accuracy cases were found).  Where the ``CI`` environment variable is set, the examples
are derived from each test's name (``derandomize``), so a landing depends on the code,
not on the draw; ``HYPOTHESIS_PROFILE=explore`` in CI draws afresh again."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else
                                     "explore"))


@pytest.fixture(autouse=True)
def _share_small_calls(request, monkeypatch):
    """The suite's convolutions are small, and calls under convolab.ops.conv's
    SMALL_CALL_* sizes run in the calling thread whatever ``workers`` says: that would
    leave the tests of the tile threads (results, determinism and thread safety with
    several workers) running on one.  So the rule is off in tests, except where a test
    is marked ``small_calls_serial`` (its own test)."""
    if request.node.get_closest_marker("small_calls_serial") is None:
        from convolab.ops import conv

        monkeypatch.setattr(conv, "SMALL_CALL_FLOPS", 0)


def pytest_configure(config):
    config.addinivalue_line("markers", "small_calls_serial: keep the small-call rule on")
    # the demo's MNIST-1D cache goes to a folder of this run, not the user's home
    # (subprocesses inherit it); one generation per run, shared by the tests
    if "CONVOLAB_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["CONVOLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="convolab-test-cache-")
