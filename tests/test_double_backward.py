"""Double backward: the VJPs of ``grad.conv*d_input`` and ``grad.conv*d_weight``.

A backward pass written with them can be differentiated again (gradient penalties,
Hessian-vector products).  Checked against torch's double backward (``create_graph``)
and, without torch, by finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import convolab as cl
from convolab import grad

from .strategies import conv_cases, rel_err, torch_reference

torch = pytest.importorskip("torch")


def _fns(rank):
    return getattr(grad, f"conv{rank}d_input"), getattr(grad, f"conv{rank}d_weight")


def _torch_second(case, x, w, gy, v, V):
    """torch's d<v, gx>/d(w, gy) and d<V, gw>/d(x, gy) through create_graph."""
    tx, tw, tg = (torch.tensor(a, requires_grad=True) for a in (x, w, gy))
    y = torch_reference(case, tx, tw, None)
    kw = dict(allow_unused=True, materialize_grads=True)  # an empty batch uses nothing
    gx, gw = torch.autograd.grad(y, (tx, tw), tg, create_graph=True, **kw)
    dw, dgy = torch.autograd.grad(gx, (tw, tg), torch.tensor(v), retain_graph=True, **kw)
    dx, dgy2 = torch.autograd.grad(gw, (tx, tg), torch.tensor(V), **kw)
    return [t.detach().numpy() for t in (gx, gw, dw, dgy, dx, dgy2)]


def _ours(case, x, w, gy, v, V):
    fin, fw = _fns(case.rank)
    gx, pb = cl.vjp(fin, x.shape, w, gy, **case.kwargs)
    r_in = pb(v)
    gw, pb = cl.vjp(fw, x, w.shape, gy, **case.kwargs)
    r_w = pb(V)
    assert r_in[0] is None and r_w[1] is None  # the sizes take no gradient
    assert set(r_in.by_name) == {"weight", "grad_output"}
    assert set(r_w.by_name) == {"input", "grad_output"}
    return [gx, gw, r_in[1], r_in[2], r_w[0], r_w[2]]


def _arrays(case, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, _ = case.arrays(dtype, seed=seed)
    y = cl.conv(x, w, **case.kwargs)

    def r(shape):
        a = rng.standard_normal(shape)
        if np.issubdtype(np.dtype(dtype), np.complexfloating):
            a = a + 1j * rng.standard_normal(shape)
        return a.astype(dtype)

    return x, w, r(y.shape), r(x.shape), r(w.shape)


@settings(max_examples=40, deadline=None)
@given(case=conv_cases(ranks=(1, 2, 3), transposed=False))
def test_double_backward_matches_torch_float64(case):
    arrays = _arrays(case, np.float64, seed=1)
    names = ["gx", "gw", "d<v,gx>/dw", "d<v,gx>/dgy", "d<V,gw>/dx", "d<V,gw>/dgy"]
    for name, a, b in zip(names, _ours(case, *arrays), _torch_second(case, *arrays)):
        assert a.dtype == np.float64 and a.shape == b.shape, name
        assert rel_err(a, b) <= 1e-10, (name, rel_err(a, b))


@settings(max_examples=15, deadline=None)
@given(case=conv_cases(ranks=(1, 2), transposed=False, batch=2))
def test_double_backward_float32_and_complex(case):
    for dtype, tol in [(np.float32, 1e-5), (np.complex128, 1e-10)]:
        arrays = _arrays(case, dtype, seed=2)
        for a, b in zip(_ours(case, *arrays), _torch_second(case, *arrays)):
            assert a.dtype == dtype
            assert rel_err(a, b) <= tol


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_double_backward_by_finite_differences(rank, dtype):
    rng = np.random.default_rng(rank)
    size = (7, 6, 5)[:rank]
    x = rng.standard_normal((2, 4) + size).astype(dtype)
    w = rng.standard_normal((6, 2) + (3, 2, 2)[:rank]).astype(dtype)
    kw = dict(stride=2, padding=1, dilation=(1, 2, 1)[:rank], groups=2)
    gy = rng.standard_normal(cl.conv(x, w, **kw).shape).astype(dtype)
    if dtype == np.complex128:
        x, w, gy = (a + 1j * rng.standard_normal(a.shape) for a in (x, w, gy))
    fin, fw = _fns(rank)
    assert cl.gradcheck(fin, x.shape, w, gy, **kw)
    assert cl.gradcheck(fw, x, w.shape, gy, **kw)


def test_a_gradient_penalty_and_a_hessian_vector_product():
    """Two uses: the gradient of ||d<gy, conv(x, w)>/dx||^2 with respect to w (a
    gradient penalty), and H v for L = 0.5 ||conv(x, w)||^2 in w, against torch."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 8, 8))
    w = rng.standard_normal((4, 2, 3, 3))
    gy = rng.standard_normal((3, 4, 8, 8))
    # penalty P = ||gx||^2, gx = conv2d_input(x.shape, w, gy): dP/dw = pullback(2 gx)
    gx, pb = cl.vjp(grad.conv2d_input, x.shape, w, gy, padding="same")
    dP_dw = pb(2 * gx)[1]
    # Hessian-vector product in w: grad_w L = conv2d_weight(x, w.shape, conv2d(x, w));
    # its derivative along V is conv2d_weight(x, w.shape, conv2d(x, V)) (L is quadratic)
    V = rng.standard_normal(w.shape)
    y, pb_fwd = cl.vjp(cl.conv2d, x, w, padding=1)
    _, pb_w = cl.vjp(grad.conv2d_weight, x, w.shape, y, padding=1)
    hv = pb_fwd(pb_w(V)[2])[1]  # d<V, grad_w L>/dy, then back to w

    tx = torch.tensor(x)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx.requires_grad_(), tw, padding="same")
    tgx = torch.autograd.grad(ty, tx, torch.tensor(gy), create_graph=True)[0]
    (t_dP,) = torch.autograd.grad((tgx**2).sum(), tw)
    assert rel_err(dP_dw, t_dP.numpy()) <= 1e-10
    tL = 0.5 * (torch.nn.functional.conv2d(tx, tw, padding=1) ** 2).sum()
    (tg,) = torch.autograd.grad(tL, tw, create_graph=True)
    (t_hv,) = torch.autograd.grad(tg, tw, torch.tensor(V))
    assert rel_err(hv, t_hv.numpy()) <= 1e-10


def test_double_backward_of_an_empty_batch_and_unbatched_input():
    w = np.ones((3, 2, 3))
    gx, pb = cl.vjp(grad.conv1d_input, (0, 2, 5), w, np.ones((0, 3, 3)))
    g = pb(np.ones((0, 2, 5)))
    assert gx.shape == (0, 2, 5) and g[1].shape == w.shape and not g[1].any()
    assert g[2].shape == (0, 3, 3)
    x = np.arange(10.0).reshape(2, 5)
    gw, pb = cl.vjp(grad.conv1d_weight, x, w.shape, np.ones((3, 3)))
    g = pb(np.ones(w.shape))
    assert g[0].shape == x.shape and g[2].shape == (3, 3)
    np.testing.assert_allclose(gw, cl.grad.conv1d_weight(x[None], w.shape, np.ones((1, 3, 3))))


def test_the_pullback_checks_its_cotangent():
    gx, pb = cl.vjp(grad.conv2d_input, (1, 2, 4, 4), np.ones((3, 2, 3, 3)), np.ones((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="grad_out.shape"):
        pb(np.ones((1, 2, 4, 5)))


@settings(max_examples=20, deadline=None)
@given(case=conv_cases(ranks=(1, 2, 3), transposed=True, batch=2))
def test_transposed_backward_is_a_conv_and_a_weight_gradient(case):
    """The README's claim: conv_transpose's gradients are conv(gy, w) and
    conv_weight(gy, w.shape, x) (complex: with conjugates), so double backward covers
    transposed layers too."""
    x, w, _ = case.arrays(np.complex128, seed=6)
    y, pb = cl.vjp(cl.conv_transpose, x, w, None, **case.kwargs)
    rng = np.random.default_rng(7)
    gy = rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)
    g = pb(gy)
    kw = {k: v for k, v in case.kwargs.items() if k != "output_padding"}
    _, fw = _fns(case.rank)
    gx = cl.conv(gy, w.conj(), **kw)
    # an output_padding of the stride or more (a dilation allows it) adds positions that
    # no input reached: gx is then longer than x, and x takes zeros there
    extra = [(0, o - n) for o, n in zip(gx.shape[2:], x.shape[2:])]
    assert rel_err(gx[(...,) + tuple(slice(n) for n in x.shape[2:])], g[0]) <= 1e-12
    xz = np.pad(x, [(0, 0)] * 2 + extra)
    assert rel_err(fw(gy.conj(), w.shape, xz.conj(), **kw), g[1]) <= 1e-12
    if all(o < s for o, s in zip(case.kwargs["output_padding"], case.kwargs["stride"])):
        assert gx.shape == x.shape
