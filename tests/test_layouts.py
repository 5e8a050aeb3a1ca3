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


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_grad_functions_name_the_argument_whose_dtype_is_wrong(rank):
    """conv*d_input built its stand-in input from grad_output's dtype, so a wrong
    grad_output was reported as "input" (an argument it does not take)."""
    gi, gw = getattr(cl.grad, f"conv{rank}d_input"), getattr(cl.grad, f"conv{rank}d_weight")
    x, w = np.ones((2, 3) + (4,) * rank), np.ones((5, 3) + (3,) * rank)
    gy = np.ones((2, 5) + (2,) * rank)
    with pytest.raises(TypeError, match="got weight=float64, grad_output=float32"):
        gi(x.shape, w, gy.astype(np.float32))
    with pytest.raises(TypeError, match="got weight=float32, grad_output=float64"):
        gi(x.shape, w.astype(np.float32), gy)
    for bad in (np.int64, np.bool_, object):
        with pytest.raises(TypeError, match=f"^grad_output has dtype {np.dtype(bad).name}"):
            gi(x.shape, w, gy.astype(bad))
        with pytest.raises(TypeError, match=f"^grad_output has dtype {np.dtype(bad).name}"):
            gw(x, w.shape, gy.astype(bad))
    with pytest.raises(TypeError, match="got input=float32, grad_output=float64"):
        gw(x.astype(np.float32), w.shape, gy)
    # the dtypes that agree still work, in any byte order
    be = gy.astype(">f8")
    np.testing.assert_array_equal(gi(x.shape, w, be), gi(x.shape, w, gy))
    np.testing.assert_array_equal(gw(x, w.shape, be), gw(x, w.shape, gy))


def test_an_array_like_that_numpy_cannot_read_is_refused_with_the_reason():
    """Lists and torch tensors are taken; one NumPy cannot convert was reported as
    "must be a NumPy array, got Tensor", hiding what to change (detach, a dtype NumPy
    has, a rectangular list)."""
    w = np.ones((4, 3, 3))
    with pytest.raises(TypeError, match="input .* list failed: .*inhomogeneous"):
        cl.conv1d([[[1.0, 2.0, 3.0], [1.0]]], w)

    class Broken:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("call .detach() first")

    with pytest.raises(TypeError, match="weight .* Broken failed: call .detach"):
        cl.conv1d(np.ones((2, 3, 5)), Broken())
    torch = pytest.importorskip("torch")
    t = torch.ones(2, 3, 5, dtype=torch.float64)
    np.testing.assert_array_equal(cl.conv1d(t, w), cl.conv1d(np.ones((2, 3, 5)), w))
    with pytest.raises(TypeError, match="Tensor failed: .*detach"):
        cl.conv1d(t.requires_grad_(), w)
