"""Finite-difference gradient checks, without torch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import convolab as cl

from .strategies import conv_cases


@pytest.mark.parametrize("broken_arg", ["weight", "bias"])
def test_gradcheck_catches_a_wrong_gradient(broken_arg):
    # A checker that cannot fail proves nothing: break one gradient on purpose, and pass
    # the arrays positionally and by keyword.
    from convolab.ops import conv as ops

    x = np.random.default_rng(0).standard_normal((1, 2, 5))
    w = np.random.default_rng(1).standard_normal((3, 2, 3))
    b = np.random.default_rng(2).standard_normal(3)
    real = ops.VJPS[cl.conv1d]

    def broken(*a, **k):
        out, pb = real(*a, **k)
        return out, lambda g: {**pb(g), broken_arg: 1.01 * pb(g)[broken_arg]}

    ops.VJPS[cl.conv1d] = broken
    import convolab.autodiff as ad

    ad._VJPS[cl.conv1d] = broken
    label = "argument 1" if broken_arg == "weight" else "argument 2"
    try:
        with pytest.raises(AssertionError, match=label):
            cl.gradcheck(cl.conv1d, x, w, b)
        with pytest.raises(AssertionError, match=f"argument '{broken_arg}'"):
            cl.gradcheck(cl.conv1d, input=x, weight=w, bias=b)
        mixed = "argument 1" if broken_arg == "weight" else "argument 'bias'"
        with pytest.raises(AssertionError, match=mixed):
            cl.gradcheck(cl.conv1d, x, w, bias=b)
    finally:
        ops.VJPS[cl.conv1d] = real
        ad._VJPS[cl.conv1d] = real


def test_gradcheck_refuses_to_check_nothing():
    x = np.random.default_rng(0).standard_normal((1, 2, 5))
    # nested lists of numbers are checked as the arrays they stand for
    assert cl.gradcheck(cl.conv1d, x.tolist(), np.ones((1, 2, 3)).tolist())
    with pytest.raises(ValueError, match="no NumPy array argument"):
        cl.gradcheck(cl.conv1d, x.astype(int), np.ones((1, 2, 3), int))
    with pytest.raises(ValueError, match="directions=0 must be a positive int"):
        cl.gradcheck(cl.conv1d, x, np.ones((1, 2, 3)), directions=0)
    with pytest.raises(TypeError, match="argument 'input' is float32"):
        cl.gradcheck(cl.conv1d, input=x.astype(np.float32), weight=np.ones((1, 2, 3), np.float32))


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "polyphase"])
@settings(max_examples=25, deadline=None)
@given(case=conv_cases(ranks=(1, 2, 3), batch=2))
def test_conv_gradients_by_finite_differences(case, algorithm):
    x, w, b = case.arrays(np.float64, seed=3)
    fn = cl.conv_transpose if case.transposed else cl.conv
    with cl.options(algorithm=algorithm):
        assert cl.gradcheck(fn, x, w, b, **case.kwargs)


@settings(max_examples=10, deadline=None)
@given(case=conv_cases(ranks=(1, 2), batch=1))
def test_complex_conv_gradients_by_finite_differences(case):
    x, w, b = case.arrays(np.complex128, seed=4)
    fn = cl.conv_transpose if case.transposed else cl.conv
    assert cl.gradcheck(fn, x, w, b, **case.kwargs)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_gradients_by_finite_differences(mode):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    assert cl.gradcheck(cl.pad, x, (2, 1, -1, 3), mode)
    assert cl.gradcheck(cl.pad, x, (3, 3, 4, 0), mode)


def test_circular_pad_wider_than_the_cropped_input():
    x = np.random.default_rng(0).standard_normal((3, 2))
    y = cl.pad(x, (-1, 2), mode="circular")
    np.testing.assert_array_equal(y, np.repeat(x[:, 1:], 3, axis=1))
    assert cl.gradcheck(cl.pad, x, (-1, 2), "circular")


def test_unfold_fold_gradients_by_finite_differences():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5, 4))
    assert cl.gradcheck(cl.unfold, x, (2, 3, 2), dilation=(1, 1, 2), padding=1, stride=(2, 1, 1))
    cols = cl.unfold(x, (2, 3, 2), dilation=(1, 1, 2), padding=1, stride=(2, 1, 1))
    assert cl.gradcheck(
        cl.fold, cols, (6, 5, 4), (2, 3, 2), dilation=(1, 1, 2), padding=1, stride=(2, 1, 1)
    )


def test_grad_module_by_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 7))
    w = rng.standard_normal((6, 2, 3))
    kw = dict(stride=2, padding=1, dilation=2, groups=2)
    y = cl.conv1d(x, w, **kw)
    gy = rng.standard_normal(y.shape)
    v = rng.standard_normal(x.shape)
    eps = 1e-6
    num = (
        np.vdot(gy, cl.conv1d(x + eps * v, w, **kw)) - np.vdot(gy, cl.conv1d(x - eps * v, w, **kw))
    ) / (2 * eps)
    assert np.isclose(np.vdot(cl.grad.conv1d_input(x.shape, w, gy, **kw), v), num, rtol=1e-7)
    v = rng.standard_normal(w.shape)
    num = (
        np.vdot(gy, cl.conv1d(x, w + eps * v, **kw)) - np.vdot(gy, cl.conv1d(x, w - eps * v, **kw))
    ) / (2 * eps)
    assert np.isclose(np.vdot(cl.grad.conv1d_weight(x, w.shape, gy, **kw), v), num, rtol=1e-7)


@pytest.mark.parametrize("transposed", [False, True])
def test_rank4_conv_beyond_torch(transposed):
    """torch stops at 3-D; here the fast path must agree with the reference and with
    finite differences."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 5, 4, 4, 3))
    w = rng.standard_normal((4, 3, 2, 3, 1, 2) if transposed else (6, 2, 2, 3, 1, 2))
    b = rng.standard_normal(6)
    kw = dict(
        stride=(1, 2, 1, 1),
        padding=[(0, 1), (1, 0), (0, 0), (1, 1)],
        dilation=(2, 1, 1, 1),
        groups=2,
    )
    fn = cl.conv_transpose if transposed else cl.conv
    results = {}
    for alg in ("direct", "gemm", "auto"):
        with cl.options(algorithm=alg):
            out, pb = cl.vjp(fn, x, w, b, **kw)
            results[alg] = (out, pb(np.ones_like(out)))
    ref_out, ref_grads = results["direct"]
    for alg in ("gemm", "auto"):
        out, gs = results[alg]
        np.testing.assert_allclose(out, ref_out, rtol=1e-11, atol=1e-11)
        for a, r in zip(gs, ref_grads):
            np.testing.assert_allclose(a, r, rtol=1e-11, atol=1e-11)
    assert cl.gradcheck(fn, x, w, b, **kw)


def _conv1d_vjp(transform):
    """convolab's conv1d VJP with ``transform(grads) -> grads`` applied (a broken VJP)."""
    def vjp(x, w, b=None):
        out, pb = cl.vjp(cl.conv1d, x, w, b)
        return out, lambda g: transform(list(pb(g)))
    return vjp


@pytest.mark.parametrize("broken, match", [
    (lambda gs: [gs[0], gs[1], None], "argument 2 .'b'. of my_conv: the VJP gives none"),
    (lambda gs: [gs[0], gs[1].transpose(2, 1, 0), gs[2]], r"shape \(3, 3, 4\)"),
    (lambda gs: [gs[0], gs[1].ravel(), gs[2]], r"shape \(36,\)"),
    (lambda gs: [gs[0] + 7j, gs[1], gs[2]], "complex128, the argument is .* float64"),
    (lambda gs: [gs[0], gs[1].astype(np.float32), gs[2]], "float32, the argument"),
    (lambda gs: [-gs[0], gs[1], gs[2]], "finite differences give"),
    (lambda gs: [gs[0], 1.0001 * gs[1], gs[2]], "relative error"),
])
def test_gradcheck_takes_a_vjp_of_ones_own_and_catches_what_is_wrong_with_it(broken, match):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 7)), rng.standard_normal((4, 3, 3)), np.ones(4)

    def my_conv(x, w, b=None):
        return cl.conv1d(x, w, b)

    assert cl.gradcheck(my_conv, x, w, b, vjp=_conv1d_vjp(lambda gs: gs))
    with pytest.raises(AssertionError, match=match):
        cl.gradcheck(my_conv, x, w, b, vjp=_conv1d_vjp(broken))


@pytest.mark.parametrize("scales", [(1e10, 1, 1), (1e-12, 1e-12, 1e-12), (1, 1e-10, 1),
                                    (1e-20, 1, 1), (1e15, 1, 1), (1, 1, 1e-30), (1e-30, 1, 1)])
def test_gradcheck_means_the_same_at_any_scale(scales):
    """The step follows the argument's size (and grows where the rest of the output
    drowns this argument's part), the tolerance is relative: a wrong gradient fails and
    a right one passes at scales where absolute steps and tolerances passed anything."""
    rng = np.random.default_rng(1)
    sx, sw, sb = scales
    x = sx * rng.standard_normal((2, 3, 9))
    w, b = sw * rng.standard_normal((4, 3, 3)), sb * rng.standard_normal(4)
    assert cl.gradcheck(cl.conv1d, x, w, b)
    for wrong in (np.negative, np.zeros_like):  # a zero VJP must not stall the step
        for i in range(3):
            with pytest.raises(AssertionError):
                cl.gradcheck(cl.conv1d, x, w, b, vjp=_conv1d_vjp(
                    lambda gs, i=i, f=wrong: [f(g) if j == i else g for j, g in enumerate(gs)]))


def test_gradcheck_confirms_a_true_zero_gradient():
    """Nothing moves at any step: with a zero weight the input gradient is zero, which the
    check confirms at a huge step instead of calling it inconclusive."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 9)), np.zeros((4, 3, 3))
    assert cl.gradcheck(cl.conv1d, x, w, np.ones(4))


def test_gradcheck_compares_with_the_step_actually_taken():
    """x = 1e4 + noise with a zero-sum kernel: a + eps v rounds, and the step taken, not
    2 eps v, is what the loss moved by."""
    rng = np.random.default_rng(2)
    for offset in (1e2, 1e4, 1e6, 1e8):
        x = offset + rng.standard_normal((1, 1, 64))
        assert cl.gradcheck(cl.conv1d, x, np.array([[[1.0, -2.0, 1.0]]]))


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_gradcheck_arguments_and_inputs_are_checked():
    x, w = np.random.default_rng(0).standard_normal((1, 2, 5)), np.ones((3, 2, 3))
    for kw, exc, msg in [(dict(eps=0), ValueError, "eps=0 must be finite and > 0"),
                         (dict(eps=-1e-6), ValueError, "eps=-1e-06"),
                         (dict(eps=float("nan")), ValueError, "eps=nan"),
                         (dict(eps="1e-6"), TypeError, "eps='1e-6' must be a real number"),
                         (dict(atol=float("nan")), ValueError, "atol=nan"),
                         (dict(rtol=-1), ValueError, "rtol=-1"),
                         (dict(directions=True), ValueError, "directions=True"),
                         (dict(seed=-1), ValueError, "seed=-1 must be an int >= 0")]:
        with pytest.raises(exc, match=msg):
            cl.gradcheck(cl.conv1d, x, w, **kw)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="argument 0 .'input'. has NaN or inf"):
        cl.gradcheck(cl.conv1d, bad, w)
    with pytest.raises(ValueError, match="gives NaN or inf"):
        cl.gradcheck(cl.conv1d, x, np.full((3, 2, 3), 1e308))
    big_endian = x.astype(">f8")
    assert cl.gradcheck(cl.conv1d, big_endian, w) and big_endian.dtype.byteorder == ">"
    # a user function that is not linear: a larger step would not be exact, so a mismatch
    # found there is inconclusive, not a verdict on the gradient
    def square(a):
        return a * a

    a = np.full(4, 1e8) + np.arange(4)
    assert cl.gradcheck(square, a, vjp=lambda a: (a * a, lambda g: (2 * a * g,)))


def test_a_user_vjp_must_keep_the_contract():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3))

    def f(a, b):
        return cl.conv1d(a, b)

    def extra(a, b):
        y, pb = cl.vjp(cl.conv1d, a, b)
        return y, lambda g: (*pb(g), np.zeros(3))

    with pytest.raises(TypeError, match=r"must return \(output, pullback\)"):
        cl.gradcheck(f, x, w, vjp=lambda a, b: cl.vjp(cl.conv1d, a, b)[1])
    with pytest.raises(TypeError, match="returned 3 gradients for 2 positional"):
        cl.gradcheck(f, x, w, vjp=extra)


def _input_grad_scaled(factor):
    """conv1d's VJP with the input gradient off by ``factor``."""
    def vjp(x, w):
        y, pb = cl.vjp(cl.conv1d, x, w)
        return y, lambda g: (factor * pb(g)[0], pb(g)[1])

    return vjp


def test_raise_exception_false_returns_false_as_torch():
    # torch.autograd.gradcheck(..., raise_exception=False) returns False on a mismatch;
    # here the keyword used to reach conv1d and fail as "unexpected keyword argument"
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3))
    off = _input_grad_scaled(1.01)

    def missing(x, w):
        y, pb = cl.vjp(cl.conv1d, x, w)
        return y, lambda g: (pb(g)[0], None)

    assert cl.gradcheck(cl.conv1d, x, w, raise_exception=False) is True
    assert cl.gradcheck(cl.conv1d, x, w, vjp=off, raise_exception=False) is False
    assert cl.gradcheck(cl.conv1d, x, w, vjp=missing, raise_exception=False) is False
    from convolab.gradcheck import GradcheckError

    with pytest.raises(GradcheckError, match="argument 0"):
        cl.gradcheck(cl.conv1d, x, w, vjp=off)
    assert issubclass(GradcheckError, AssertionError)
    with pytest.raises(TypeError, match="raise_exception=0 must be True or False"):
        cl.gradcheck(cl.conv1d, x, w, raise_exception=0)
    # a mistake in the call is not a wrong gradient: it still raises
    with pytest.raises(TypeError, match="float32"):
        cl.gradcheck(cl.conv1d, x.astype(np.float32), w, raise_exception=False)


def test_failure_message_says_which_allowance_is_absolute():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3))
    off = _input_grad_scaled(1.001)

    with pytest.raises(AssertionError) as info:
        cl.gradcheck(cl.conv1d, x, w, vjp=off)
    msg = str(info.value)
    # the allowance (about 1e-6 * |value| ~ 2e-5) was printed next to the relative error
    # (1e-3) as if it were one too
    assert "relative error 0.000999;" in msg and "difference 0.0211, allowed 2.12e-05" in msg
    assert "= atol + rtol*|value|" in msg


def test_a_function_without_a_vjp_is_pointed_to_vjp_and_bad_keywords_name_the_op():
    x = np.ones((1, 1, 5))
    with pytest.raises(TypeError, match=r"no gradient for exp; to check a VJP of your own, "
                                        r"pass it as vjp="):
        cl.gradcheck(np.exp, x)
    with pytest.raises(TypeError, match=r"vjp: conv1d\(\) got an unexpected keyword argument "
                                        r"'foo' \(its arguments: input, weight, bias"):
        cl.vjp(cl.conv1d, x, np.ones((1, 1, 3)), foo=1)
    import functools

    assert cl.gradcheck(functools.partial(cl.conv1d, padding=1), x, np.ones((1, 1, 3)))


def test_a_bounded_function_drowned_by_a_large_output_is_inconclusive_not_wrong():
    # tanh beside an output of 1e17: the loss rounds by ~16, tanh moves it by at most ~10
    # at any step, so the difference is 0 however large the step grows.  The gradient is
    # right; it used to be reported as wrong ("finite differences give 0.0").
    x = np.random.default_rng(0).standard_normal(5)

    def f(x):
        return np.concatenate([np.tanh(x), [1e17]])

    for scale in (1.0, 2.0):  # the right VJP, and a wrong one: neither can be told
        def vjp(x, scale=scale):
            return f(x), lambda g: (scale * (1 - np.tanh(x) ** 2) * g[:5],)

        for seed in range(4):
            with pytest.raises(ValueError, match="inconclusive.*drowns this argument's part"):
                cl.gradcheck(f, x, vjp=vjp, seed=seed)
    # the same function without the large value is checked as usual
    assert cl.gradcheck(np.tanh, x, vjp=lambda x: (np.tanh(x), lambda g: ((1 - np.tanh(x) ** 2)
                                                                          * g,)))
