"""The arrays NumPy users pass: any memory layout gives the answer of a C-contiguous,
native-byte-order copy, and every result is a fresh, writeable, C-contiguous ndarray
that does not alias an input (as torch's results are)."""

from __future__ import annotations

import numpy as np
import pytest

import convolab as cl


def _fresh(result: np.ndarray, *inputs: np.ndarray) -> None:
    assert type(result) is np.ndarray
    assert result.flags.writeable and result.flags.c_contiguous
    assert not any(np.shares_memory(result, a) for a in inputs)


@pytest.mark.parametrize("shape, kw", [
    ((1, 1, 1, 1), dict(kernel_size=3, padding=1)),  # one block covering the padded input
    ((2, 3, 2, 2), dict(kernel_size=4, padding=1)),
    ((0, 2, 4, 4), dict(kernel_size=3, padding=1)),  # an empty batch
    ((0, 2, 3), dict(kernel_size=(1,), stride=2)),
])
def test_unfold_and_fold_results_are_writeable(shape, kw):
    """The columns are a read-only window view of the padded input; where that view is
    already contiguous, ``ascontiguousarray`` passed it through and ``y[...] = 0``
    raised "assignment destination is read-only" (fold's pullback, im2col, too)."""
    x = np.random.default_rng(0).standard_normal(shape)
    y, pullback = cl.vjp(cl.unfold, x, **kw)
    _fresh(y, x)
    np.testing.assert_array_equal(y, cl.unfold(x.copy(), **kw))
    _fresh(cl.unfold(x, **kw), x)
    out = x.shape[2:]
    c, fold_pullback = cl.vjp(cl.fold, y, out, **kw)
    g = np.ones(c.shape)
    gc = fold_pullback(g)[0]
    _fresh(gc, g, y)
    np.testing.assert_array_equal(gc, cl.unfold(g, **kw))
    y[...] = 0  # the user's own array now
