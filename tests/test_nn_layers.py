"""Layers, loss: parity with torch (float64, all gradients) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convolab.nn as nn

torch = pytest.importorskip("torch")
TOL = 1e-10


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-300, np.max(np.abs(b)), 1e-12)) if a.size else 0.0


def t2n(t):
    return t.detach().numpy()


def parity(layer, tlayer, x, train=True, rng=None):
    """Same state, same input: compare output, grad_input, every param grad and buffer."""
    rng = rng or np.random.default_rng(0)
    layer.load_state_dict(tlayer.state_dict())
    layer.train(train)
    tlayer.train(train)
    tx = torch.tensor(x, requires_grad=True)
    ty = tlayer(tx)
    y = layer(x)
    assert y.shape == tuple(ty.shape)
    assert rel(y, t2n(ty)) <= TOL
    gy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(gy))
    gx = layer.backward(gy)
    assert rel(gx, t2n(tx.grad)) <= TOL
    tparams = dict(tlayer.named_parameters())
    for name, p in layer.named_parameters():
        assert rel(p.grad, t2n(tparams[name].grad)) <= TOL, name
    tstate = tlayer.state_dict()
    for name, b in layer.state_dict().items():
        assert rel(b, tstate[name].numpy()) <= TOL, name
    assert sorted(layer.state_dict()) == sorted(tstate)


# --------------------------------------------------------------------------- Linear etc.


def test_linear_parity_and_fd():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 7))
    parity(nn.Linear(7, 4, dtype=np.float64), torch.nn.Linear(7, 4).double(), x)
    parity(
        nn.Linear(7, 4, bias=False, dtype=np.float64), torch.nn.Linear(7, 4, bias=False).double(), x
    )
    fd_check(nn.Linear(7, 4, dtype=np.float64, seed=0), x)


def fd_check(layer, x, train=True):
    """finite_diff, perturbing parameters through load_state_dict (which copies arrays)."""
    rng = np.random.default_rng(0)
    eps = 1e-6
    layer.train(train)
    state = layer.state_dict()
    y = layer(x)
    gy = rng.standard_normal(y.shape)
    layer.zero_grad()
    gx = layer.backward(gy)
    grads = {n: p.grad.copy() for n, p in layer.named_parameters()}

    def L(xx, st_=state):
        layer.load_state_dict(st_)
        return float(np.sum(layer(xx) * gy))

    for _ in range(3):
        v = rng.standard_normal(x.shape)
        num = (L(x + eps * v) - L(x - eps * v)) / (2 * eps)
        assert abs(num - np.sum(gx * v)) <= 1e-6 * max(1.0, abs(num))
    for name, g in grads.items():
        v = rng.standard_normal(g.shape)
        plus, minus = dict(state), dict(state)
        plus[name] = state[name] + eps * v
        minus[name] = state[name] - eps * v
        num = (L(x, plus) - L(x, minus)) / (2 * eps)
        assert abs(num - np.sum(g * v)) <= 1e-6 * max(1.0, abs(num)), name
    layer.load_state_dict(state)


@pytest.mark.parametrize(
    "make,tmake",
    [
        (lambda: nn.ReLU(), lambda: torch.nn.ReLU()),
        (lambda: nn.SiLU(), lambda: torch.nn.SiLU()),
        (lambda: nn.GELU(), lambda: torch.nn.GELU()),
        (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU(approximate="tanh")),
        (lambda: nn.Flatten(), lambda: torch.nn.Flatten()),
        (lambda: nn.Flatten(0, 1), lambda: torch.nn.Flatten(0, 1)),
        (lambda: nn.Identity(), lambda: torch.nn.Identity()),
    ],
)
def test_elementwise_and_shape_layers(make, tmake):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5)) * 3
    x[0, 0, :2] = 0.0  # ReLU's gradient at 0
    parity(make(), tmake(), x)
    fd_check(make(), rng.standard_normal((4, 3, 5)) * 3)


def test_dropout_train_eval():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 50))
    d = nn.Dropout(0.3, seed=0)
    y = d(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / 0.7)
    g = d.backward(np.ones_like(x))
    np.testing.assert_allclose(g, kept / 0.7)
    d.eval()
    assert np.array_equal(d(x), x)
    assert np.array_equal(nn.Dropout(1.0)(x), np.zeros_like(x))
    with pytest.raises(ValueError, match="p=1.5"):
        nn.Dropout(1.5)


# --------------------------------------------------------------------------- pooling

pool_cfg = st.fixed_dictionaries(
    {
        "k": st.integers(1, 4),
        "s": st.one_of(st.none(), st.integers(1, 3)),
        "p": st.integers(0, 2),
        "d": st.integers(1, 2),
        "ceil": st.booleans(),
        "L": st.integers(5, 11),
        "inc": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None)
@given(pool_cfg, st.sampled_from([1, 2, 3]))
def test_pool_parity(cfg, rank):
    k, p = cfg["k"], cfg["p"]
    if p > k // 2:
        p = k // 2
    rng = np.random.default_rng(cfg["L"])
    shape = (2, 3) + tuple(cfg["L"] - i for i in range(rank))
    x = rng.standard_normal(shape)
    M, TM = getattr(nn, f"MaxPool{rank}d"), getattr(torch.nn, f"MaxPool{rank}d")
    A, TA = getattr(nn, f"AvgPool{rank}d"), getattr(torch.nn, f"AvgPool{rank}d")
    try:
        ty = TM(k, cfg["s"], p, cfg["d"], ceil_mode=cfg["ceil"])(torch.tensor(x))
    except RuntimeError:
        with pytest.raises(ValueError):
            M(k, cfg["s"], p, cfg["d"], ceil_mode=cfg["ceil"])(x)
        return
    del ty
    parity(
        M(k, cfg["s"], p, cfg["d"], ceil_mode=cfg["ceil"]),
        TM(k, cfg["s"], p, cfg["d"], ceil_mode=cfg["ceil"]),
        x,
    )
    try:
        TA(k, cfg["s"], p, cfg["ceil"], cfg["inc"])(torch.tensor(x))
    except RuntimeError:  # 3-D: an input smaller than the kernel, even when padded
        with pytest.raises(ValueError, match="at least the kernel_size"):
            A(k, cfg["s"], p, cfg["ceil"], cfg["inc"])(x)
        return
    parity(
        A(k, cfg["s"], p, cfg["ceil"], cfg["inc"]), TA(k, cfg["s"], p, cfg["ceil"], cfg["inc"]), x
    )


def test_maxpool_ties_go_to_first_element():
    x = np.zeros((1, 2, 6))  # all ties, as after a ReLU
    x[0, 1, 4] = 1.0
    parity(nn.MaxPool1d(3, 2, 1), torch.nn.MaxPool1d(3, 2, 1), x)
    x2 = np.maximum(np.random.default_rng(0).standard_normal((2, 3, 7, 8)), 0)
    parity(nn.MaxPool2d(2), torch.nn.MaxPool2d(2), x2)
    parity(nn.MaxPool2d(3, 1, 1), torch.nn.MaxPool2d(3, 1, 1), x2)


def test_pool_unbatched_divisor_override_and_fd():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 9, 8))
    parity(
        nn.AvgPool2d(3, 2, 1, divisor_override=5),
        torch.nn.AvgPool2d(3, 2, 1, divisor_override=5),
        x,
    )
    parity(nn.MaxPool2d((2, 3), (1, 2)), torch.nn.MaxPool2d((2, 3), (1, 2)), x)
    fd_check(
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        rng.standard_normal((2, 3, 7, 6)),
    )
    fd_check(nn.MaxPool1d(3, 2, 1, dilation=2), rng.standard_normal((2, 3, 11)))
    fd_check(nn.MaxPool2d(2, ceil_mode=True), rng.standard_normal((2, 2, 5, 5)))


@pytest.mark.parametrize(
    "rank,size,out",
    [
        (1, 10, 3),
        (1, 7, 7),
        (1, 5, 1),
        (1, 4, 6),
        (2, (9, 7), (4, 3)),
        (2, (6, 6), 1),
        (2, (5, 8), (None, 3)),
        (3, (5, 4, 6), (2, None, 4)),
        (3, (3, 3, 3), 2),
    ],
)
def test_adaptive_avg_pool(rank, size, out):
    rng = np.random.default_rng(5)
    size = (size,) if rank == 1 else size
    x = rng.standard_normal((2, 3) + size)
    A, TA = getattr(nn, f"AdaptiveAvgPool{rank}d"), getattr(torch.nn, f"AdaptiveAvgPool{rank}d")
    parity(A(out), TA(out), x)
    parity(A(out), TA(out), x[0])
    fd_check(A(out), x)


def _with_non_finite(rng, shape, k):
    """Small integers (ties, exact sums) with ``k`` entries set to inf, -inf or NaN."""
    a = rng.integers(-2, 3, size=shape).astype(np.float64)
    for i in rng.choice(a.size, size=min(k, a.size), replace=False):
        a.flat[i] = rng.choice([np.inf, -np.inf, np.nan])
    return a


def _same_non_finite(a, b):
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    fin = np.isfinite(b)
    np.testing.assert_array_equal(a[~fin & ~np.isnan(b)], b[~fin & ~np.isnan(b)])
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.data())
def test_adaptive_avg_pool_inf_and_nan_stay_in_their_windows(rank, data):
    # the averaging matrices multiplied every value by the zeros outside its windows:
    # one -inf made NaN of every output of its plane (inf * 0), torch's only its own
    size = tuple(data.draw(st.integers(1, 7)) for _ in range(rank))
    keep = st.none() if rank > 1 else st.nothing()  # torch's 1-D layer takes no None
    out = tuple(data.draw(st.one_of(keep, st.integers(1, 8))) for _ in range(rank))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = _with_non_finite(rng, (2, 2) + size, data.draw(st.integers(0, 3)))
    layer, tlayer = (getattr(m, f"AdaptiveAvgPool{rank}d")(out) for m in (nn, torch.nn))
    tx = torch.tensor(x, requires_grad=True)
    ty = tlayer(tx)
    _same_non_finite(layer(x), t2n(ty))
    g = _with_non_finite(rng, tuple(ty.shape), data.draw(st.integers(0, 3)))
    ty.backward(torch.tensor(g))
    _same_non_finite(layer.backward(g), tx.grad.numpy())


def test_max_pool_window_without_input_elements():
    # dilation 2 and padding 1 over one element: the window (-1, 1, 3) reads only
    # padding.  torch gives -inf and the index 1 (past the plane), and its backward
    # writes there (out of bounds); convolab gives the same forward and drops the
    # gradient of that window
    layer = nn.MaxPool1d(3, padding=1, dilation=2, ceil_mode=True, return_indices=True)
    y, idx = layer(np.array([[[5.0]]]))
    ty, tidx = torch.nn.MaxPool1d(3, padding=1, dilation=2, ceil_mode=True,
                                  return_indices=True)(torch.tensor([[[5.0]]], dtype=torch.float64))
    np.testing.assert_array_equal(y, t2n(ty))
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1))), np.zeros((1, 1, 1)))


def test_pool_errors():
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool1d(2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        nn.MaxPool2d(5)(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="3-D"):
        nn.MaxPool2d(2)(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="dtype int32, expected a floating dtype or int64"):
        nn.AvgPool1d(2)(np.zeros((1, 1, 4), dtype=np.int32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MaxPool1d(2).backward(np.zeros((1, 1, 2)))


# --------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize(
    "cls,tcls,shape",
    [
        (nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4)),
        (nn.BatchNorm1d, torch.nn.BatchNorm1d, (5, 4, 7)),
        (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 5, 6)),
        (nn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 4, 3, 5, 2)),
    ],
)
@pytest.mark.parametrize(
    "kw", [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False}, {"eps": 1e-3}]
)
def test_batchnorm_parity(cls, tcls, shape, kw):
    rng = np.random.default_rng(6)
    layer, tlayer = cls(4, dtype=np.float64, **kw), tcls(4, **kw).double()
    if layer.affine:  # non-trivial affine parameters
        with torch.no_grad():
            tlayer.weight.copy_(torch.tensor(rng.standard_normal(4)))
            tlayer.bias.copy_(torch.tensor(rng.standard_normal(4)))
    for _step in range(3):  # running statistics over several batches
        x = rng.standard_normal(shape) * 2 + 1
        parity(layer, tlayer, x, train=True)
        layer.zero_grad()
        tlayer.zero_grad()
    parity(layer, tlayer, rng.standard_normal(shape), train=False)
    fd_check(cls(4, dtype=np.float64, **kw), rng.standard_normal(shape))
    fd_check(cls(4, dtype=np.float64, **kw), rng.standard_normal(shape), train=False)


def test_batchnorm_state_dict_keys_and_errors():
    bn = nn.BatchNorm2d(3)
    assert list(bn.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64
    with pytest.raises(ValueError, match="num_features=3"):
        bn(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


# --------------------------------------------------------------------------- Sequential


def test_sequential_state_dict_from_torch_and_parity():
    rng = np.random.default_rng(7)
    tm = torch.nn.Sequential(
        torch.nn.Conv1d(2, 5, 3, padding=2, dilation=2, bias=False),
        torch.nn.BatchNorm1d(5),
        torch.nn.GELU(),
        torch.nn.MaxPool1d(2),
        torch.nn.Conv1d(5, 6, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AvgPool1d(2, 1, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 5, 3),
    ).double()
    m = nn.Sequential(
        nn.Conv1d(2, 5, 3, padding=2, dilation=2, bias=False),
        nn.BatchNorm1d(5),
        nn.GELU(),
        nn.MaxPool1d(2),
        nn.Conv1d(5, 6, 3, stride=2),
        nn.ReLU(),
        nn.AvgPool1d(2, 1, 1),
        nn.Flatten(),
        nn.Linear(6 * 5, 3),
    )
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    m.load_state_dict(sd)  # loads unchanged: same keys, float32 model takes float64 arrays
    assert sorted(m.state_dict()) == sorted(sd)  # same keys (order: params first)
    for mod in m.modules():  # switch the copy to float64 for the parity check
        for p in mod.parameters(recurse=False):
            p.data = p.data.astype(np.float64)
        for name, b in list(mod._buffers.items()):
            if b.dtype == np.float32:
                mod._set_buffer(name, b.astype(np.float64))
    x = rng.standard_normal((4, 2, 20))
    parity(m, tm, x)
    assert m[0] is m._modules["0"] and len(m) == 9 and isinstance(m[1:3], nn.Sequential)


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_parity(ls, reduction):
    rng = np.random.default_rng(8)
    z = rng.standard_normal((6, 5)) * 4
    z[0, 0] = 800.0  # no overflow
    t = rng.integers(0, 5, 6)
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=ls)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=ls)(tz, torch.tensor(t))
    out = loss(z, t)
    assert rel(out, t2n(tl)) <= TOL
    g = rng.standard_normal(6) if reduction == "none" else 1.7
    tl.backward(torch.tensor(g, dtype=torch.float64))
    assert rel(loss.backward(g), t2n(tz.grad)) <= TOL
    # finite differences in the logits
    v = rng.standard_normal(z.shape)
    eps = 1e-6
    f = lambda zz: float(np.sum(np.asarray(loss(zz, t)) * g))  # noqa: E731
    loss(z, t)
    gz = loss.backward(g)
    num = (f(z + eps * v) - f(z - eps * v)) / (2 * eps)
    assert abs(num - np.sum(gz * v)) <= 1e-6 * max(1, abs(num))


def test_cross_entropy_spatial_and_errors():
    rng = np.random.default_rng(9)
    z = rng.standard_normal((3, 4, 5))
    t = rng.integers(0, 4, (3, 5))
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(t))
    tl.backward()
    loss = nn.CrossEntropyLoss()
    assert rel(loss(z, t), t2n(tl)) <= TOL
    assert rel(loss.backward(), t2n(tz.grad)) <= TOL
    with pytest.raises(ValueError, match="target values"):
        loss(z, t + 4)
    with pytest.raises(TypeError, match="integer"):
        loss(z, t.astype(float))
    with pytest.raises(ValueError, match="target.shape"):
        loss(z, t[:, :2])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_cross_entropy_class_weights_and_ignore_index(reduction, ls):
    """torch's weighted mean divides by the weights of the targets kept; ignored
    elements add nothing and get no gradient."""
    rng = np.random.default_rng(10)
    z = rng.standard_normal((4, 5, 3)) * 2
    t = rng.integers(0, 5, (4, 3))
    t[0, 1] = t[2, 2] = 7  # ignored
    w = rng.random(5) + 0.5
    kw = dict(ignore_index=7, reduction=reduction, label_smoothing=ls)
    loss = nn.CrossEntropyLoss(weight=w, **kw)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(weight=torch.tensor(w), **kw)(tz, torch.tensor(t))
    assert rel(loss(z, t), t2n(tl)) <= TOL
    g = rng.standard_normal(t.shape) if reduction == "none" else np.asarray(0.7)
    tl.backward(torch.tensor(g))
    assert rel(loss.backward(g), t2n(tz.grad)) <= TOL
    with pytest.raises(ValueError, match=r"weight.shape=\(5,\) must be \(C,\) = \(4,\)"):
        loss(z[:, :4], t % 4)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_inf_and_nan_logits_as_torch(reduction, ls, weighted):
    """A -inf logit of a class that is not the target leaves the loss finite (the loss
    was -(a * log p).sum(1), and 0 * -inf is NaN); an ignored element is 0 whatever
    its logits hold; label smoothing 1.0 keeps torch's 0 * inf = NaN."""
    z = np.array([[1.0, -np.inf, 0.5], [np.nan, 0.0, 1.0], [2.0, 1.0, -np.inf],
                  [0.0, np.inf, 1.0], [0.5, 0.2, 0.1]])
    t = np.array([0, 1, 2, 1, 9])
    t[1] = 9  # ignored, over NaN logits
    w = np.array([0.5, 1.5, 2.0]) if weighted else None
    kw = dict(ignore_index=9, reduction=reduction, label_smoothing=ls)
    loss = nn.CrossEntropyLoss(weight=w, **kw)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(w), **kw)(
        tz, torch.tensor(t))
    _same_non_finite(np.atleast_1d(loss(z, t)), np.atleast_1d(t2n(tl)))
    g = np.linspace(0.5, 1.5, t.size) if reduction == "none" else np.asarray(0.7)
    tl.backward(torch.tensor(g))
    _same_non_finite(loss.backward(g), t2n(tz.grad))


# --------------------------------------------------------------------------- module rules


def test_tied_parameter_is_listed_once_and_stepped_once():
    """A Parameter shared by two layers: one entry in parameters(), one optimizer update,
    the same trajectory as torch (which also removes duplicates)."""
    from convolab.nn import optim

    a = nn.Linear(2, 2, bias=False, dtype=np.float64, seed=0)
    b = nn.Linear(2, 2, bias=False, dtype=np.float64, seed=1)
    b.weight = a.weight
    m = nn.Sequential(a, b)
    assert len(m.parameters()) == 1 and m.num_parameters() == 4
    assert sorted(m.state_dict()) == ["0.weight", "1.weight"]  # torch keeps both keys
    ta = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
    tb = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
    ta.weight.data = torch.tensor(a.weight.data.copy())
    tb.weight = ta.weight
    tm = torch.nn.Sequential(ta, tb)
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    x = np.array([[1.0, 2.0]])
    for _ in range(2):
        y = m(x)
        m.backward(np.ones_like(y))
        opt.step()
        opt.zero_grad()
        ty = tm(torch.tensor(x))
        ty.backward(torch.ones_like(ty))
        topt.step()
        topt.zero_grad()
    assert rel(a.weight.data, t2n(ta.weight)) <= TOL
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([a.weight, b.weight], lr=0.1)


def test_one_layer_instance_twice_refuses_backward():
    lin = nn.Linear(2, 2, seed=0)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    y = m(np.ones((1, 2), np.float32))  # inference is fine
    with pytest.raises(ValueError, match="same Linear instance sits at '0' and '2'"):
        m.backward(np.ones_like(y))


def test_parameter_array_copy_semantics():
    p = nn.Parameter(np.zeros(3))
    a = np.array(p)
    a[0] = 99.0
    assert p.data[0] == 0.0
    assert np.asarray(p) is p.data  # asarray may view, as for an ndarray
    assert np.array(p, dtype=np.float32).dtype == np.float32
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        with pytest.raises(ValueError, match="without a copy"):
            np.array(p, dtype=np.float32, copy=False)
    else:  # NumPy 1: copy=False means "copy only if needed"
        assert np.array(p, dtype=np.float32, copy=False).dtype == np.float32


def test_buffers_keep_their_place_and_shape():
    bn = nn.BatchNorm2d(3)
    bn.running_mean = np.full(3, 5.0, np.float32)
    assert list(bn.state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"
    ]
    good = {k: v.copy() for k, v in bn.state_dict().items()}
    for key, bad in (("running_mean", np.zeros(5)), ("running_var", np.array(2.0))):
        with pytest.raises(ValueError, match=f"{key} has shape"):
            bn.load_state_dict({**good, key: bad})
    assert bn.running_mean[0] == 5.0  # a rejected dict changes nothing
    # torch fills in a counter missing from old checkpoints
    old = {k: v for k, v in good.items() if k != "num_batches_tracked"}
    bn.load_state_dict(old)
    with pytest.raises(ValueError, match="unexpected keys"):
        bn.load_state_dict({**good, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="must be a bool"):
        bn.train("no")


def test_relu_passes_nan_like_torch():
    x = np.array([np.nan, -1.0, 0.0, 2.0])
    r = nn.ReLU()
    y = r(x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    ty.backward(torch.ones(4))
    np.testing.assert_array_equal(y, t2n(ty))
    np.testing.assert_array_equal(r.backward(np.ones(4)), t2n(tx.grad))


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: nn.ReLU(), np.ones((4, 3))),
        (lambda: nn.SiLU(), np.ones((4, 3))),
        (lambda: nn.GELU(), np.ones((4, 3))),
        (lambda: nn.Dropout(0.5, seed=0), np.ones((4, 3))),
        (lambda: nn.Identity(), np.ones((4, 3))),
        (lambda: nn.Flatten(), np.ones((2, 3, 4))),
        (lambda: nn.Linear(3, 5, dtype=np.float64), np.ones((4, 3))),
        (lambda: nn.BatchNorm1d(3, dtype=np.float64), np.random.default_rng(0).random((4, 3))),
        (lambda: nn.MaxPool2d(2), np.ones((1, 1, 4, 4))),
        (lambda: nn.AvgPool1d(2), np.ones((2, 4))),
        (lambda: nn.AdaptiveAvgPool2d(2), np.ones((1, 2, 4, 4))),
    ],
)
def test_backward_checks_grad_shape_before_touching_grads(make, x):
    layer = make()
    y = layer(x)
    bad = np.ones(y.shape[-1:] if y.ndim > 1 else (y.shape[0] + 1,))
    with pytest.raises(ValueError, match=r"grad_out.shape=.* must equal the output's shape"):
        layer.backward(bad)
    assert all(p.grad is None for p in layer.parameters())
    assert layer.backward(np.ones(y.shape)).shape == np.shape(x)


def test_layers_refuse_mixed_dtypes_and_bad_arguments():
    with pytest.raises(TypeError, match="dtypes must match"):
        nn.Linear(3, 2)(np.ones((1, 3)))
    with pytest.raises(TypeError, match="dtypes must match"):
        nn.BatchNorm1d(3)(np.ones((2, 3)))
    with pytest.raises(TypeError, match="momentum='a' must be a real number"):
        nn.BatchNorm1d(3, momentum="a")
    with pytest.raises(ValueError, match="start_dim=1 is out of range for a 1-D input"):
        nn.Flatten()(np.ones(3))
    with pytest.raises(ValueError, match="non-zero channel and spatial sizes"):
        nn.AdaptiveAvgPool1d(2)(np.ones((1, 1, 0)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Dropout().backward(np.ones(3))
    bn = nn.BatchNorm1d(3, dtype=np.float64, bias=False)
    tbn = torch.nn.BatchNorm1d(3, dtype=torch.float64, bias=False)
    assert list(bn.state_dict()) == list(tbn.state_dict())
    parity(bn, tbn, np.random.default_rng(1).standard_normal((5, 3)))


def test_maxpool_all_minus_inf_window_sends_gradient_inside():
    """A window of -inf values that reaches into the padding: torch gives its gradient to
    the window's first element inside the input, never to the padding; with dilation,
    its first tap inside, ceil((p - o*s) / d) (a mutant ignoring dilation survived)."""
    edge = np.array([[[-np.inf, -np.inf, 1.0, -np.inf, -np.inf]]])
    flat = np.full((1, 1, 7), -np.inf)
    for x, k, s, p, d, ceil in ((edge, 2, 2, 1, 1, False), (edge, 3, 2, 1, 1, True),
                                (edge, 3, 1, 1, 1, False), (flat, 4, 1, 2, 2, False),
                                (flat, 5, 2, 2, 2, False), (flat, 4, 2, 2, 3, False)):
        m = nn.MaxPool1d(k, s, p, dilation=d, ceil_mode=ceil)
        tm = torch.nn.MaxPool1d(k, s, p, dilation=d, ceil_mode=ceil)
        y = m(x)
        tx = torch.tensor(x, requires_grad=True)
        ty = tm(tx)
        ty.backward(torch.ones_like(ty))
        np.testing.assert_array_equal(y, t2n(ty))
        np.testing.assert_array_equal(m.backward(np.ones(y.shape)), t2n(tx.grad))


def test_cross_entropy_none_backward_needs_its_gradient():
    loss = nn.CrossEntropyLoss(reduction="none")
    loss(np.random.default_rng(0).standard_normal((4, 5)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="reduction='none' returns one loss per element"):
        loss.backward()
    assert loss.backward(np.ones(4)).shape == (4, 5)
    mean = nn.CrossEntropyLoss()
    mean(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"grad.shape=\(3,\) must equal the loss's shape \(\)"):
        mean.backward(np.ones(3))


def test_cross_entropy_with_every_target_ignored():
    """No element counts: the mean is NaN (0 / 0, as torch) but the gradient is zero, so
    an optimizer step after such a batch leaves the weights finite."""
    z = np.array([[0.5, -0.2], [0.1, 0.3]])
    loss = nn.CrossEntropyLoss(ignore_index=0)
    assert np.isnan(loss(z, np.array([0, 0])))
    np.testing.assert_array_equal(loss.backward(), np.zeros_like(z))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls, weighted", [(0.0, False), (0.1, True)])
def test_cross_entropy_probability_targets(reduction, ls, weighted):
    """Soft labels (a float target of the input's shape), as torch: weights and label
    smoothing apply, and the mean divides by the number of elements."""
    rng = np.random.default_rng(11)
    z = rng.standard_normal((4, 5, 3))
    t = rng.random((4, 5, 3))
    t /= t.sum(axis=1, keepdims=True)
    w = rng.random(5) + 0.5 if weighted else None
    kw = dict(reduction=reduction, label_smoothing=ls)
    loss = nn.CrossEntropyLoss(weight=w, **kw)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(w), **kw)(
        tz, torch.tensor(t))
    assert rel(loss(z, t), t2n(tl)) <= TOL
    g = rng.standard_normal((4, 3)) if reduction == "none" else np.asarray(1.3)
    tl.backward(torch.tensor(g))
    assert rel(loss.backward(g), t2n(tz.grad)) <= TOL


def test_module_traversal_matches_torch():
    inner = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU())
    m = nn.Sequential(inner, nn.BatchNorm1d(2), inner)  # a shared submodule: listed once
    tinner = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU())
    tm = torch.nn.Sequential(tinner, torch.nn.BatchNorm1d(2), tinner)
    assert [n for n, _ in m.named_modules()] == [n for n, _ in tm.named_modules()]
    assert [n for n, _ in m.named_children()] == [n for n, _ in tm.named_children()]
    assert len(list(m.modules())) == len(list(tm.modules())) == 5
    assert len(m.buffers()) == len(list(tm.buffers())) == 3
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    tseen = []
    tm.apply(lambda mod: tseen.append(type(mod).__name__))
    assert seen == tseen


# Mutation testing: (kills L4: MaxPool propagates NaN and sends it the gradient,
# as torch)
@pytest.mark.parametrize("pad", [0, 1])
def test_maxpool_passes_nan_like_torch(pad):
    x = np.array([[[1.0, np.nan, 3.0, 0.5, 2.0, -1.0, np.nan]]])
    layer, tlayer = nn.MaxPool1d(2, 2, pad), torch.nn.MaxPool1d(2, 2, pad)
    tx = torch.tensor(x, requires_grad=True)
    ty = tlayer(tx)
    ty.backward(torch.ones_like(ty))
    y = layer(x)
    np.testing.assert_array_equal(y, t2n(ty))
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), tx.grad.numpy())


# Mutation testing: (kills MO5: load_state_dict keeps each buffer's dtype, as
# torch copies into the existing tensor; a float32 torch state into a float64 layer)
def test_load_state_dict_keeps_buffer_dtypes():
    t = torch.nn.BatchNorm1d(3, affine=False)  # float32
    t(torch.randn(8, 3))
    bn = nn.BatchNorm1d(3, affine=False, dtype=np.float64)
    bn.load_state_dict(t.state_dict())
    assert {k: v.dtype for k, v in bn.state_dict().items()} == {
        "running_mean": np.float64, "running_var": np.float64, "num_batches_tracked": np.int64}
    t64 = torch.nn.BatchNorm1d(3, affine=False).double()
    t64.load_state_dict(t.state_dict())
    bn.eval()
    t64.eval()
    x = np.random.default_rng(0).standard_normal((4, 3))
    assert rel(bn(x), t2n(t64(torch.tensor(x)))) <= TOL


# Mutation testing: (kills MO7: load_state_dict(strict=False) loads the keys that
# match and skips missing and unexpected ones, as torch)
def test_load_state_dict_non_strict_loads_what_matches():
    t = torch.nn.Linear(3, 2).double()
    m = nn.Linear(3, 2, dtype=np.float64)
    bias = m.bias.data.copy()
    sd = {"weight": t.state_dict()["weight"], "extra": torch.zeros(1)}
    with pytest.raises(KeyError, match="missing keys"):
        m.load_state_dict(sd)
    m.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(m.weight.data, t2n(t.weight))
    np.testing.assert_array_equal(m.bias.data, bias)


# Mutation testing: (kills LO6: the default ignore_index is -100, as torch)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_default_ignore_index_is_minus_100(reduction):
    z = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, -100, 2, 1])
    loss = nn.CrossEntropyLoss(reduction=reduction)
    assert loss.ignore_index == -100
    out = loss(z, t)
    tz = torch.tensor(z, requires_grad=True)
    ty = torch.nn.CrossEntropyLoss(reduction=reduction)(tz, torch.tensor(t))
    assert rel(out, t2n(ty)) <= TOL
    g = np.ones(np.shape(out))
    ty.backward(torch.tensor(g))
    assert rel(loss.backward(g), t2n(tz.grad)) <= TOL
    with pytest.raises(ValueError, match="target values must be in"):
        nn.CrossEntropyLoss()(z, np.array([0, -1, 2, 1]))


def test_train_and_eval_reach_every_sub_module():
    """Mutation testing: train() setting only the top module was caught by a demo test
    alone."""
    inner = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.5))
    model = nn.Sequential(nn.Linear(3, 2), inner)
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))  # dropout off, running stats used


# -- torch's names and forms (the parity audit of the fourteenth pass) ---------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Linear(4, 3, seed=0), (2, 4)),
        (nn.BatchNorm2d(3), (2, 3, 4, 4)),
        (nn.MaxPool1d(2), (1, 2, 6)),
        (nn.AvgPool2d(2), (1, 2, 4, 4)),
        (nn.AdaptiveAvgPool2d(2), (1, 2, 4, 4)),
        (nn.Dropout(0.5), (3, 4)),
        (nn.ReLU(), (3,)),
        (nn.SiLU(), (3,)),
        (nn.GELU(), (3,)),
        (nn.Flatten(), (2, 3, 4)),
        (nn.Identity(), (2,)),
        (nn.Sequential(nn.Linear(4, 2, seed=1), nn.ReLU()), (3, 4)),
    ],
)
def test_every_layer_takes_its_input_by_torchs_keyword(layer, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    layer.eval()
    np.testing.assert_array_equal(layer(input=x), layer(x))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_of_one_unbatched_sample(reduction, soft):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(5)
    t = rng.dirichlet(np.ones(5)) if soft else np.array(3)
    w = rng.random(5)
    loss = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.1)
    out = loss(z, t)
    g = loss.backward(np.asarray(0.7))
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(w), reduction=reduction, label_smoothing=0.1
    )(tz, torch.tensor(t))
    tl.backward(torch.tensor(0.7, dtype=torch.float64))
    assert out.shape == tuple(tl.shape) == () and g.shape == z.shape
    assert rel(out, t2n(tl)) <= TOL and rel(g, tz.grad.numpy()) <= TOL
    with pytest.raises(ValueError, match=r"must be \(\) \(a class index\)"):
        loss(z, np.array([1, 2]))


def test_cross_entropy_refuses_ignore_index_for_probabilities():
    rng = np.random.default_rng(2)
    z, p = rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), 3)
    with pytest.raises(ValueError, match="ignore_index=2 does not apply to class probabilities"):
        nn.CrossEntropyLoss(ignore_index=2)(z, p)
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        torch.nn.CrossEntropyLoss(ignore_index=2)(torch.tensor(z), torch.tensor(p))
    nn.CrossEntropyLoss(ignore_index=2)(z, np.array([0, 2, 1]))  # indices: fine
    for negative in (-1, -100):  # torch takes a negative one, and it does nothing here
        ours = nn.CrossEntropyLoss(ignore_index=negative)(z, p)
        theirs = torch.nn.CrossEntropyLoss(ignore_index=negative)(torch.tensor(z), torch.tensor(p))
        assert rel(ours, t2n(theirs)) <= TOL


def test_cross_entropy_failed_forward_leaves_nothing_for_backward():
    loss = nn.CrossEntropyLoss()
    loss(np.zeros((4, 3)), np.zeros(4, int))
    with pytest.raises(ValueError):
        loss(np.zeros(3), np.array([1, 2]))
    with pytest.raises(RuntimeError, match="before forward"):
        loss.backward()
    out = nn.CrossEntropyLoss(reduction="none")(np.zeros(3), np.array(1))
    assert isinstance(out, np.ndarray) and out.shape == ()


def test_devices_torch_accepts_for_the_cpu():
    for device in (None, "cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)):
        nn.Linear(2, 2, device=device)
        nn.Conv1d(1, 1, 1, device=device)
        nn.BatchNorm1d(2, device=device)
    for device in ("cuda", "cpu:", "cpu:x", "gpu", torch.device("meta")):
        with pytest.raises(ValueError, match="CPU only"):
            nn.Linear(2, 2, device=device)


@pytest.mark.parametrize(
    "make", [lambda: nn.Conv2d(3, 4, 3, seed=0), lambda: nn.ConvTranspose1d(4, 6, 2, groups=2),
             lambda: nn.Linear(5, 3, seed=0)]
)
def test_reset_parameters_draws_again_in_place(make):
    layer = make()
    w, b = layer.weight.data, layer.bias.data
    w0, b0 = w.copy(), b.copy()
    layer.reset_parameters()
    assert layer.weight.data is w and layer.bias.data is b  # optimizers keep what they hold
    assert (w != w0).all() and (b != b0).all()
    bound = 1 / np.sqrt(w[0].size)  # fan_in: weight.shape[1] * prod(kernel)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound


def test_batchnorm_reset_parameters_and_running_stats():
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    bn(np.random.default_rng(0).standard_normal((4, 3)) + 5)
    bn.weight.data[...] = 2
    bn.reset_running_stats()
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    assert bn.num_batches_tracked == 0 and (bn.weight.data == 2).all()
    bn.reset_parameters()
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all()


def test_load_state_dict_returns_the_keys_it_did_not_match():
    m = nn.Sequential(nn.Conv2d(2, 3, 3, seed=0), nn.BatchNorm2d(3))
    tm = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    for strict, drop, extra in [(True, None, None), (False, "0.bias", "x")]:
        sd = m.state_dict()
        tsd = tm.state_dict()
        if drop:
            del sd[drop], tsd[drop]
            sd[extra], tsd[extra] = np.ones(1), torch.ones(1)
        ours, theirs = m.load_state_dict(sd, strict=strict), tm.load_state_dict(tsd, strict)
        assert ours.missing_keys == theirs.missing_keys
        assert ours.unexpected_keys == theirs.unexpected_keys


@pytest.mark.parametrize("name,args", [
    ("MaxPool1d", (2,)), ("MaxPool2d", ((2, 3),)), ("MaxPool2d", (3, 1, 1, 2)),
    ("MaxPool3d", (2, None, 0, 1, False, True)), ("MaxPool2d", ([2, 2], [])),
    ("AvgPool1d", (3, 2, 1, True, False)), ("AvgPool2d", (3, None, 1)),
    ("AvgPool2d", ((3, 2), (1, 2), (1, 0), True, False, 4)), ("AvgPool3d", (2,)),
    ("AdaptiveAvgPool1d", (3,)), ("AdaptiveAvgPool2d", ((None, 3),)),
    ("AdaptiveAvgPool3d", ([1, 2, 3],)), ("MaxUnpool2d", (2, 1)), ("MaxUnpool3d", (2,)),
])
def test_pooling_reprs_and_attributes_as_torch(name, args):
    ours, theirs = getattr(nn, name)(*args), getattr(torch.nn, name)(*args)
    assert repr(ours) == repr(theirs)
    for attr in ("kernel_size", "stride", "padding", "dilation", "output_size"):
        if hasattr(theirs, attr):
            assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_pooling_reads_its_attributes_at_each_forward_as_torch():
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 7))
    for name in ("MaxPool2d", "AvgPool2d"):
        ours, theirs = getattr(nn, name)(2), getattr(torch.nn, name)(2)
        for layer in (ours, theirs):
            layer.kernel_size, layer.stride, layer.padding = 3, (2, 1), 1
        np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).numpy(), rtol=1e-14)
    ours, theirs = nn.AdaptiveAvgPool2d(2), torch.nn.AdaptiveAvgPool2d(2)
    ours.output_size = theirs.output_size = (3, None)
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).numpy(), rtol=1e-14)
    ours = nn.MaxPool2d(2)
    ours.kernel_size = 0  # a bad value set later is still refused, at the forward
    with pytest.raises(ValueError, match="kernel_size"):
        ours(x)


def test_reprs_and_attributes_as_torch():
    assert "dilation=2" in repr(nn.MaxPool2d(3, 1, dilation=2))
    assert "dilation" not in repr(nn.AvgPool2d(3))
    for padding, rank in (([1], 1), ([2, 1], 2), ([1], 2)):
        ours = getattr(nn, f"Conv{rank}d")(2, 2, 3, padding=padding).padding
        assert ours == getattr(torch.nn, f"Conv{rank}d")(2, 2, 3, padding=padding).padding
    assert nn.Conv1d(2, 2, 3, padding=[(1, 2)]).padding == ((1, 2),)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # torch's
@pytest.mark.parametrize("features", [(0, 3), (3, 0), (0, 0)])
def test_linear_with_no_features_as_torch(features):
    layer = nn.Linear(*features, dtype=np.float64, seed=0)
    t = torch.nn.Linear(*features, dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((2, 5, features[0]))
    parity(layer, t, x)


def test_pool_stride_empty_means_the_kernel_size():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    for stride in ([], ()):
        for cls in ("MaxPool2d", "AvgPool2d"):
            ours, theirs = getattr(nn, cls)(2, stride), getattr(torch.nn, cls)(2, stride)
            np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- bad input


def _net():
    return nn.Sequential(nn.Conv2d(2, 3, 3, seed=0), nn.BatchNorm2d(3), nn.Flatten(),
                         nn.Linear(12, 2, seed=1))


@pytest.mark.parametrize(
    "key,value,exc,msg",
    [
        ("3.bias", np.full((2,), "x"), TypeError, "3.bias has dtype <U1; it must hold numbers"),
        ("3.bias", np.full((2,), b"x"), TypeError, "3.bias has dtype |S1"),
        ("3.bias", np.zeros(2, "V4"), TypeError, "3.bias has dtype |V4"),
        ("3.bias", np.zeros(2, "M8[s]"), TypeError, r"3.bias has dtype datetime64\[s\]"),
        ("3.bias", [1.0, [2.0, 3.0]], TypeError, "3.bias is not an array of numbers"),
        ("0.weight", np.ones((3, 2, 3, 3), complex), TypeError, "0.weight is complex"),
        ("3.weight", np.ones(3), ValueError, r"3.weight has shape \(3,\), expected \(2, 12\)"),
        ("1.num_batches_tracked", None, TypeError, "num_batches_tracked has dtype object"),
        ("1.num_batches_tracked", {}, TypeError, "num_batches_tracked has dtype object"),
        ("1.num_batches_tracked", np.array(10**30, dtype=object), TypeError, "dtype object"),
        ("1.num_batches_tracked", np.nan, ValueError, "non-finite values"),
        ("1.num_batches_tracked", -np.inf, ValueError, "non-finite values"),
        ("1.num_batches_tracked", 1e30, ValueError, "outside the range"),
        ("1.num_batches_tracked", 10**30, ValueError, "integers beyond 64 bits, outside"),
        ("1.num_batches_tracked", np.array(2**70, object), TypeError, "dtype object"),
        ("1.num_batches_tracked", np.uint64(2**63), ValueError, r"\[9223372036854775808, "),
    ],
)
def test_load_state_dict_is_all_or_nothing(key, value, exc, msg):
    """Every entry is checked and converted before any is written: a bad one (the last
    key, or the last of a BatchNorm's) leaves the whole model as it was."""
    m = _net()
    before = m.state_dict()
    sd = {k: v + 1 for k, v in before.items()}
    sd[key] = value
    with pytest.raises(exc, match=msg):
        m.load_state_dict(sd)
    after = m.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and np.array_equal(after[k], v), k


def test_load_state_dict_converts_numbers_as_torch_copies():
    """ints and bools into floats, floats truncated into the int counter, bfloat16."""
    m, tm = _net(), torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                                        torch.nn.Flatten(), torch.nn.Linear(12, 2))
    sd = {k: torch.tensor(v) for k, v in m.state_dict().items()}
    sd["0.weight"] = torch.arange(54).reshape(3, 2, 3, 3)  # int64
    sd["0.bias"] = torch.tensor([True, False, True])
    sd["1.weight"] = torch.tensor([0.5, 1.5, 2.5], dtype=torch.bfloat16)
    sd["1.num_batches_tracked"] = torch.tensor(2.7)
    sd["1.running_mean"] = torch.tensor([-3, 0, 3], dtype=torch.int8)
    tm.load_state_dict(sd)
    m.load_state_dict(sd)
    for k, v in tm.state_dict().items():
        got = m.state_dict()[k]
        assert got.dtype == v.numpy().dtype and np.array_equal(got, v.numpy()), k
    assert m.state_dict()["1.num_batches_tracked"] == 2
    sd["1.num_batches_tracked"] = np.int64(-3)  # torch loads a negative count too
    m.load_state_dict(sd)
    assert m[1].num_batches_tracked == -3


_FLAGS = [
    (lambda v: nn.Linear(2, 2, bias=v), "Linear: bias"),
    (lambda v: nn.BatchNorm1d(2, affine=v), "BatchNorm1d: affine"),
    (lambda v: nn.BatchNorm2d(2, track_running_stats=v), "BatchNorm2d: track_running_stats"),
    (lambda v: nn.BatchNorm1d(2, bias=v), "BatchNorm1d: bias"),
    (lambda v: nn.MaxPool2d(2, ceil_mode=v), "MaxPool2d: ceil_mode"),
    (lambda v: nn.MaxPool1d(2, return_indices=v), "MaxPool1d: return_indices"),
    (lambda v: nn.AvgPool1d(2, ceil_mode=v), "AvgPool1d: ceil_mode"),
    (lambda v: nn.AvgPool2d(2, count_include_pad=v), "AvgPool2d: count_include_pad"),
    (lambda v: nn.ReLU(v), "ReLU: inplace"),
    (lambda v: nn.SiLU(inplace=v), "SiLU: inplace"),
    (lambda v: nn.Dropout(inplace=v), "Dropout: inplace"),
    (lambda v: nn.Linear(2, 2).load_state_dict({}, strict=v), "load_state_dict: strict"),
    (lambda v: list(nn.Linear(2, 2).named_parameters(remove_duplicate=v)),
     "named_parameters: remove_duplicate"),
]


@pytest.mark.parametrize("make,where", _FLAGS)
@pytest.mark.parametrize(
    "bad", [np.array([True, False]), np.array(True), "no", None, 1.0], ids=repr
)
def test_bool_flags_refuse_what_is_not_a_bool(make, where, bad):
    """torch tests these by truthiness: an array or a tensor raised NumPy's or torch's
    error without the argument's name, a string or a float silently meant True."""
    with pytest.raises(TypeError, match=f"{where}=.* must be a bool"):
        make(bad)
    with pytest.raises(TypeError, match=f"{where}=tensor"):
        make(torch.tensor(True))


def test_bool_flags_take_bools_numpy_bools_and_ints_as_torch():
    for off in (False, np.False_, 0, np.int64(0)):
        assert nn.Linear(2, 2, bias=off).bias is None
        bn = nn.BatchNorm1d(2, affine=off, track_running_stats=off)
        assert bn.weight is None and bn.state_dict() == {} and bn.affine is False
        assert nn.AvgPool1d(2, ceil_mode=off, count_include_pad=off).count_include_pad is False
        nn.MaxPool1d(2, return_indices=off)
    for on in (True, np.True_, 1):
        assert nn.Linear(2, 2, bias=on).bias is not None
        assert nn.MaxPool1d(2, ceil_mode=on).ceil_mode is True
        assert len(nn.Linear(2, 2).load_state_dict({}, strict=not on)[0]) == 2


@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (lambda: nn.Flatten(float("inf")), TypeError, "Flatten: start_dim=inf must be an int"),
        (lambda: nn.Flatten(1.7), TypeError, "Flatten: start_dim=1.7 must be an int"),
        (lambda: nn.Flatten(True), TypeError, "Flatten: start_dim=True must be an int"),
        (lambda: nn.Flatten(1, "-1"), TypeError, "Flatten: end_dim='-1' must be an int"),
        (lambda: nn.Dropout("a"), TypeError, "Dropout: p='a' must be a number between 0"),
        (lambda: nn.Dropout([0.5]), TypeError, r"Dropout: p=\[0.5\] must be a number"),
        (lambda: nn.Dropout(np.array(0.5)), TypeError, r"p=array\(0.5\) must be a number"),
        (lambda: nn.Dropout(True), TypeError, "Dropout: p=True must be a number"),
        (lambda: nn.Dropout(float("nan")), ValueError, "Dropout: p=nan must be a number"),
        (lambda: nn.Dropout(1.5), ValueError, "Dropout: p=1.5 must be a number between"),
        (lambda: nn.BatchNorm2d(True), TypeError, "BatchNorm2d: num_features=True must be an int"),
        (lambda: nn.BatchNorm1d(3.0), TypeError, "BatchNorm1d: num_features=3.0 must be an int"),
        (lambda: nn.BatchNorm1d(0), ValueError, "num_features=0 must be a positive int"),
        (lambda: nn.Linear(2, 2, seed="a"), TypeError, "Linear: seed='a' must be None, an int"),
        (lambda: nn.Linear(2, 2, seed=1.5), TypeError, "Linear: seed=1.5 must be None"),
        (lambda: nn.Dropout(seed=True), TypeError, "Dropout: seed=True must be None"),
        (lambda: nn.Dropout(seed=-1), ValueError, "Dropout: seed=-1 must be None, an int >= 0"),
        (lambda: nn.Linear(2, 2, rng=3), TypeError, "Linear: rng=3 must be a numpy.random"),
    ],
)
def test_layer_arguments_are_named_in_their_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_layer_arguments_torch_takes_still_work():
    x = np.zeros((2, 3, 4, 5), np.float32)
    t = torch.zeros(2, 3, 4, 5)
    for sd, ed in [(np.int64(2), -1), (0, torch.tensor(2)), (-3, np.int32(-2))]:
        assert nn.Flatten(sd, ed)(x).shape == tuple(torch.nn.Flatten(sd, ed)(t).shape)
    for p in (np.float32(0.25), 1, torch.tensor(0.5)):
        assert nn.Dropout(p).p == float(p)
    assert nn.BatchNorm1d(np.int64(3)).num_features == 3
    assert nn.BatchNorm1d(np.array(3)).weight.shape == (3,)  # torch takes a 0-d array too
    a, b = nn.Linear(2, 2, seed=[1, 2]), nn.Linear(2, 2, seed=np.random.SeedSequence([1, 2]))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda: nn.Linear(2**30, 2**30),
         r"Linear: in_features=1073741824, out_features=1073741824 gives weight of "
         r"shape \(1073741824, 1073741824\), bias of shape \(1073741824,\) "
         r"\(4 EiB\), more than this machine's memory"),
        (lambda: nn.BatchNorm2d(2**45, affine=False),
         r"BatchNorm2d: num_features=35184372088832 gives running_mean of shape "
         r"\(35184372088832,\), running_var of shape \(35184372088832,\) \(256 TiB\)"),
    ],
)
def test_layers_larger_than_memory_fail_at_once(make, msg):
    from convolab._limits import TooLarge

    with pytest.raises(TooLarge, match=msg) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)


def test_size_check_uses_physical_memory(monkeypatch):
    import os

    from convolab import _limits

    monkeypatch.setattr(_limits, "_limit", lambda: 4096)  # a 4096-byte machine
    nn.Linear(32, 31)  # 32*31*4 + 31*4 = 4092 bytes: fits
    with pytest.raises(MemoryError, match=r"\(4.12 KiB\), more than this machine's memory"):
        nn.Linear(32, 32)
    with pytest.raises(MemoryError, match="4 KiB"):
        nn.BatchNorm1d(257)

    def unknown(key):
        raise ValueError(f"unrecognized configuration name {key}")

    monkeypatch.setattr(os, "sysconf", unknown)  # where the OS cannot say: no limit
    assert _limits.physical_memory.__wrapped__() == 2**63 - 1


def test_a_strict_load_failure_is_caught_as_torch_code_catches_it():
    m = nn.Linear(2, 2, seed=0)
    sd = m.state_dict()
    del sd["bias"]
    for cls in (RuntimeError, KeyError, ValueError):
        with pytest.raises(cls, match="missing keys \\['bias'\\]"):
            m.load_state_dict(sd)
    with pytest.raises(RuntimeError):
        torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2)})


def test_gelu_without_scipy_gives_the_same_values(monkeypatch):
    import sys

    x = np.random.default_rng(0).standard_normal((3, 5)) * 4
    with_scipy = nn.GELU()(x)
    monkeypatch.setitem(sys.modules, "scipy.special", None)  # a NumPy-only install
    layer = nn.GELU()
    y = layer(x)
    np.testing.assert_allclose(y, with_scipy, rtol=1e-15, atol=1e-300)
    ty = torch.nn.functional.gelu(torch.tensor(x))
    assert rel(y, t2n(ty)) <= TOL and layer(x.astype(np.float32)).dtype == np.float32
    assert layer(np.zeros((0, 2))).shape == (0, 2)


def test_gelu_without_scipy_takes_a_0d_input(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.special", None)
    y = nn.GELU()(np.array(0.5, np.float32))
    assert y.shape == () and y.dtype == np.float32
    assert np.isclose(y, torch.nn.functional.gelu(torch.tensor(0.5)).item())


def test_a_shape_mismatch_in_load_state_dict_is_a_runtime_error_too():
    m = nn.Linear(3, 2, seed=0)
    with pytest.raises(RuntimeError, match="weight has shape \\(2, 4\\), expected \\(2, 3\\)"):
        m.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(2)})
    with pytest.raises(RuntimeError):
        torch.nn.Linear(3, 2).load_state_dict({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)})


def _pool_geometry(rng):
    """A random max-pool geometry: rank, kernel, stride, dilation, padding, input size."""
    r = int(rng.integers(1, 4))
    k = tuple(int(v) for v in rng.integers(1, 4, r))
    s = tuple(int(v) for v in rng.integers(1, 4, r))
    d = tuple(int(v) for v in rng.integers(1, 3, r))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    return r, k, s, d, p, tuple(int(v) for v in rng.integers(4, 9, r))


def test_max_pool_returns_torchs_indices():
    """return_indices=True: (output, int64 flat positions within each input plane), as
    torch, on random geometries with ties, NaN and all -inf planes."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(80):
        r, k, s, d, p, size = _pool_geometry(rng)
        ceil = bool(rng.integers(0, 2))
        x = rng.integers(-3, 3, (2, 3) + size).astype(np.float64)
        x[0, 0].flat[0] = np.nan
        x[1, 1] = -np.inf
        try:
            y, idx = getattr(nn, f"MaxPool{r}d")(k, s, p, d, return_indices=True,
                                                 ceil_mode=ceil)(x)
        except ValueError:  # a geometry torch refuses too (checked elsewhere)
            continue
        ty, ti = getattr(torch.nn, f"MaxPool{r}d")(k, s, p, d, return_indices=True,
                                                   ceil_mode=ceil)(torch.tensor(x))
        np.testing.assert_array_equal(y, t2n(ty))
        np.testing.assert_array_equal(idx, ti.numpy())
        assert idx.dtype == np.int64
        checked += 1
    assert checked > 60
    layer = nn.MaxPool2d(2, return_indices=True)
    y, idx = layer(np.arange(16.0).reshape(1, 4, 4))  # unbatched
    np.testing.assert_array_equal(idx, [[[5, 7], [13, 15]]])
    assert layer.backward(np.ones_like(y)).shape == (1, 4, 4)


def test_max_unpool_inverts_max_pool_as_torch():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(60):
        r, k, s, _, p, size = _pool_geometry(rng)  # unpooling has no dilation
        x = rng.standard_normal((2, 3) + size)
        try:
            y, idx = getattr(nn, f"MaxPool{r}d")(k, s, p, return_indices=True)(x)
            layer = getattr(nn, f"MaxUnpool{r}d")(k, s, p)
            z = layer(y, idx, size if checked % 2 else None)
        except ValueError:  # a geometry (or output size) torch refuses too
            continue
        ty = torch.tensor(y, requires_grad=True)
        tz = getattr(torch.nn, f"MaxUnpool{r}d")(k, s, p)(
            ty, torch.tensor(idx), size if checked % 2 else None)
        g = rng.standard_normal(z.shape)
        tz.backward(torch.tensor(g))
        np.testing.assert_array_equal(z, t2n(tz))
        np.testing.assert_allclose(layer.backward(g), ty.grad.numpy(), rtol=1e-15)
        checked += 1
    assert checked > 30


def test_max_unpool_refuses_what_torch_refuses():
    layer = nn.MaxUnpool2d(2)
    y = np.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 16\)"):
        layer(y, np.full((1, 1, 2, 2), 16))
    with pytest.raises(ValueError, match="indices.shape=\\(1, 1, 2\\) must equal"):
        layer(y, np.zeros((1, 1, 2), int))
    with pytest.raises(TypeError, match="indices has dtype float64"):
        layer(y, np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="strictly between 2 and 6"):
        layer(y, np.zeros((1, 1, 2, 2), int), output_size=(6, 4))
    assert layer(y, np.zeros((1, 1, 2, 2), int), output_size=(1, 1, 5, 5)).shape == (1, 1, 5, 5)
    assert "MaxUnpool2d(kernel_size=(2, 2)" in repr(layer)
    empty = layer(np.zeros((0, 2, 2, 2)), np.zeros((0, 2, 2, 2), int))  # as torch
    assert empty.shape == (0, 2, 4, 4) and layer.backward(empty).shape == (0, 2, 2, 2)


def test_pooling_integer_inputs_as_torch():
    """Max pooling takes every integer width (torch: 2-D and 3-D), average pooling
    int64 (toward-zero division, as torch); neither has a backward, and bool is refused."""
    rng = np.random.default_rng(2)
    checked = 0
    for i in range(60):
        r, k, s, d, p, size = _pool_geometry(rng)
        dt = (np.uint8, np.int8, np.int16, np.int32, np.int64)[i % 5]
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, (2, 3) + size, dtype=dt, endpoint=True)
        x[0, 0].flat[0] = info.min  # padding is below every value, even the lowest
        try:
            y, idx = getattr(nn, f"MaxPool{r}d")(k, s, p, d, return_indices=True)(x)
        except ValueError:  # a geometry torch refuses too (checked elsewhere)
            continue
        ref = x.astype(np.float64) if r == 1 else x  # torch has no integer max_pool1d
        ty, ti = getattr(torch.nn, f"MaxPool{r}d")(k, s, p, d, return_indices=True)(
            torch.tensor(ref))
        assert y.dtype == dt
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(idx, ti.numpy())
        inc, ceil = bool(i % 2), bool(i % 3 == 0)
        xi = rng.integers(-50, 50, (2, 3) + size)
        try:
            ta = getattr(torch.nn, f"AvgPool{r}d")(k, s, p, ceil, inc)(torch.tensor(xi))
        except RuntimeError:
            continue
        ya = getattr(nn, f"AvgPool{r}d")(k, s, p, ceil, inc)(xi)
        assert ya.dtype == np.int64
        np.testing.assert_array_equal(ya, ta.numpy())
        checked += 1
    assert checked > 20
    ty = torch.nn.AvgPool2d(2, divisor_override=3)(torch.tensor([[[[-5, -2], [-4, 5]]]]))
    assert nn.AvgPool2d(2, divisor_override=3)(np.array([[[[-5, -2], [-4, 5]]]])) == ty.item()
    for layer in (nn.MaxPool2d(2), nn.AvgPool2d(2)):
        y = layer(np.ones((1, 2, 4, 4), np.int64))
        with pytest.raises(TypeError, match="only floating inputs have gradients"):
            layer.backward(np.ones(y.shape))
    with pytest.raises(TypeError, match="dtype bool, expected a floating or integer dtype"):
        nn.MaxPool1d(2)(np.ones((1, 4), bool))


def test_pooling_float16_sums_in_float32_as_torch():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, 20, 20)) * 10 + 100).astype(np.float16)
    for layer, tlayer in ((nn.AvgPool2d(5, 1, 2), torch.nn.AvgPool2d(5, 1, 2)),
                          (nn.AdaptiveAvgPool2d(3), torch.nn.AdaptiveAvgPool2d(3))):
        tx = torch.tensor(x, requires_grad=True)
        ty, y = tlayer(tx), layer(x)
        ref = tlayer(torch.tensor(x, dtype=torch.float64)).numpy()
        assert y.dtype == np.float16
        ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(y - ref) <= ulp)  # float16 sums were 5 ulps off
        g = rng.standard_normal(y.shape).astype(np.float16)
        tx64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        tlayer(tx64).backward(torch.tensor(g, dtype=torch.float64))
        ty.backward(torch.tensor(g))
        gx = layer.backward(g)
        assert gx.dtype == np.float16
        ref = tx64.grad.numpy()
        ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(gx - ref) <= ulp)  # torch's own float16 gradient: up to 4 ulps
        assert np.abs(gx - ref).max() <= np.abs(tx.grad.numpy() - ref).max()


@pytest.mark.parametrize("out", [0, (0, 2), (3, 0)])
def test_adaptive_avg_pool_to_an_empty_output_as_torch(out):
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 4))
    layer = nn.AdaptiveAvgPool2d(out)
    y = layer(x)
    assert y.shape == torch.nn.AdaptiveAvgPool2d(out)(torch.tensor(x)).shape
    # torch's backward refuses an empty output; its gradient is zero
    np.testing.assert_array_equal(layer.backward(np.ones(y.shape)), np.zeros(x.shape))
    with pytest.raises(ValueError, match="non-negative ints"):
        nn.AdaptiveAvgPool2d(-1)


def test_cross_entropy_class_weights_are_state_as_torch():
    w = np.array([0.5, 2.0, 1.0])
    loss, tloss = nn.CrossEntropyLoss(weight=w), torch.nn.CrossEntropyLoss(weight=torch.tensor(w))
    assert list(loss.state_dict()) == list(tloss.state_dict()) == ["weight"]
    assert list(nn.CrossEntropyLoss().state_dict()) == []
    loss.load_state_dict({"weight": np.array([1.0, 1.0, 3.0])})
    z, t = np.random.default_rng(0).standard_normal((4, 3)), np.array([0, 2, 2, 1])
    tloss.load_state_dict({"weight": torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)})
    assert np.isclose(loss(z, t), tloss(torch.tensor(z), torch.tensor(t)).item(), rtol=1e-14)
    seq = nn.Sequential(nn.Linear(2, 3, seed=0), nn.CrossEntropyLoss(weight=w))
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight"]


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"affine": False}, {"momentum": None}])
def test_batchnorm_repr_as_torch(kw):
    assert repr(nn.BatchNorm2d(3, **kw)) == repr(torch.nn.BatchNorm2d(3, **kw))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_relu_keeps_negative_zero_as_torch(dtype):
    """torch's relu returns -0.0 for -0.0 (x < 0 ? 0 : x); np.maximum's tie goes to one
    operand or the other by dtype, so the order is found once per dtype, and a NumPy
    where neither order is dependable copies the sign back.  NaN, inf and negatives as
    torch, in contiguous and strided inputs alike."""
    from unittest import mock

    import convolab.nn.layers as layers

    x = np.array([-0.0, 0.0, -1.0, np.nan, 2.0, -np.inf, np.inf, -3.5] * 9, dtype=dtype)
    want = torch.relu(torch.tensor(x)).numpy()
    for arr, ref in ((x, want), (x[::3], want[::3]), (x.reshape(8, 9).T, want.reshape(8, 9).T)):
        for order in ("found", None):
            with mock.patch.object(layers, "_relu_order",
                                   layers._relu_order if order else (lambda dt: None)):
                got = nn.ReLU()(arr)
            assert np.array_equal(np.signbit(got), np.signbit(ref)), (order, arr.strides)
            assert np.array_equal(got, ref, equal_nan=True)
