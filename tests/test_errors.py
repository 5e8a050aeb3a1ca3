"""Bad input gets ValueError/TypeError naming the argument, the value and the rule;
inputs are never modified."""

from __future__ import annotations

import numpy as np
import pytest

import convolab as cl
from convolab import nn

X = np.zeros((2, 4, 8, 8))
W = np.zeros((6, 2, 3, 3))

CONV_CASES = [
    # (kwargs, exception, message fragment)
    (dict(input=np.zeros((4, 8))), ValueError, "input.shape=(4, 8)"),
    (dict(weight=np.zeros((6, 2))), ValueError, "weight.shape=(6, 2)"),
    (dict(groups=3), ValueError, "in_channels must equal weight.shape[1]*groups"),
    (dict(groups=0), ValueError, "groups=0 must be a positive integer"),
    (dict(groups=-2), ValueError, "groups=-2"),
    (dict(groups=1.5), TypeError, "groups=1.5 must be an int"),
    (
        dict(weight=np.zeros((5, 2, 3, 3)), groups=2),
        ValueError,
        "groups=2 must divide out_channels=5",
    ),
    (dict(stride=0), ValueError, "stride=0 must be positive"),
    (dict(stride=(1, -1)), ValueError, "stride=(1, -1) must be positive"),
    (dict(stride=(1, 1, 1)), ValueError, "stride=(1, 1, 1) must have 2 entries"),
    (dict(dilation=0), ValueError, "dilation=0 must be positive"),
    (dict(padding=-1), ValueError, "padding=-1 must be non-negative"),
    (dict(padding=[(1, -1), (0, 0)]), ValueError, "must be non-negative"),
    (dict(padding=[(1, 2, 3), (0, 0)]), ValueError, "per-side padding must be 2 pairs"),
    (dict(padding="full"), ValueError, "padding='full' is not a known padding string"),
    (dict(padding="same", stride=2), ValueError, "not supported for strided convolutions"),
    (dict(weight=np.zeros((6, 2, 9, 3))), ValueError, "larger than the padded input"),
    (dict(weight=np.zeros((6, 2, 3, 3)), dilation=5), ValueError, "larger than the padded input"),
    (dict(bias=np.zeros(5)), ValueError, "bias.shape=(5,) must be (out_channels,) = (6,)"),
    (dict(bias=np.zeros((6, 1))), ValueError, "bias.shape=(6, 1)"),
    (dict(input=X.astype(np.int64)), TypeError, "input has dtype int64"),
    (dict(input=X.astype(bool)), TypeError, "input has dtype bool"),
    (dict(input=X.astype(np.float32)), TypeError, "input=float32, weight=float64"),
    (dict(bias=np.zeros(6, np.float32)), TypeError, "bias=float32"),
    (dict(input="abc"), TypeError, "input must be a NumPy array"),
    (dict(weight=np.zeros((6, 2, 0, 3))), ValueError, "kernel_size=(0, 3) must be positive"),
    (dict(weight=np.zeros((0, 2, 3, 3))), ValueError, "weight.shape=(0, 2, 3, 3) has no channels"),
    (dict(input=np.zeros((2, 0, 8, 8)), weight=np.zeros((6, 0, 3, 3))), ValueError,
     "has no channels"),
]


@pytest.mark.parametrize("change,exc,msg", CONV_CASES)
def test_conv2d_rejects(change, exc, msg):
    args = dict(input=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=2)
    args.update(change)
    with pytest.raises(exc) as info:
        cl.conv2d(**args)
    assert msg in str(info.value)


@pytest.mark.parametrize("change,exc,msg", CONV_CASES + [
    (dict(stride=True), TypeError, "stride=True must be an int, got bool"),
    (dict(padding=(True, 0)), TypeError, "padding[0]=True must be an int, got bool"),
    (dict(groups=2.0), TypeError, "groups=2.0 must be an int"),
])
def test_conv2d_rejects_after_good_calls_of_the_same_layer(change, exc, msg):
    """A call's checks are kept per shapes, dtype and settings (``convolab.ops.conv``'s
    ``_CHECKED``): a bad call after good ones of the same layer (True for 1, 2.0 for 2
    included: equal keys in a dict) is still refused, with the same message."""
    from convolab.ops import conv

    args = dict(input=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=2)
    good = cl.conv2d(**args)
    np.testing.assert_array_equal(cl.conv2d(**args), good)
    assert any(k[0] == X.shape and k[1] == W.shape for k in conv._CHECKED)
    args.update(change)
    with pytest.raises(exc) as info:
        cl.conv2d(**args)
    assert msg in str(info.value)


def test_checked_calls_give_what_the_full_checks_give(monkeypatch):
    """The kept checks return what running them again returns, batched or not, and stay
    within their bound."""
    from convolab.ops import conv

    monkeypatch.setattr(conv, "_CHECKED_MAX", 3)
    x, w, b = np.ones((4, 8, 8), np.float32), np.ones((6, 4, 3, 3), np.float32), np.ones(
        6, np.float32)
    for pad in (0, 1, "same", ((1, 0), (0, 2)), 2, 3):
        args = (x, w, b, 1, pad, 1, 1)
        kept = [conv.prepare(*args, transposed=False, rank=2, what="conv2d") for _ in "ab"]
        full = conv._prepare(*args, None, transposed=False, rank=2, what="conv2d",
                             shape_only=None)
        for p in kept:
            assert (p.spec, p.unbatched, p.dtype, p.out_spatial) == (
                full.spec, full.unbatched, full.dtype, full.out_spatial)
            assert p.x.shape == full.x.shape and p.w is w and p.b is b
        assert len(conv._CHECKED) <= 3


def test_conv_rank_must_match_function():
    with pytest.raises(ValueError, match="conv1d expects a 3-D weight"):
        cl.conv1d(X, W)
    with pytest.raises(ValueError, match=r"expected a 2-D \(unbatched\) or 3-D"):
        cl.conv(X, np.zeros((6, 4, 3)))


TRANSPOSE_CASES = [
    (dict(output_padding=2, stride=2), ValueError, "must be smaller than either stride"),
    (dict(output_padding=-1), ValueError, "output_padding=(-1, -1) must be non-negative"),
    (dict(padding="same"), ValueError, "string padding is not supported for transposed"),
    (dict(weight=np.zeros((3, 2, 3, 3))), ValueError, "weight.shape[0]=3 (in_channels) must equal"),
    (dict(groups=3), ValueError, "weight.shape[0]=4"),
    (dict(padding=5), ValueError, "must be positive"),
    (dict(bias=np.zeros(3)), ValueError, "bias.shape=(3,) must be (out_channels,) = (4,)"),
    (dict(weight=np.zeros((4, 0, 3, 3))), ValueError, "has no channels"),
]


@pytest.mark.parametrize("change,exc,msg", TRANSPOSE_CASES)
def test_conv_transpose2d_rejects(change, exc, msg):
    args = dict(input=np.zeros((2, 4, 3, 3)), weight=np.zeros((4, 2, 3, 3)), groups=2)
    args.update(change)
    if "groups" in change and change["groups"] == 3:
        args["input"] = np.zeros((2, 3, 3, 3))
        args["weight"] = np.zeros((4, 2, 3, 3))
    with pytest.raises(exc) as info:
        cl.conv_transpose2d(**args)
    assert msg in str(info.value)


def test_groups_must_divide_transposed_in_channels():
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        cl.conv_transpose1d(np.zeros((1, 3, 5)), np.zeros((3, 1, 3)), groups=2)


@pytest.mark.parametrize(
    "pad,mode,msg",
    [
        ((3, 3), "reflect", "must be smaller than that dimension's size 3"),
        ((4, 0), "circular", "must be at most that dimension's size 3"),
        ((1, 1), "wrap", "mode='wrap' is not a padding mode"),
        ((1,), "constant", "must have an even length"),
        ((1, 1, 1, 1, 1, 1, 1, 1), "constant", "pads 4 dimensions but input has only 3"),
        ((1, 1, 1, 1, 1, 1, 1, 1), "reflect", "pads 4 dimensions"),
        ((1.5, 1), "constant", "pad[0]=1.5 must be an int"),
        ((-2, -2), "constant", "a crop cannot exceed the size"),
        ((-1, -2), "replicate", "leaves an output of size 0"),
        ((0, -3), "reflect", "leaves an output of size 0"),
    ],
)
def test_pad_rejects(pad, mode, msg):
    with pytest.raises((ValueError, TypeError)) as info:
        cl.pad(np.zeros((1, 2, 3)), pad, mode=mode)
    assert msg in str(info.value)


def test_unfold_fold_reject():
    with pytest.raises(ValueError, match="sliding blocks"):
        cl.unfold(np.zeros((1, 2, 3, 3)), 5)
    with pytest.raises(ValueError, match="divisible by the product of kernel_size"):
        cl.fold(np.zeros((1, 5, 4)), (3, 3), 2)
    with pytest.raises(ValueError, match="they must match"):
        cl.fold(np.zeros((1, 8, 5)), (3, 3), 2)
    with pytest.raises(TypeError, match="input has dtype int64"):
        cl.unfold(np.zeros((1, 2, 3, 3), np.int64), 2)


def test_vjp_rejects_unknown_function_and_bad_grad_shape():
    with pytest.raises(TypeError, match="no gradient is defined"):
        cl.vjp(np.sum, X)
    out, pb = cl.vjp(cl.conv2d, X, W, groups=2)
    with pytest.raises(ValueError, match="grad_out.shape"):
        pb(np.zeros((1,)))


def test_a_pullback_of_an_integer_pad_refuses_rather_than_truncate():
    out, pb = cl.vjp(cl.pad, np.arange(6).reshape(1, 2, 3), (1, 1), mode="replicate")
    np.testing.assert_array_equal(out[0, 0], [0, 0, 1, 2, 2])  # the forward is fine
    with pytest.raises(TypeError, match="only float and complex inputs have gradients"):
        pb(np.full(out.shape, 0.7))
    _, pb = cl.vjp(cl.pad, np.ones((2, 3), bool), (1, 0))
    with pytest.raises(TypeError, match="dtype bool"):
        pb(np.ones((2, 4)))


def test_a_pullback_keeps_neither_the_output_nor_what_it_does_not_need():
    """torch saves a conv's input and weight, im2col/col2im/pad only sizes: an engine that
    frees activations must get their memory back."""
    import gc
    import weakref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    out, pb = cl.vjp(cl.conv2d, x, rng.standard_normal((4, 3, 3, 3)), padding=1)
    ref = weakref.ref(out)
    del out
    gc.collect()
    assert ref() is None
    for fn, args in [(cl.unfold, (3,)), (cl.pad, ((1, 2),)), (cl.fold, ((5, 5), 2))]:
        a = x.reshape(2, 12, 16).copy() if fn is cl.fold else x.copy()
        ref, shape = weakref.ref(a), a.shape
        out, pb = cl.vjp(fn, a, *args)
        del a
        gc.collect()
        assert ref() is None, fn.__name__
        assert pb(np.ones_like(out))[0].shape == shape
    # float16 is computed in float32; the pullback keeps the float16 arrays
    import tracemalloc

    x16 = rng.standard_normal((8, 16, 32, 32)).astype(np.float16)
    w16 = rng.standard_normal((4, 16, 1, 1)).astype(np.float16)
    tracemalloc.start()
    try:
        out, pb = cl.vjp(cl.conv2d, x16, w16)
        del out
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 1.5 * x16.nbytes  # a float16 copy, not float32 (2x)
    out = cl.conv2d(x16, w16)
    g = pb(np.ones_like(out))
    ref32 = cl.vjp(cl.conv2d, x16.astype(np.float32), w16.astype(np.float32))[1](
        np.ones(out.shape, np.float32)
    )
    for a, b in zip(g[:2], ref32[:2]):
        assert a.dtype == np.float16
        np.testing.assert_array_equal(a, b.astype(np.float16))


def test_options_reject_unknown_values():
    with pytest.raises(ValueError, match="algorithm='fastest'"), cl.options(algorithm="fastest"):
        pass
    with pytest.raises(TypeError, match="unknown option 'algo'"):
        cl.set_options(algo="gemm")
    with pytest.raises(ValueError, match="workspace_bytes=0"):
        cl.set_options(workspace_bytes=0)
    with pytest.raises(ValueError, match="workers=0 must be between 1 and 64"), \
            cl.options(workers=0):
        pass
    with pytest.raises(TypeError, match="workers=2.5 must be an int or None"), \
            cl.options(workers=2.5):
        pass
    with pytest.raises(TypeError, match="workers=True must be an int or None"):
        cl.set_options(workers=True)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(groups=3), "groups=3 must divide in_channels=4"),
        (dict(groups=0), "groups=0"),
        (dict(padding_mode="mirror"), "padding_mode='mirror'"),
        (dict(padding="same", stride=2), "not supported for strided"),
        (dict(stride=0), "stride=0"),
    ],
)
def test_layers_reject_at_construction(kwargs, msg):
    with pytest.raises(ValueError) as info:
        nn.Conv2d(4, 6, 3, **kwargs)
    assert msg in str(info.value)


def test_transposed_layer_only_zeros_padding_mode():
    with pytest.raises(ValueError, match="only padding_mode='zeros'"):
        nn.ConvTranspose2d(4, 6, 3, padding_mode="reflect")


def _all_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    wt = rng.standard_normal((4, 3, 3, 3))
    return [
        (cl.conv2d, (x, w, b, 1, 1, 1, 2)),
        (cl.conv_transpose2d, (x, wt, None, 2, 1, 1, 2)),
        (cl.unfold, (x, 3)),
        (cl.fold, (rng.standard_normal((2, 36, 16)), (6, 6), 3)),
        (cl.pad, (x, (1, 2, 2, 1), "reflect")),
        (cl.pad, (x, (1, 2, -2, 1), "constant", 3.0)),
    ]


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
def test_inputs_are_never_modified(algorithm):
    for fn, args in _all_calls():
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        with cl.options(algorithm=algorithm):
            out, pb = cl.vjp(fn, *args)
            g = np.ones_like(out)
            pb(g)
        assert (g == 1).all()
        for a, b in zip(args, before):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)


def test_grad_functions_check_sizes_and_dtypes():
    w, gy = np.ones((1, 1, 3)), np.ones((1, 1, 5))
    with pytest.raises(TypeError, match=r"input_size=\(1, 1, 7.9\) must hold ints"):
        cl.grad.conv1d_input((1, 1, 7.9), w, gy)
    with pytest.raises(ValueError, match=r"input_size=\(1, 1, -7\) must be 3 .* non-negative"):
        cl.grad.conv1d_input((1, 1, -7), w, gy)
    with pytest.raises(TypeError, match="input_size=7 must be a sequence"):
        cl.grad.conv1d_input(7, w, gy)
    with pytest.raises(TypeError, match="weight_size=3 must be a sequence"):
        cl.grad.conv1d_weight(np.ones((1, 1, 7)), 3, gy)
    with pytest.raises(ValueError, match=r"weight_size=\(3, -2, 3\)"):
        cl.grad.conv1d_weight(np.ones((1, 1, 7)), (3, -2, 3), gy)
    with pytest.raises(TypeError, match="input=float32, grad_output=float64"):
        cl.grad.conv1d_weight(np.ones((1, 1, 7), np.float32), (1, 1, 3), gy)
    with pytest.raises(TypeError, match="dtypes must match"):
        cl.grad.conv1d_weight(np.ones((1, 1, 7)), (1, 1, 3), gy + 1j)


def test_complex_grad_for_a_real_output_is_refused():
    y, pullback = cl.vjp(cl.conv1d, np.ones((1, 1, 7)), np.ones((1, 1, 3)))
    with pytest.raises(TypeError, match="a real output needs a real grad_out"):
        pullback(np.ones(y.shape) * 1j)


def test_options_take_numpy_integers():
    with cl.options(workspace_bytes=np.int64(2**20), workers=np.int64(1)):
        assert cl.get_options().workspace_bytes == 2**20
        assert type(cl.get_options().workers) is int
    with pytest.raises(TypeError, match="workspace_bytes=1.5 must be an int"):
        cl.options(workspace_bytes=1.5).__enter__()


def test_empty_inputs_follow_torch():
    """Only the batch may be empty (torch's rule); an empty batch gives empty results."""
    with pytest.raises(ValueError, match="has an empty spatial dimension"):
        cl.conv_transpose2d(np.ones((1, 2, 0, 5)), np.ones((2, 3, 3, 3)))
    # an empty batch may give an empty output dimension (transposed, as torch)
    y, pullback = cl.vjp(cl.conv_transpose2d, np.zeros((0, 3, 0, 5)), np.ones((3, 4, 3, 3)),
                         np.ones(4), 2, 1, 1)
    gx, gw, gb = pullback(np.zeros(y.shape))[:3]
    assert y.shape == (0, 4, 0, 10) and gx.shape == (0, 3, 0, 5) and not gw.any() and not gb.any()
    # ... and a non-empty one from empty planes (torch: (0, 1, 1, 5)); the cost model
    # divided by the empty planes' size (ZeroDivisionError), found by .dev/argfuzz.py
    for algorithm in ("auto", "gemm", "polyphase", "direct"):
        with cl.options(algorithm=algorithm):
            y, pullback = cl.vjp(cl.conv_transpose2d, np.zeros((0, 1, 0, 3)),
                                 np.ones((1, 1, 2, 1)), np.ones(1), stride=2, dilation=(2, 1))
            gx, gw, gb = pullback(np.zeros(y.shape))[:3]
        assert y.shape == (0, 1, 1, 5) and gx.shape == (0, 1, 0, 3)
        assert gw.shape == (1, 1, 2, 1) and not gw.any() and not gb.any()
    with pytest.raises(ValueError, match="has an empty spatial dimension"):
        cl.conv2d(np.ones((1, 2, 0, 5)), np.ones((3, 2, 1, 1)), padding=1)
    with pytest.raises(ValueError, match="only the batch dimension may be empty"):
        cl.unfold(np.ones((1, 0, 5, 5)), 3)
    with pytest.raises(ValueError, match="only the batch dimension may be empty"):
        cl.fold(np.ones((1, 0, 16)), 5, 2)
    with pytest.raises(ValueError, match="replicate padding needs non-empty"):
        cl.pad(np.ones((1, 1, 0)), (1, 1), "replicate")
    assert cl.pad(np.ones((0, 1, 3)), (1, 1), "replicate").shape == (0, 1, 5)
    assert cl.unfold(np.ones((0, 2, 5, 5)), 3).shape == (0, 18, 9)
    with cl.options(algorithm="winograd"):  # dilated Winograd, an empty batch
        assert cl.conv2d(np.zeros((0, 1, 6, 7)), np.ones((1, 1, 3, 3)), padding=1,
                         dilation=2).shape == (0, 1, 4, 5)


def test_messages_name_what_was_given():
    with pytest.raises(ValueError, match=r"input.shape=\(1, 3, 2\)"):
        cl.conv_transpose1d([[[1.0, 2.0]] * 3], np.ones((2, 1, 3)))  # a list input
    with pytest.raises(ValueError, match=r"weight \(in, out/groups, 2 kernel dims\)"):
        cl.conv_transpose2d(np.ones((1, 2, 5, 5)), np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="stride=0 must be positive"):
        cl.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=np.array(0))
    assert cl.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=np.array(2)).shape == (
        1, 1, 2, 2)


def test_output_size_functions_check_their_arguments():
    assert cl.conv_output_size(5, 3, 2, 1, 1, 1) == 3
    # defaults: stride 1, no padding, hi = lo, dilation 1, output_padding 0
    assert cl.conv_output_size(32, 3) == 30 and cl.conv_output_size(32, 3, 2, 1) == 16
    assert cl.conv_output_size(32, 3, 2, 1, 0) == 16 and cl.conv_output_size(32, 3, d=2) == 28
    assert cl.conv_transpose_output_size(16, 4, 2, 1) == 32
    assert cl.conv_transpose_output_size(3, 3, 2, 1, 1, 1, 1) == 6
    for args, exc, msg in [
        ((5, 3, 0, 0, 0, 1), ValueError, "s=0 must be >= 1"),
        ((2, 5, 1, 0, 0, 1), ValueError, "effective kernel d\\*\\(k-1\\)\\+1 = 5"),
        ((5, 3, 1, 0, 0, 0), ValueError, "d=0 must be >= 1"),
        ((5, 3, 1.5, 0, 0, 1), TypeError, "s=1.5 must be an int"),
    ]:
        with pytest.raises(exc, match=msg):
            cl.conv_output_size(*args)
    with pytest.raises(ValueError, match="op=5 \\(output_padding\\) must be smaller"):
        cl.conv_transpose_output_size(5, 3, 2, 0, 0, 1, 5)
    with pytest.raises(ValueError, match="must be positive"):
        cl.conv_transpose_output_size(5, 3, 2, 9, 9, 1, 0)


@pytest.mark.parametrize(
    "dtype, value, exc, msg",
    [
        (np.int64, float("nan"), ValueError, "cannot be converted to the input's dtype int64"),
        (np.uint8, -1, ValueError, "cannot be converted to the input's dtype uint8"),
        (np.float32, 1e300, ValueError, "overflows the input's dtype float32"),
        (np.float64, 1j, TypeError, "is complex but the input is float64"),
        (np.float64, 1 + 0j, TypeError, "is complex but the input is float64"),
        (np.str_, 0, TypeError, "pad takes numeric or bool arrays"),
    ],
)
def test_pad_value_must_fit_the_dtype(dtype, value, exc, msg):
    with pytest.raises(exc, match=msg):
        cl.pad(np.ones((1, 2), dtype), (1, 1), value=value)


def test_results_and_gradients_never_alias_arguments():
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    before = x.copy()
    cl.unfold(x, 1)[...] = 0  # a 1x1 unfold is the input, reshaped: it must be a copy
    cl.fold(x.reshape(1, 2, 4), 2, 1)[...] = 0
    np.testing.assert_array_equal(x, before)
    calls = ((cl.pad, (x, (0, 0))), (cl.unfold, (x, 1)), (cl.fold, (x.reshape(1, 2, 4), 2, 1)))
    for fn, args in calls:
        y, pullback = cl.vjp(fn, *args)
        g = np.ones_like(y)
        assert not np.may_share_memory(pullback(g)[0], g)


def test_strides_that_never_step_cost_nothing():
    """A stride that moves no window (one output, or one transposed input) may be huge:
    the result is the same as with a small one, at once (auto, GEMM and direct here; the
    parity tests' random configurations cover the other paths)."""
    x, w = np.arange(4.0).reshape(1, 1, 4), np.arange(3.0).reshape(1, 1, 3)
    for alg in ("auto", "gemm", "direct"):
        with cl.options(algorithm=alg):
            np.testing.assert_array_equal(cl.conv1d(x, w, stride=2**62), cl.conv1d(x, w, stride=9))
            np.testing.assert_array_equal(
                cl.conv_transpose1d(x[..., :1], w, stride=10**12), x[..., :1] * w)
    y, pullback = cl.vjp(cl.conv_transpose1d, x[..., :1], w, None, 10**12)
    np.testing.assert_array_equal(pullback(np.ones(y.shape))[1], np.zeros((1, 1, 3)))


def test_pad_takes_bool_values_as_torch():
    np.testing.assert_array_equal(cl.pad(np.zeros((1, 2)), (1, 1), value=True), [[1, 0, 0, 1]])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_masked_arrays_are_refused_and_array_subclasses_give_plain_arrays():
    """A masked entry has no meaning in a convolution: refused, not read through the mask
    (the operand layouts also broke some paths); np.matrix, memmap and other subclasses
    are read as plain N-d arrays and every result is a plain ndarray."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    xm = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    xm.mask[0, 1, 2, 2] = True
    calls = [lambda: cl.conv2d(xm, w), lambda: cl.conv_transpose2d(xm, w.swapaxes(0, 1)),
             lambda: cl.pad(xm, (1, 1), mode="reflect"), lambda: cl.unfold(xm, 3),
             lambda: nn.Conv2d(2, 3, 3, dtype=np.float64)(xm), lambda: nn.ReLU()(xm),
             lambda: cl.conv2d(x, np.ma.masked_array(w, mask=w > 1))]
    for call in calls:
        with pytest.raises(TypeError, match="masked array with .* masked entries"):
            call()
    y, pb = cl.vjp(cl.conv2d, x, w)
    with pytest.raises(TypeError, match="grad_out is a masked array"):
        pb(np.ma.masked_array(np.ones(y.shape), mask=y > 0))
    # no entry masked: the stored values, as a plain array
    assert type(cl.conv2d(np.ma.masked_array(x), w)) is np.ndarray
    np.testing.assert_array_equal(cl.conv2d(np.ma.masked_array(x), w), cl.conv2d(x, w))
    for sub in (np.ma.masked_array(x), x.view(type("Sub", (np.ndarray,), {}))):
        for mode in ("reflect", "replicate", "circular", "constant"):
            got = cl.pad(sub, (1, 2, 2, 1), mode=mode)
            assert type(got) is np.ndarray
            np.testing.assert_array_equal(got, cl.pad(x, (1, 2, 2, 1), mode=mode))
    cols = rng.standard_normal((4, 9))
    got = cl.fold(np.asmatrix(cols), output_size=(4, 4), kernel_size=2)
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, cl.fold(cols, output_size=(4, 4), kernel_size=2))


# Mutation testing: (kills P3: value= with a non-constant mode is refused, as torch)
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_value_only_with_constant_mode(mode):
    with pytest.raises(ValueError, match="only meaningful with mode='constant'"):
        cl.pad(np.zeros((1, 2, 3)), (1, 1), mode=mode, value=1.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, w: cl.conv2d(x, w, padding=2**31), "gives an output of shape"),
        (lambda x, w: cl.conv2d(x, w, padding=2**63), "gives an output of shape"),
        (lambda x, w: cl.conv2d(x, w, padding=(10**12, 1)), "padding="),
        (lambda x, w: cl.conv_transpose2d(x, w, stride=2**63), "stride="),
        (lambda x, w: cl.conv_transpose2d(x, w, dilation=2**63), "dilation="),
        (lambda x, w: cl.unfold(x, 2, padding=(2**40, 0)), "gives columns of shape"),
        (lambda x, w: cl.pad(x, (2**62, 0)), "pad=\\(4611686018427387904, 0\\)"),
        (lambda x, w: cl.fold(np.ones((1, 16, 1)), (2**40, 2**40), 2, stride=2**40),
         "a padded output"),
        (lambda x, w: cl.grad.conv2d_input((1, 4, 4, 2**62), w, np.ones((1, 4, 2, 2))),
         "input_size="),
    ],
)
def test_sizes_no_machine_could_hold_fail_at_once_naming_the_arguments(call, match):
    """padding=2**31 used to plan a billion tiles (minutes), 2**63 overflowed a view's
    strides: every array a call needs is checked against the machine's memory first."""
    import time

    from convolab._limits import TooLarge

    x, w = np.ones((2, 4, 6, 6)), np.ones((4, 4, 3, 3))
    start = time.perf_counter()
    with pytest.raises(TooLarge, match=match) as info:
        call(x, w)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
    assert "more than this machine's memory" in str(info.value)
    assert time.perf_counter() - start < 5  # not a benchmark: a hang's guard


def test_huge_strides_that_move_nothing_still_work():
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    np.testing.assert_array_equal(cl.unfold(x, 2, stride=2**63), cl.unfold(x, 2, stride=6))
    w = np.ones((4, 4, 3, 3))
    np.testing.assert_array_equal(cl.conv2d(x, w, stride=2**63), cl.conv2d(x, w, stride=4))


def test_more_argument_forms_get_clear_errors():
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(TypeError, match="pad=array\\(2\\) must be a sequence of ints"):
        cl.pad(x, np.array(2))
    with pytest.raises(TypeError, match="input_size=array\\(2\\) must be a sequence"):
        cl.grad.conv2d_input(np.array(2), np.ones((1, 2, 3, 3)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="kernel_size=\\(\\) must have one entry"):
        cl.fold(np.ones((1, 4, 9)), (6, 6), kernel_size=())
    with pytest.raises(ValueError, match="algorithm=array"):
        cl.set_options(algorithm=np.array(["auto", "gemm"]))
    with pytest.raises(TypeError, match="stride=np.timedelta64\\(2\\) must be an int"):
        cl.conv1d(np.ones((1, 1, 8)), np.ones((1, 1, 3)), stride=np.timedelta64(2))
