"""The fused backward (both gradients from one column copy of ``gy``) against ``direct``
and torch, its choice, its workspace, and NaN/inf as PyTorch propagates them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convolab as cl
from convolab import select
from convolab.algorithms import direct, fused
from convolab.spec import make_spec

from .test_algorithms import TOL32, TOL64, _traced, rel_err

torch = pytest.importorskip("torch")


@st.composite
def fused_cases(draw):
    """Stride-1 convolutions of rank 1-3: groups (depthwise too), dilation, uneven and
    large paddings (half of them keeping the size after the first dimension), a batch of
    1-3."""
    rank = draw(st.sampled_from([1, 2, 3]))
    small = rank == 3
    g = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 2 if small else 4)) for _ in range(rank))
    assume(np.prod(k) > 1)
    dil = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(rank))
    pad = [(draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(rank)]
    if draw(st.booleans()):  # "same" after the first dimension: the unpadded-grid paths
        for i in range(1, rank):
            lo = draw(st.integers(0, dil[i] * (k[i] - 1)))
            pad[i] = (lo, dil[i] * (k[i] - 1) - lo)
    size = tuple(draw(st.integers(1, 5 if small else 12)) for _ in range(rank))
    spec = make_spec(k, 1, tuple(pad), dil, groups=g)
    assume(all(o >= 1 for o in spec.conv_out_shape(size)))
    n = draw(st.integers(1, 3))
    return spec, (n, g * cg) + size, (g * kg, cg) + k


def _arrays(x_shape, w_shape, spec, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    gy = rng.standard_normal(x_shape[:1] + w_shape[:1] + spec.conv_out_shape(x_shape[2:]))
    return x, w, gy.astype(dtype)


def _torch_grads(x, w, gy, spec):
    r = x.ndim - 2
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    pads = [p for lo_hi in reversed(spec.padding) for p in lo_hi]
    y = getattr(torch.nn.functional, f"conv{r}d")(
        torch.nn.functional.pad(xt, pads), wt, dilation=spec.dilation, groups=spec.groups)
    y.backward(torch.tensor(gy))
    return xt.grad.numpy(), wt.grad.numpy()


@settings(max_examples=40, deadline=None)
@given(case=fused_cases(), ws=st.sampled_from([64, 4096, 2**29]),
       workers=st.integers(1, 3))
def test_fused_matches_direct_and_torch(case, ws, workers):
    """Float64 within 1e-10 of ``direct`` and torch, whole samples or one-row tiles
    (a budget of a few bytes), on 1-3 workers."""
    spec, xs, wsh = case
    x, w, gy = _arrays(xs, wsh, spec)
    assert fused.applicable(spec, xs, wsh)
    with cl.options(workspace_bytes=ws, workers=workers):
        gx, gw = fused.backward(x, gy, w, spec)
    assert gx.shape == x.shape and gw.shape == w.shape
    assert rel_err(gx, direct.input_grad(gy, w, spec, xs[2:])) <= TOL64
    assert rel_err(gw, direct.weight_grad(x, gy, spec)) <= TOL64
    tx, tw = _torch_grads(x, w, gy, spec)
    assert rel_err(gx, tx) <= TOL64 and rel_err(gw, tw) <= TOL64


@pytest.mark.parametrize("x_shape, w_shape, pad, groups", [
    ((4, 32, 20, 20), (32, 1, 3, 3), 1, 32),     # depthwise
    ((4, 32, 20, 20), (32, 4, 3, 3), 1, 8),      # grouped
    ((2, 8, 12, 12, 12), (8, 4, 3, 3, 3), 1, 2),  # 3-D
    ((4, 16, 700), (16, 1, 9), 4, 16),          # 1-D depthwise
])
def test_fused_float32_within_1e4_of_a_float64_reference(x_shape, w_shape, pad, groups):
    spec = make_spec(w_shape[2:], 1, pad, 1, groups=groups)
    x, w, gy = _arrays(x_shape, w_shape, spec, seed=5)
    gx, gw = fused.backward(x.astype(np.float32), gy.astype(np.float32),
                            w.astype(np.float32), spec)
    assert gx.dtype == gw.dtype == np.float32
    tx, tw = _torch_grads(x, w, gy, spec)
    assert rel_err(gx, tx) <= TOL32 and rel_err(gw, tw) <= TOL32


def test_fused_does_not_modify_its_inputs():
    spec = make_spec((3, 3), 1, 1, 1, groups=2)
    x, w, gy = _arrays((2, 4, 7, 6), (4, 2, 3, 3), spec)
    copies = [a.copy() for a in (x, w, gy)]
    fused.backward(x, gy, w, spec)
    for a, c in zip((x, w, gy), copies):
        np.testing.assert_array_equal(a, c)


def test_the_automatic_backward_is_fused_where_both_gradients_go_through_gemm():
    f32 = np.float32
    depthwise = make_spec((3, 3), 1, 1, 1, groups=256)
    ch = select.choose_backward(depthwise, (16, 256, 28, 28), (256, 1, 3, 3), f32)
    assert ch.algorithm == "fused", ch
    wino = make_spec((3, 3), 1, 1, 1)
    ch = select.choose_backward(wino, (16, 64, 56, 56), (64, 64, 3, 3), f32)
    assert ch.algorithm == "separate" and "Winograd" in ch.reason, ch
    dilated = make_spec((3,), 1, 4, 4)  # GEMM's weight gradient: fused beats separate
    ch = select.choose_backward(dilated, (16, 64, 2048), (64, 64, 3), f32)
    assert ch.algorithm == "fused" and "+ gemm)" in ch.reason, ch
    strided = make_spec((3, 3), 2, 1, 1, groups=256)
    ch = select.choose_backward(strided, (16, 256, 28, 28), (256, 1, 3, 3), f32)
    assert ch.algorithm == "separate" and "stride-1" in ch.reason, ch
    pointwise = make_spec((1, 1), 1, 0, 1)
    assert select.choose_backward(pointwise, (2, 8, 9, 9), (8, 8, 1, 1), f32).algorithm == (
        "separate")
    with cl.options(algorithm="gemm"):
        ch = select.choose_backward(depthwise, (16, 256, 28, 28), (256, 1, 3, 3), f32)
        assert ch.algorithm == "separate" and "forced" in ch.reason


def test_autotune_times_fused_against_separate_once(monkeypatch):
    select.clear_autotune_cache()
    spec = make_spec((3, 3), 1, 1, 1, groups=8)
    xs, ws = (2, 8, 16, 16), (8, 1, 3, 3)
    calls = []
    real = fused.backward
    monkeypatch.setattr(fused, "backward", lambda *a: calls.append(1) or real(*a))
    with cl.options(autotune=True):
        ch = select.choose_backward(spec, xs, ws, np.float64)
        assert ch.algorithm in ("fused", "separate") and "autotuned" in ch.reason
        n = len(calls)
        assert n == 3  # a warm-up and two timed calls
        assert select.choose_backward(spec, xs, ws, np.float64) == ch
        assert len(calls) == n  # cached
    select.clear_autotune_cache()


def test_public_vjp_uses_fused_and_matches_torch():
    rng = np.random.default_rng(9)
    # (a small layer's plain-lane GEMM gradients are cheaper: 2 x 6 x 9 x 8 went separate)
    x = rng.standard_normal((4, 32, 24, 24))
    w = rng.standard_normal((64, 1, 3, 3))
    spec = make_spec((3, 3), 1, 1, 1, groups=32)
    assert select.choose_backward(spec, x.shape, w.shape, x.dtype).algorithm == "fused"
    y, pb = cl.vjp(cl.conv2d, x, w, padding=1, groups=32)
    gy = rng.standard_normal(y.shape)
    gx, gw = pb(gy)
    tx, tw = _torch_grads(x, w, gy, spec)
    assert rel_err(gx, tx) <= TOL64 and rel_err(gw, tw) <= TOL64


def _same_pattern(a, t):
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(a), test(t))
    fin = np.isfinite(t)
    assert np.allclose(a[fin], t[fin], rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # fused called directly:
@pytest.mark.parametrize("where", ["x", "w", "gy"])  # the public entry silences NumPy's
def test_nan_and_inf_propagate_like_torch(where):
    """The products pair ``x`` (and ``w``) with the zeros around ``gy``, where ``inf * 0``
    would make NaNs PyTorch does not: such calls go to the separate paths."""
    spec = make_spec((3, 3), 1, 1, 1, groups=3)
    x, w, gy = _arrays((2, 3, 6, 7), (6, 1, 3, 3), spec, seed=4)
    a = {"x": x, "w": w, "gy": gy}[where]
    a.reshape(-1)[[0, 5]] = [np.inf, np.nan]  # a corner, whose far taps see only padding
    a.reshape(-1)[-1] = -np.inf
    gx, gw = fused.backward(x, gy, w, spec)
    tx, tw = _torch_grads(x, w, gy, spec)
    _same_pattern(gx, tx)
    _same_pattern(gw, tw)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("pad, dil, size", [((3, 1), (2, 2), (1, 15)), ((4, 0), (1, 1), (2, 6))])
def test_gy_whose_window_reads_only_padding_goes_to_the_separate_paths(pad, dil, size):
    """The products run over the input's positions only: a NaN in gy at an output whose
    window reads nothing but padding (padding 3, dilation 2 over a 1-row input; padding 4
    past a 3-tall kernel) met no value and left gw finite, where torch's is NaN (found by
    fuzzing under a 16 KiB budget, where the automatic choice fused)."""
    spec = make_spec((4, 3), 1, pad, dil, groups=2)
    x, w, gy = _arrays((2, 4) + size, (4, 2, 4, 3), spec, seed=6)
    gy[1, 3, 0, 2] = np.nan
    gy[0, 0, -1, 0] = np.inf
    gx, gw = fused.backward(x, gy, w, spec)
    tx, tw = _torch_grads(x, w, gy, spec)
    assert np.isnan(tw).any()
    _same_pattern(gx, tx)
    _same_pattern(gw, tw)
    assert fused._reads_of_padding_finite(np.ones_like(gy), spec, size)


def test_fused_stays_within_the_workspace():
    """A depthwise layer under a 1 MiB budget runs in tiles of a few channels and rows;
    its scratch stays within the budget (beyond the two results)."""
    spec = make_spec((3, 3), 1, 1, 1, groups=64)
    x, w, gy = _arrays((2, 64, 64, 64), (64, 1, 3, 3), spec, dtype=np.float32, seed=8)
    budget = 2**20
    with cl.options(workspace_bytes=budget, workers=2):
        (gx, gw), peak = _traced(fused.backward, x, gy, w, spec)
        assert fused.workspace(spec, select.problem("weight_grad", spec, x.shape, w.shape),
                               np.float32) <= budget
    assert peak <= budget + gx.nbytes + 2**18, peak / 2**20
    tx, tw = _torch_grads(x.astype(np.float64), w.astype(np.float64),
                          gy.astype(np.float64), spec)
    assert rel_err(gx, tx) <= TOL32 and rel_err(gw, tw) <= TOL32


@st.composite
def transposed_cases(draw):
    """Transposed convolutions GEMM's plain im2col would run both gradients of."""
    rank = draw(st.sampled_from([1, 2, 3]))
    small = rank == 3
    g = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 2 if small else 4)) for _ in range(rank))
    s = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    d = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(rank))
    op = tuple(draw(st.integers(0, max(a, b) - 1)) for a, b in zip(s, d))
    spec = make_spec(k, s, pad, d, g, op, transposed=True)
    size = tuple(draw(st.integers(1, 4 if small else 7)) for _ in range(rank))
    assume(all(o >= 1 for o in spec.transpose_out_shape(size)))
    x_shape, w_shape = (draw(st.integers(1, 3)), g * cg) + size, (g * cg, kg) + k
    gy_shape = (x_shape[0], g * kg) + spec.transpose_out_shape(size)
    assume(fused.applicable_transposed(spec, gy_shape, w_shape, size))
    return spec, x_shape, w_shape, gy_shape


@settings(max_examples=40, deadline=None)
@given(case=transposed_cases(), ws=st.sampled_from([64, 4096, 2**29]),
       workers=st.integers(1, 3))
def test_transposed_backward_from_shared_columns_matches_direct_and_torch(case, ws, workers):
    spec, xs, wsh, gys = case
    rng = np.random.default_rng(1)
    x, w, gy = rng.standard_normal(xs), rng.standard_normal(wsh), rng.standard_normal(gys)
    with cl.options(workspace_bytes=ws, workers=workers):
        gx, gw = fused.forward_and_weight_grad(gy, w, x, spec, xs[2:])
    assert rel_err(gx, direct.forward(gy, w, spec, out_spatial=xs[2:])) <= TOL64
    assert rel_err(gw, direct.weight_grad(gy, x, spec)) <= TOL64
    r = len(xs) - 2
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    pads = tuple(lo for lo, _ in spec.padding)
    yt = getattr(torch.nn.functional, f"conv_transpose{r}d")(
        xt, wt, stride=spec.stride, padding=pads, output_padding=spec.output_padding,
        groups=spec.groups, dilation=spec.dilation)
    assert yt.shape[2:] == gys[2:]
    yt.backward(torch.tensor(gy))
    assert rel_err(gx, xt.grad.numpy()) <= TOL64 and rel_err(gw, wt.grad.numpy()) <= TOL64


def test_transposed_vjp_is_fused_and_keeps_the_bias_gradient():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 8, 7, 7))
    w = rng.standard_normal((8, 4, 4, 4))
    b = rng.standard_normal(4)
    spec = make_spec((4, 4), 2, 1, 1, 1, 0, transposed=True)
    ch = select.choose_backward(spec, x.shape, w.shape, x.dtype)
    assert ch.algorithm == "fused", ch
    y, pb = cl.vjp(cl.conv_transpose2d, x, w, b, stride=2, padding=1)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = pb(gy)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=2, padding=1)
    yt.backward(torch.tensor(gy))
    for a, t in ((y, yt.detach()), (gx, xt.grad), (gw, wt.grad), (gb, bt.grad)):
        assert rel_err(a, t.numpy()) <= TOL64
    stride1 = make_spec((3, 3), 1, 1, 1, 1, 0, transposed=True)  # Winograd's layer
    ch = select.choose_backward(stride1, (16, 64, 56, 56), (64, 64, 3, 3), np.float32)
    assert ch.algorithm == "separate" and "winograd" in ch.reason, ch


@pytest.mark.parametrize("stride", [1, 2])
def test_transposed_backward_with_many_channels_per_group(stride):
    """From 16 output channels per group the weight gradient takes GEMM's other product
    order; transposed_cases give at most 3 per group (mutation testing's find)."""
    spec = make_spec((3, 3), stride, 1, 1, 2, 0, transposed=True)
    # 2 groups of 16 inputs -> 3 outputs each: the forward conv(gy, w) that the weight
    # gradient pairs with has 16 output channels per group
    xs, wsh = (2, 32, 5, 5), (32, 3, 3, 3)
    gys = (2, 6) + spec.transpose_out_shape(xs[2:])
    assert fused.applicable_transposed(spec, gys, wsh, xs[2:])
    rng = np.random.default_rng(2)
    x, w, gy = rng.standard_normal(xs), rng.standard_normal(wsh), rng.standard_normal(gys)
    gx, gw = fused.forward_and_weight_grad(gy, w, x, spec, xs[2:])
    assert rel_err(gx, direct.forward(gy, w, spec, out_spatial=xs[2:])) <= TOL64
    assert rel_err(gw, direct.weight_grad(gy, x, spec)) <= TOL64
