"""The arrays NumPy users pass: any memory layout gives the answer of a C-contiguous,
native-byte-order copy, and every result is a fresh, writeable, C-contiguous ndarray
that does not alias an input (as torch's results are)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convolab as cl

from .strategies import conv_cases


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


@pytest.mark.parametrize("algorithm", ["auto", "gemm", "direct", "depthwise"])
def test_the_answer_does_not_depend_on_the_arrays_layout(algorithm):
    """Same values, same bits: a Fortran-ordered or broadcast weight, or a strided
    grad_out, reached BLAS as it was, and the GEMM path rounded differently (1 ulp)
    from a C-contiguous copy of the same values, as torch (which makes its operands
    contiguous) does not."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 6)), rng.standard_normal((6, 4, 3)), np.ones(6)
    wd = rng.standard_normal((4, 1, 3))
    with cl.options(algorithm=algorithm):
        for f, args, kw in [(cl.conv1d, (x, wd), dict(groups=4, padding=1)),
                            (cl.conv1d, (x, w, b), dict(padding=1)),
                            (cl.conv_transpose1d, (x, w.swapaxes(0, 1).copy()), dict(stride=2))]:
            y, pullback = cl.vjp(f, *args, **kw)
            g = rng.standard_normal(y.shape)
            want = pullback(g)
            for i, a in enumerate(args):
                for view in (np.asfortranarray(a), a[..., ::-1].copy()[..., ::-1],
                             np.broadcast_to(a[:1], a.shape), a.astype(">f8")):
                    ref = [np.ascontiguousarray(view, dtype=float) if j == i else v
                           for j, v in enumerate(args)]
                    got = [view if j == i else v for j, v in enumerate(args)]
                    np.testing.assert_array_equal(f(*got, **kw), f(*ref, **kw))
            big = np.zeros(y.shape[:-1] + (2 * y.shape[-1],))
            big[..., ::2] = g
            for gv in (big[..., ::2], g[..., ::-1].copy()[..., ::-1], np.asfortranarray(g)):
                for mine, ref in zip(pullback(gv), want):
                    np.testing.assert_array_equal(mine, ref)



def test_grad_functions_do_not_materialize_the_array_given_by_its_shape():
    """conv*d_input knows the input only by its shape: its zero-stride stand-in must stay
    a view when the operands are made contiguous (a batch's worth of zeros otherwise)."""
    from convolab.ops.conv import prepare

    stand_in = np.broadcast_to(np.zeros(()), (8, 3, 16, 16))
    p = prepare(stand_in, np.ones((4, 3, 3, 3)), None, 1, 0, 1, 1, transposed=False,
                shape_only="input")
    assert not any(p.x.strides) and p.w.flags.c_contiguous
    p = prepare(np.ones((8, 3, 16, 16)), np.broadcast_to(np.zeros(()), (4, 3, 3, 3)), None,
                1, 0, 1, 1, transposed=False, shape_only="weight")
    assert not any(p.w.strides) and p.x.flags.c_contiguous


def test_an_unaligned_operand_gives_the_bits_of_an_aligned_copy():
    """An unaligned weight (a view at an odd byte offset, as read from a packed file) is
    C-contiguous, so making operands contiguous kept it, and its input gradient
    rounded differently (found by a 6000-example run of the randomized test below)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 3)), rng.standard_normal((3, 3, 2))
    buf = np.zeros(w.nbytes + 1, np.uint8)
    wu = buf[1:].view(w.dtype).reshape(w.shape)
    wu[...] = w
    assert not wu.flags.aligned and wu.flags.c_contiguous
    for algorithm in ("auto", "gemm", "direct"):
        with cl.options(algorithm=algorithm):
            y, pullback = cl.vjp(cl.conv1d, np.asfortranarray(x), wu, dilation=2)
            want_y, want = cl.vjp(cl.conv1d, x, w, dilation=2)
            g = np.random.default_rng(1).standard_normal(y.shape)
            np.testing.assert_array_equal(y, want_y)
            for mine, ref in zip(pullback(g), want(g)):
                np.testing.assert_array_equal(mine, ref)

# --- randomized: every layout a NumPy user passes, on random configurations ---------

def _strided(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    big[..., 1::2] = a
    return big[..., 1::2]


def _transposed(a):
    axes = tuple(range(a.ndim))[::-1]
    return np.ascontiguousarray(a.transpose(axes)).transpose(axes)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    v = buf[1:].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v


LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": _strided,
    "negative": lambda a: a[..., ::-1].copy()[..., ::-1],
    "transposed": _transposed,
    "broadcast": lambda a: np.broadcast_to(a[:1], a.shape),
    "read-only": _read_only,
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "unaligned": _unaligned,
    "unaligned big-endian": lambda a: _unaligned(a.astype(a.dtype.newbyteorder(">"))),
    "masked, nothing masked": np.ma.masked_array,
}


def _native(v):
    a = np.asarray(v.data if isinstance(v, np.ma.MaskedArray) else v)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


def _buffer(v) -> bytes:
    while isinstance(v.base, np.ndarray):
        v = v.base
    return np.array(v).tobytes()


@settings(max_examples=40, deadline=None)
@given(case=conv_cases(), data=st.data())
def test_conv_any_layout_same_bits_fresh_results(case, data):
    """Forward and every gradient of conv / conv_transpose on views of each kind, on
    every algorithm: the bits of a C-contiguous native copy, fresh writeable
    C-contiguous results, and the inputs (and grad_out) untouched."""
    dtype = data.draw(st.sampled_from([np.float64, np.float32, np.complex128]))
    algorithm = data.draw(st.sampled_from(
        ["auto", "direct", "gemm", "winograd", "fft", "depthwise", "polyphase"]))
    names = [data.draw(st.sampled_from(sorted(LAYOUTS))) for _ in range(4)]
    arrays = case.arrays(dtype)
    views = [None if a is None else LAYOUTS[n](a) for a, n in zip(arrays, names)]
    before = [None if v is None else _buffer(v) for v in views]
    fn = cl.conv_transpose if case.transposed else cl.conv
    with cl.options(algorithm=algorithm):
        y, pullback = cl.vjp(fn, *views, **case.kwargs)
        y_ref, pullback_ref = cl.vjp(
            fn, *[None if v is None else _native(v) for v in views], **case.kwargs)
        np.testing.assert_array_equal(y, y_ref)
        assert y.dtype == np.dtype(dtype)
        inputs = [np.asarray(v) for v in views if v is not None]
        _fresh(y, *inputs)
        g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        gv = LAYOUTS[names[3]](g) if g.size else g
        g_before = _buffer(gv)
        for mine, ref in zip(pullback(gv), pullback_ref(_native(gv))):
            assert (mine is None) == (ref is None)
            if mine is not None:
                np.testing.assert_array_equal(mine, ref)
                _fresh(mine, *inputs, np.asarray(gv), y)
    assert _buffer(gv) == g_before
    assert [None if v is None else _buffer(v) for v in views] == before


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_unfold_fold_pad_any_layout_same_result_fresh_arrays(data):
    op = data.draw(st.sampled_from(["unfold", "fold", "pad"]))
    dtype = data.draw(st.sampled_from(
        [np.float64, np.float16, np.complex64] + ([np.int32, np.bool_] if op == "pad" else [])))
    name, g_name = (data.draw(st.sampled_from(sorted(LAYOUTS))) for _ in range(2))
    n = data.draw(st.integers(0, 2))
    if op == "unfold":
        fn, shape = cl.unfold, (n, 2, 4, 3)
        kw = dict(kernel_size=data.draw(st.integers(1, 3)), padding=data.draw(st.integers(0, 1)),
                  stride=data.draw(st.integers(1, 2)))
    elif op == "fold":
        k, s = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
        fn, shape = cl.fold, (n, 2 * k * k, ((4 - k) // s + 1) ** 2)
        kw = dict(output_size=(4, 4), kernel_size=k, stride=s)
    else:
        mode = data.draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
        fn, shape = cl.pad, (max(n, 1), 2, 4, 3)
        kw = dict(pad=tuple(data.draw(st.integers(-1 if mode == "constant" else 0, 2))
                            for _ in range(4)), mode=mode)
    x = (np.random.default_rng(0).standard_normal(shape) * 4).astype(dtype)
    v = LAYOUTS[name](x) if x.size else x
    before = _buffer(v)
    y = fn(v, **kw)
    np.testing.assert_array_equal(y, fn(_native(v), **kw))
    assert y.dtype == x.dtype
    _fresh(y, np.asarray(v))
    if x.dtype.kind in "fc":
        y, pullback = cl.vjp(fn, v, **kw)
        g = np.ones(y.shape, dtype) + np.arange(y.size).reshape(y.shape).astype(dtype)
        gv = LAYOUTS[g_name](g) if g.size else g
        g_before = _buffer(gv)
        gx = pullback(gv)[0]
        np.testing.assert_array_equal(gx, pullback(_native(gv))[0])
        _fresh(gx, np.asarray(v), np.asarray(gv), y)
        assert _buffer(gv) == g_before
    assert _buffer(v) == before
