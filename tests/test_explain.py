"""convolab.explain: formulas agree with the real ops; RF, warnings, JSON and the CLI."""

import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convolab as cl
import convolab.nn  # noqa: F401  (cl.nn)
from convolab.options import options

ex = importlib.import_module("convolab.explain")


@st.composite
def conv_configs(draw):
    transposed = draw(st.booleans())
    rank = draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    s = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    d = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    g = draw(st.sampled_from([1, 2]))
    form = draw(st.sampled_from(["int", "pairs", "same"] if not transposed else ["int", "pairs"]))
    if form == "same":
        s = (1,) * rank
        pad = "same"
    elif form == "pairs":
        pad = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(rank))
    else:
        pad = draw(st.integers(0, 3))
    op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d)) if transposed \
        else 0
    eff = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    S = tuple(draw(st.integers(max(1, e - 2), e + 6)) for e in eff)
    return transposed, k, s, pad, d, g, op, S


def _real_shape(transposed, k, s, pad, d, g, op, S, C, K):
    x = np.zeros((2, C) + S)
    with options(algorithm="direct"):
        if transposed:
            w = np.zeros((C, K // g) + k)
            return cl.conv_transpose(x, w, None, s, pad, op, g, d).shape
        w = np.zeros((K, C // g) + k)
        return cl.conv(x, w, None, s, pad, d, g).shape


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_output_shape_and_formulas_match_the_ops(cfg):
    transposed, k, s, pad, d, g, op, S = cfg
    C, K = 2 * g, 3 * g
    name = ("conv_transpose" if transposed else "conv") + f"{len(k)}d"
    kw = dict(out_channels=K, kernel_size=k, stride=s, padding=pad, dilation=d, groups=g,
              output_padding=op)
    try:
        real = _real_shape(transposed, k, s, pad, d, g, op, S, C, K)
    except ValueError:
        with pytest.raises(ValueError):
            ex.explain(name, (2, C) + S, **kw)
        return
    e = ex.explain(name, (2, C) + S, **kw)
    assert e.output_shape == real
    for f, o in zip(e.formulas, real[2:]):
        lhs, *_, rhs = f.split(" = ")
        assert int(rhs) == o
        assert eval(lhs, {"floor": math.floor}) == o  # the numbers written out compute O
    assert e.to_dict()["padding"] == [list(p) for p in e.spec.padding]


def _idx_unfold(S, k, s, pads, d):
    x = (np.arange(math.prod(S), dtype=np.float64) + 1).reshape((1, 1) + S)
    return cl.unfold(x, k, d, [list(p) for p in pads], s)[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2),
       st.integers(0, 2), st.integers(0, 12))
def test_read_positions_match_unfold(k, s, d, lo, hi, extra):
    n = d * (k - 1) + 1 + extra - lo - hi
    if n < 1:
        return
    out = cl.spec.make_spec((k,), s, [(lo, hi)], d).conv_out_shape((n,))[0]
    used, reached = ex.read_positions(n, k, s, lo, d, out, transposed=False)
    cols = _idx_unfold((n,), (k,), s, [(lo, hi)], d)
    read = {int(v) - 1 for v in cols.ravel() if v > 0}
    assert set(np.flatnonzero(used)) == read
    assert list(reached) == list((cols > 0).any(axis=0))  # outputs that see some input


def _support(x_len, layers, o):
    """Input cells that output ``o`` of a 1-D stack depends on (gradient, positive weights)."""
    fns, x = [], np.ones((1, 1, x_len))
    for k, s, p, d, t in layers:
        w = np.ones((1, 1, k))
        if t:
            out, pb = cl.vjp(cl.conv_transpose1d, x, w, None, s, p, 0, 1, d)
        else:
            out, pb = cl.vjp(cl.conv1d, x, w, None, s, p, d)
        fns.append(pb)
        x = out
    g = np.zeros(x.shape)
    g[0, 0, o] = 1.0
    for pb in reversed(fns):
        g = pb(g)[0]
    return np.flatnonzero(np.abs(g[0, 0]) > 1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2),
                          st.integers(1, 2), st.just(False)), min_size=1, max_size=3))
def test_receptive_field_jump_start_match_gradient_support(layers):
    n = 80
    specs = [f"k={k},s={s},p={p},d={d}" for k, s, p, d, _ in layers]
    with options(algorithm="direct"):
        e = ex.explain("conv1d", (1, 1, n), layers=specs)
        out = e.output_shape[2]
        rf, jump, start = e.receptive_field[0], e.layers[-1].jump[0], e.layers[-1].start[0]
        for o in range(out):
            sup = _support(n, layers, o)
            centre = start + o * jump
            lo, hi = centre - (rf - 1) / 2, centre + (rf - 1) / 2
            if lo >= 0 and hi <= n - 1:  # away from the padding
                assert sup.min() >= lo and sup.max() <= hi
                assert (sup.min(), sup.max()) == (lo, hi)  # the extreme taps always count


def test_transposed_receptive_field_matches_gradient_support():
    layers = [(3, 2, 1, 1, False), (4, 2, 1, 1, True), (3, 1, 1, 1, False)]
    specs = ["k=3,s=2,p=1", "type=conv_transpose,k=4,s=2,p=1", "k=3,s=1,p=1"]
    with options(algorithm="direct"):
        e = ex.explain("conv1d", (1, 1, 40), layers=specs)
        rf, jump, start = e.receptive_field[0], e.layers[-1].jump[0], e.layers[-1].start[0]
        assert jump == 1
        widths = []
        for o in range(8, 30):
            sup = _support(40, layers, o)
            widths.append(sup.max() - sup.min() + 1)
            centre = start + o * jump
            assert centre - (rf - 1) / 2 <= sup.min() and sup.max() <= centre + (rf - 1) / 2
        assert max(widths) <= rf < max(widths) + 2


def test_numbers_of_the_issue_example():
    e = ex.explain("conv2d", "1x3x32x32", out_channels=16, kernel_size=3, stride=2, padding=1)
    d = e.to_dict()
    assert d["output_shape"] == [1, 16, 16, 16]
    assert d["padding"] == [[1, 1], [1, 1]]
    assert d["params"] == 16 * 3 * 9 + 16
    assert d["flops"]["forward"] == 2 * 1 * 16 * 16 * 16 * 3 * 9
    assert d["flops"]["input_grad"] == d["flops"]["weight_grad"] == d["flops"]["forward"]
    assert d["flops"]["forward_bias"] == 16 * 16 * 16
    assert d["receptive_field"] == [3, 3] and d["jump"] == [2, 2] and d["start"] == [0, 0]
    for role in ("forward", "input_grad", "weight_grad"):
        assert {"name", "reason"} <= set(d["algorithm"][role])
    assert d["bytes"]["input"] == 3 * 32 * 32 * 4
    json.dumps(d)
    text = str(e)
    assert "floor((32 + 1 + 1 - 1*(3 - 1) - 1) / 2) + 1 = floor(31 / 2) + 1 = 16" in text


def test_transposed_flops_and_weight_shape():
    e = ex.explain("conv_transpose2d", (2, 4, 5, 5), out_channels=6, kernel_size=3,
                   stride=2, groups=2)
    assert e.weight_shape == (4, 3, 3, 3)
    assert e.flops["forward"] == 2 * 2 * 4 * 25 * 3 * 9
    assert e.output_shape == (2, 6, 11, 11)


def test_warnings():
    odd = ex.explain("conv2d", (1, 1, 6, 6), kernel_size=3, stride=2, padding=1)
    assert any("never read" in n and "padding_strides_odd" in n for n in odd.notes)
    unread = ex.explain("conv1d", (1, 1, 6), kernel_size=3, stride=2)
    assert any("input positions 5 (1 of 6)" in w for w in unread.warnings)
    gaps = ex.explain("conv1d", (1, 1, 10), kernel_size=1, stride=3)
    assert any("1-2, 4-5, 7-8" in w for w in gaps.warnings)
    same = ex.explain("conv1d", (1, 1, 10), kernel_size=4, padding="same")
    assert same.spec.padding == ((1, 2),)
    assert any("'same'" in w and "(1, 2)" in w for w in same.warnings)
    assert not ex.explain("conv1d", (1, 1, 10), kernel_size=3, padding="same").warnings
    t = ex.explain("conv_transpose1d", (1, 1, 3), kernel_size=3, stride=2, padding=1,
                   output_padding=1)
    assert t.output_shape[2] == 6
    assert any("output_padding=1" in w and "5..6" in w for w in t.warnings)
    holes = ex.explain("conv_transpose1d", (1, 1, 5), kernel_size=1, stride=2)
    assert any("receive no input contribution" in w for w in holes.warnings)


@pytest.mark.parametrize("s", [1, 2])
def test_output_padding_past_the_stride_is_not_said_to_pick_a_matching_size(s):
    # output_padding=2 >= stride is allowed by the dilation 3: no conv of the output gives
    # the input's 4 positions back (it was said to "pick" 15 among 13..14)
    t = ex.explain("conv_transpose1d", (1, 1, 4), kernel_size=3, stride=s, dilation=3,
                   output_padding=2)
    out = t.output_shape[2]
    assert not any("picks" in w for w in t.warnings + t.notes)
    (w,) = [w for w in t.warnings if "not below the stride" in w]
    conv_out = cl.conv1d(np.zeros((1, 1, out)), np.zeros((1, 1, 3)), stride=s,
                         dilation=3).shape[2]
    assert f"the output, {out}," in w and f"gives {conv_out} outputs" in w
    assert conv_out > 4 and "first 4" in w


def test_errors_name_the_rule():
    with pytest.raises(ValueError, match="output would be empty"):
        ex.explain("conv2d", (1, 1, 3, 3), kernel_size=5)
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        ex.explain("conv2d", (1, 3, 8, 8), kernel_size=3, groups=2, out_channels=4)
    with pytest.raises(ValueError, match="op="):
        ex.explain("conv4d", (1, 1, 3), kernel_size=1)
    with pytest.raises(ValueError, match="padding_mode"):
        ex.explain("conv_transpose1d", (1, 1, 3), kernel_size=1, padding_mode="reflect")


def test_shapes_or_numbers_in_place_of_layers_are_type_errors():
    """explain(x_shape, w_shape) used to run as a 'stack' of four int layers."""
    with pytest.raises(TypeError, match=r"op=\(16, 256, 28, 28\) looks like a shape"):
        ex.explain((16, 256, 28, 28), (256, 8, 3, 3))
    with pytest.raises(TypeError, match=r"an array of shape \(2, 3\)"):
        ex.explain(np.zeros((2, 3)), (1, 3, 8, 8))
    with pytest.raises(TypeError, match="layer 1 is None"):
        ex.explain(["k=3", None], (1, 3, 8, 8))


class _FakeSequential:
    """Duck type: modules in ``_modules``, not iterable."""

    def __init__(self, *mods):
        self._modules = {str(i): m for i, m in enumerate(mods)}


def test_stack_of_layers_and_sequential():
    layers = [cl.nn.Conv2d(3, 8, 3, stride=2, padding=1, seed=0), cl.nn.ReLU(),
              cl.nn.Conv2d(8, 8, 3, padding=2, dilation=2, seed=0),
              cl.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, seed=0)]
    seqs = [layers, _FakeSequential(*layers)]
    Seq = getattr(cl.nn, "Sequential", None)
    if Seq is not None:
        seqs.append(Seq(*layers))
    x = np.zeros((1, 3, 16, 16), np.float32)
    with options(algorithm="direct"):
        y = x
        for m in layers:
            y = m(y)
    for model in seqs:
        e = ex.explain(model, x.shape)
        assert e.output_shape == y.shape
        assert [lay.kind for lay in e.layers] == ["conv", "other", "conv", "conv"]
        assert e.params == sum(m.num_parameters() for m in layers if hasattr(m, "weight"))
        d = e.to_dict()
        assert {"output_shape", "padding", "flops", "params", "receptive_field",
                "algorithm"} <= set(d)
        assert d["receptive_field"] == [1 + 2 + 8 + 1.5 * 2] * 2  # k_eff-1=3 over s=2
        assert "stack of 4 layers" in str(e)


def test_cnn_with_pooling_flatten_linear():
    nn = cl.nn
    model = nn.Sequential(nn.Conv1d(1, 4, 5, padding=2, seed=0), nn.ReLU(), nn.MaxPool1d(2),
                          nn.Conv1d(4, 8, 3, seed=0), nn.Flatten(), nn.Linear(8 * 30, 10, seed=0))
    x = np.zeros((2, 1, 64), np.float32)
    with options(algorithm="direct"):
        y = model(x)
    e = ex.explain(model, x.shape)
    assert e.output_shape == y.shape
    assert e.params == model.num_parameters()
    # conv k5 (rf 5), pool k2 s2 (rf 6, jump 2), conv k3 (rf 6 + 2*2 = 10)
    assert e.to_dict()["receptive_field"] == [10] and e.to_dict()["jump"] == [2]


def test_parse_layer_syntax():
    c = ex.parse_layer("k=3x5,s=2,p=0:1x1:1,d=1,g=2,c=8,mode=reflect,bias=0")
    assert c.kernel_size == (3, 5) and c.padding == ((0, 1), (1, 1)) and c.groups == 2
    assert c.out_channels == 8 and c.padding_mode == "reflect" and c.bias is False
    t = ex.parse_layer("type=conv_transpose,k=4,s=2,p=1,opad=1")
    assert t.transposed and t.output_padding == 1
    with pytest.raises(ValueError, match="known key"):
        ex.parse_layer("q=3")


def test_cli_in_process(capsys):
    argv = ["conv2d", "--input", "1x3x32x32", "--out-channels", "16", "--kernel-size", "3",
            "--stride", "2", "--padding", "1", "--json"]
    assert ex.main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["output_shape"] == [1, 16, 16, 16]
    assert ex.main(["conv1d", "--input", "1x1x64", "--layer", "k=3,s=2,p=1",
                    "--layer", "k=3,d=2,p=same", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["output_shape"] == [1, 1, 32] and len(d["layers"]) == 2
    assert ex.main(["conv_transpose2d", "--input", "1x2x3x3", "--kernel-size", "3",
                    "--stride", "2", "--padding", "0:1x1:1", "--output-padding", "1"]) == 0
    assert "output_padding=1" in capsys.readouterr().out
    assert ex.main(["conv2d", "--input", "1x1x3x3", "--kernel-size", "5"]) == 2
    assert "output would be empty" in capsys.readouterr().err


def test_cli_subprocess():
    r = subprocess.run(
        [sys.executable, "-m", "convolab", "explain", "conv2d", "--input", "1x1x6x6",
         "--kernel-size", "3", "--stride", "2", "--padding", "1"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "floor(5 / 2) + 1 = 3" in r.stdout


def test_explain_says_when_the_backward_is_fused():
    d = ex.explain("conv2d", "16x256x28x28", kernel_size=3, padding=1, groups=256).to_dict()
    assert d["algorithm"]["backward"]["name"] == "fused"
    assert 0 < d["bytes"]["workspace"]["backward"] <= 512 * 2**20
    d = ex.explain("conv2d", "16x64x56x56", kernel_size=3, padding=1).to_dict()
    assert d["algorithm"]["backward"]["name"] == "separate"
    d = ex.explain("conv_transpose2d", "16x128x14x14", out_channels=64, kernel_size=4,
                   stride=2, padding=1).to_dict()
    assert d["algorithm"]["backward"]["name"] == "fused"
    assert d["bytes"]["workspace"]["backward"] == d["bytes"]["workspace"]["weight_grad"]


def test_model_explanation_follows_ceil_mode_nested_stacks_and_in_channels():
    from convolab import nn

    pools = ((nn.MaxPool2d(2, ceil_mode=True), 9), (nn.AvgPool2d(3, 2, 1, ceil_mode=True), 10))
    for pool, n in pools:
        m = nn.Sequential(nn.Conv2d(1, 4, 3, seed=0), pool)
        e = cl.explain(m, (1, 1, n, n))
        assert e.output_shape == m(np.zeros((1, 1, n, n), np.float32)).shape
        assert "ceil(" in e.layers[1].formulas[0] and "ceil_mode=True" in e.layers[1].formula
    for stride in ([], ()):  # torch's empty stride: the kernel size, also in explain
        m = nn.Sequential(nn.Conv2d(1, 4, 3, seed=0), nn.MaxPool2d([2, 2], stride))
        assert cl.explain(m, (1, 1, 10, 10)).output_shape == (1, 4, 4, 4)
    inner = nn.Sequential(nn.Conv1d(1, 2, 3, seed=0), nn.ReLU())
    m = nn.Sequential(inner, nn.Conv1d(2, 2, 3, stride=2, seed=0))
    e = cl.explain(m, (1, 1, 12))
    assert e.output_shape == m(np.zeros((1, 1, 12), np.float32)).shape
    assert e.params == m.num_parameters() and len(e.layers) == 3
    with pytest.raises(ValueError, match="has 4 channels but the layer's in_channels=3"):
        cl.explain(nn.Conv2d(3, 8, 3, seed=0), (1, 4, 16, 16))


def test_explain_refuses_what_the_ops_refuse_and_counts_linear():
    from convolab import nn

    for shape, kw, msg in [
        ((1, 0, 8, 8), {}, "channels and spatial sizes >= 1"),
        ((1, 3, 0, 8), dict(padding=2), "channels and spatial sizes >= 1"),
        ((-2, 3, 8, 8), {}, "batch must be >= 0"),
        ((1, 3, 8, 8), dict(out_channels=0), "out_channels=0 must be positive"),
    ]:
        with pytest.raises(ValueError, match=msg):
            cl.explain("conv2d", shape, kernel_size=3, **kw)
    with pytest.raises(TypeError, match="dtype=int32 is not supported"):
        cl.explain("conv2d", (1, 3, 8, 8), kernel_size=3, dtype="int32")
    pool = cl.explain("conv2d", (1, 3, 8, 8), layers=["k=2,type=pool"])
    assert pool.output_shape == (1, 3, 4, 4)  # a pool's stride defaults to its kernel
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    e = cl.explain(m, (2, 3, 4))
    assert e.flops["forward"] == 2 * 2 * 12 * 5 and e.flops["forward_bias"] == 2 * 5


def test_layers_without_a_rule_are_run_for_their_shape_and_end_the_field():
    """Upsample, ZeroPad2d, PixelShuffle, Unflatten, a block of one's own: explain used to
    call them shape-keeping; it now runs a copy on zeros (state untouched) and stops the
    receptive field there, and torch's parameters are counted."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(0)

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.bn = tnn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(self.conv(x))

    for middle in (tnn.Upsample(scale_factor=2), tnn.ZeroPad2d(2), tnn.PixelShuffle(2),
                   tnn.Unflatten(1, (2, 2)), Block()):
        model = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), middle)
        if not isinstance(middle, tnn.Unflatten):
            model.append(tnn.Conv2d(model(torch.zeros(1, 3, 8, 8)).shape[1], 2, 3, padding=1))
        with torch.no_grad():
            want = tuple(model.eval()(torch.zeros(2, 3, 8, 8)).shape)
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        e = ex.explain(model, (2, 3, 8, 8))
        assert e.output_shape == want, middle
        assert e.params == sum(p.numel() for p in model.parameters())
        assert e.layers[0].receptive_field and not e.layers[-1].receptive_field
        assert e.to_dict()["receptive_field_layer"] == 0
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert model.training
    e = ex.explain(tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.AdaptiveAvgPool2d(1),
                                  tnn.Flatten(), tnn.Linear(4, 10)), (1, 3, 8, 8))
    assert e.output_shape == (1, 10) and e.params == 3 * 4 * 9 + 4 + 50
    with pytest.raises(ValueError, match="in_features=5"):
        ex.explain([tnn.Conv2d(3, 4, 3), tnn.Flatten(), tnn.Linear(5, 10)], (1, 3, 3, 3))


def test_the_receptive_field_is_not_restarted_after_an_adaptive_pool():
    nn = cl.nn
    model = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, seed=0), nn.AdaptiveAvgPool1d(8),
                          nn.Conv1d(2, 2, 3, padding=1, seed=0))
    e = ex.explain(model, (1, 1, 64))
    assert [len(lay.receptive_field) for lay in e.layers] == [1, 0, 0]
    d = e.to_dict()
    assert d["receptive_field"] == [3] and d["receptive_field_layer"] == 0
    assert any("not tracked" in n for n in e.layers[2].notes)


def test_models_that_are_not_sequential_are_checked_by_running_them():
    nn = cl.nn

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1, seed=0)
            self.b = nn.ReLU()

        def forward(self, x):
            return self.b(self.a(x))

    class Residual(Plain):
        def forward(self, x):
            y = self.b(self.a(x))
            return np.concatenate([y, y], axis=1)

    e = ex.explain(Plain(), (2, 3, 16, 16))
    assert e.output_shape == (2, 8, 8, 8) and "registered" in str(e)
    with pytest.raises(ValueError, match=r"gives \(2, 16, 8, 8\)"):
        ex.explain(Residual(), (2, 3, 16, 16))
    inner = ex.explain(nn.Sequential(Residual(), nn.Conv2d(16, 4, 1, seed=0)), (2, 3, 16, 16))
    assert inner.output_shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="running a copy of it on zeros"):
        ex.explain([nn.Conv2d(3, 4, 3, seed=0), lambda x: x[0, 0, 0, 0, 0]], (1, 3, 8, 8))


def _traced(orig, tag, ran, depth):
    def traced(*a, **k):
        if depth[0] == 0:
            ran.append(tag)
        depth[0] += 1
        try:
            return orig(*a, **k)
        finally:
            depth[0] -= 1
    return traced


def test_explain_names_the_algorithms_that_actually_run(monkeypatch):
    """padding_mode other than zeros (the layer pads first) and strides that never step
    (the op makes them small) change the convolution that runs: explain asks about that
    one.  Every algorithm's entry points are traced while the layer runs."""
    from convolab import algorithms

    ran = []
    depth = [0]
    for name in ("direct", "gemm", "winograd", "fft", "depthwise", "polyphase", "fused"):
        mod = importlib.import_module(f"convolab.algorithms.{name}")
        assert getattr(algorithms, name) is mod
        for fn in ("forward", "input_grad", "weight_grad", "backward",
                   "forward_and_weight_grad"):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, _traced(getattr(mod, fn), (name, fn), ran, depth))
    cases = [  # (layer, input shape)
        (cl.nn.Conv2d(16, 8, 1, padding=2, dilation=(2, 1), padding_mode="replicate",
                      seed=0), (2, 16, 20, 12)),
        (cl.nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect", seed=0), (4, 16, 32, 32)),
        (cl.nn.Conv1d(4, 4, 3, stride=4, seed=0), (2, 4, 3)),
        (cl.nn.Conv1d(4, 4, 1, stride=2, seed=0), (2, 4, 1)),
        (cl.nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, seed=0), (2, 16, 1, 1)),
    ]
    for layer, shape in cases:
        e = ex.explain(layer, shape).layers[0]
        a = {role: v["name"] for role, v in e.algorithm.items()}
        ran.clear()
        y = layer(np.ones(shape, np.float32))
        layer.backward(np.ones_like(y))
        tr = e.spec.transposed
        fwd = [(a["forward"], "input_grad" if tr else "forward")]
        if a["backward"] == "fused":
            bwd = [("fused", "forward_and_weight_grad" if tr else "backward")]
        else:
            bwd = [(a["input_grad"], "forward" if tr else "input_grad"),
                   (a["weight_grad"], "weight_grad")]
        assert ran == fwd + bwd, (layer, ran, fwd + bwd)


def test_pooling_layer_specs_and_totals():
    with pytest.raises(ValueError, match="keeps the channels and takes no out_channels=7"):
        ex.explain("conv2d", (1, 3, 32, 32), layers=["type=pool,k=2,c=7"])
    with pytest.raises(ValueError, match="at most half the kernel_size"):
        ex.explain("conv2d", (1, 3, 32, 32), layers=["type=pool,k=2,p=2"])
    with pytest.raises(ValueError, match="one int padding per dimension"):
        ex.explain("conv2d", (1, 3, 32, 32), layers=["type=pool,k=3,p=same"])
    e = ex.explain("conv2d", (1, 3, 32, 32), layers=["k=3,p=1,c=8", "type=pool,k=2"])
    parts = e.layers[0].flops["total"] + e.layers[1].flops["forward"]
    assert e.flops["total"] == parts and e.layers[1].flops["forward"] == 8 * 16 * 16 * 4


def test_layer_spec_and_cli_refuse_what_they_cannot_mean(capsys):
    with pytest.raises(ValueError, match="bias='maybe' must be one of"):
        ex.parse_layer("k=3,bias=maybe")
    with pytest.raises(ValueError, match="only transposed convolutions take an output_padding"):
        ex.explain("conv2d", (1, 3, 8, 8), layers=["k=3,opad=1"])
    with pytest.raises(ValueError, match="op is 1-D"):
        ex.explain("conv2d", (1, 3, 8, 8), layers=["type=conv1d,k=3"])
    assert ex.main(["conv2d", "--input", "1x3x8x8", "--kernel-size", "3",
                    "--output-padding", "1"]) == 2
    assert ex.main(["conv2d", "--input", "1x3x8x8", "--kernel-size", "3",
                    "--padding", "foo"]) == 2
    err = capsys.readouterr().err
    assert "only transposed" in err and "same, valid, causal" in err


def test_cli_into_a_closed_pipe_is_quiet():
    # some 200 KiB of text: more than a pipe holds, so the write meets the closed pipe
    cmd = (f"{sys.executable} -m convolab explain conv2d --input 1x3x64x64 "
           + " ".join(["--layer k=1"] * 200) + " | head -1")
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("stack of 200 layers"), out
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr


def test_containers_that_cannot_run_are_read_in_order():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    layers = tnn.ModuleList([tnn.Conv2d(3, 8, 3), tnn.ReLU(), tnn.Conv2d(8, 8, 3)])
    e = ex.explain(layers, (1, 3, 16, 16))
    assert e.output_shape == (1, 8, 12, 12) and any("not checked" in n for n in e.notes)

    class MySequential(tnn.Sequential):
        pass

    e = ex.explain(MySequential(tnn.Conv2d(3, 8, 3), tnn.ReLU()), (1, 3, 16, 16))
    assert e.output_shape == (1, 8, 14, 14) and not e.notes


def test_stack_dicts_take_the_spec_keys_and_defaults():
    """A dict layer reads like a spec string: short or long keys, the same defaults (a
    pool's stride is its kernel size; a dict with 'kind' used to give stride 1)."""
    forms = ["k=2,type=pool", {"k": 2, "type": "pool"}, {"kernel_size": 2, "type": "pool"},
             {"kernel_size": 2, "kind": "pool"}, {"k": "2", "type": "pool"}]
    for form in forms:
        e = cl.explain("conv1d", (1, 1, 8), layers=[form])
        assert e.to_dict()["output_shape"] == [1, 1, 4], form
    for flags in ({"bias": 0}, {"bias": np.int64(1)}, {"ceil_mode": 0, "type": "pool"}):
        e = cl.explain("conv1d", (1, 1, 8), layers=[{"k": 2, **flags}])
        assert e.to_dict()["output_shape"][-1] in (4, 7), flags  # ints 0 / 1 as flags
    with pytest.raises(ValueError, match="type=.* must be conv"):
        cl.explain("conv1d", (1, 1, 8), layers=[{"k": 2, "type": ["pool"]}])
    e = cl.explain("conv_transpose1d", (1, 1, 8), layers=[{"k": 4, "s": 2, "p": 1}])
    assert e.to_dict()["output_shape"] == [1, 1, 16]  # the op's default: transposed
    for bad, msg in [({"k": 3, "q": 1}, "'q' is not a known key"),
                     ({"k": 3, "c": 2.5}, "out_channels=2.5 must be an int"),
                     ({"k": 3, "bias": "maybe"}, "bias='maybe' must be one of"),
                     ({"k": 3, "kind": "other"}, "kind='other' must be conv or pool"),
                     ({"s": 2}, "needs a kernel size")]:
        with pytest.raises(ValueError, match=msg):
            cl.explain("conv1d", (1, 1, 8), layers=[bad])


def test_stack_notes_gather_every_layers_notes():
    d = cl.explain("conv1d", (1, 4, 16), layers=["k=3,s=2,p=1", "k=3,p=1,mode=circular"]
                   ).to_dict()
    layer_notes = [f"layer {i}: {n}" for i, lay in enumerate(d["layers"]) for n in lay["notes"]]
    assert layer_notes and all(n in d["notes"] for n in layer_notes)
    assert any(n.startswith("layer 1: padding_mode='circular'") for n in d["notes"])


def _quick(fn, seconds=5.0):
    """``fn()``, which must return (or raise) within ``seconds``."""
    import time

    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        assert time.perf_counter() - t0 < seconds


@pytest.mark.parametrize("op, shape, kw, match", [
    ("conv2d", (1, 1, 2**40, 8), dict(kernel_size=3), r"input_shape=\(1, 1, 1099511627776"),
    ("conv2d", "9" * 40 + "x3x8x8", dict(kernel_size=3), r"input_shape=\(9999"),
    ("conv2d", (1, 1, 8, 8), dict(kernel_size=3, padding=2**31), "padding=2147483648"),
    ("conv_transpose2d", (1, 1, 8, 8), dict(kernel_size=2**31), "kernel_size=2147483648"),
    ("conv_transpose2d", (1, 1, 8, 8), dict(kernel_size=3, stride=2**31), "stride=2147483648"),
    ("conv2d", (1, 2**20, 8, 8), dict(kernel_size=(1, 2**12), padding=(0, 2**11),
                                      out_channels=2**20), r"the weight shape"),
])
def test_huge_sizes_are_refused_at_once_naming_the_argument(op, shape, kw, match):
    """They allocated a bool array per position (1 TiB: MemoryError) or looped over every
    kernel tap / the cost model's tiles for minutes."""
    with pytest.raises(ValueError, match=match) as info:
        _quick(lambda: ex.explain(op, shape, **kw))
    assert "MAX_ELEMENTS=2**40" in str(info.value)


def test_big_layers_are_explained_quickly_by_arithmetic():
    e = _quick(lambda: ex.explain("conv2d", (1, 3, 4096, 4096), out_channels=16,
                                  kernel_size=3, stride=2))
    assert e.output_shape == (1, 16, 2047, 2047)
    assert e.algorithm["forward"]["name"] != "unknown"  # convolab.select was asked
    assert any("4095 (1 of 4096)" in w for w in e.warnings)
    # past MAX_CHOOSE_ELEMENTS and MAX_POSITIONS: the arithmetic, the tail, notes
    e = _quick(lambda: ex.explain("conv2d", (1, 3, 2**31, 8), kernel_size=3, stride=2))
    assert e.output_shape == (1, 3, 2**30 - 1, 3)
    assert e.flops["forward"] == 2 * 3 * (2**30 - 1) * 3 * 3 * 9
    assert e.bytes["input"] == 3 * 2**31 * 8 * 4
    assert {a["name"] for a in e.algorithm.values()} == {"unknown"}
    assert set(e.bytes["workspace"].values()) == {None}
    assert any("MAX_CHOOSE_ELEMENTS=2**32" in n for n in e.notes)
    assert any(w.startswith("H: input positions 2147483647 (1 of 2147483648)")
               for w in e.warnings)
    assert any(w.startswith("W: input positions 7 (1 of 8)") for w in e.warnings)
    str(e), e.to_json()
    e = _quick(lambda: ex.explain("conv1d", (1, 1, 2**21), kernel_size=3, stride=5))
    assert any("L: input positions left between the windows" in n and "2**20" in n
               for n in e.notes)  # gaps are possible there, but not looked for
    e = _quick(lambda: ex.explain("conv_transpose1d", (1, 1, 2**21), kernel_size=3,
                                  stride=2))
    assert e.output_shape == (1, 1, 2**22 + 1)
    assert any("output positions that receive no input" in n for n in e.notes)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 20))
def test_the_tail_past_the_last_window_is_the_same_without_per_position_arrays(
        k, s, lo, hi, extra):
    """Past MAX_POSITIONS the cells after the last window come from arithmetic: the same
    warning as position by position, where stride and dilation leave no gaps."""
    s = min(s, k)
    n = k + extra - lo - hi
    if n < 1:
        return
    kw = dict(kernel_size=k, stride=s, padding=[(lo, hi)])
    full = ex.explain("conv1d", (1, 1, n), **kw)
    old = ex.MAX_POSITIONS
    try:
        ex.MAX_POSITIONS = 0
        arith = ex.explain("conv1d", (1, 1, n), **kw)
    finally:
        ex.MAX_POSITIONS = old
    assert arith.warnings == full.warnings
    assert arith.output_shape == full.output_shape


def test_read_positions_does_not_walk_every_tap():
    used, reached = _quick(lambda: ex.read_positions(8, 2**30, 2**30, 2**30, 1, 2, False))
    assert used.all() and list(reached) == [False, True]
    used, reached = _quick(lambda: ex.read_positions(3, 2**30, 1, 2**30 - 1, 1, 3, True))
    assert used.all() and reached.all()


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "a", [], 2.5, True, None])
def test_out_channels_must_be_an_int(bad):
    if bad is None:  # None: the input's channels
        assert ex.explain("conv2d", (1, 3, 8, 8), kernel_size=3).output_shape[1] == 3
        return
    with pytest.raises(TypeError, match=r"out_channels=.* must be an int"):
        ex.explain("conv2d", (1, 3, 8, 8), kernel_size=3, out_channels=bad)


def test_explain_says_which_roles_run_gemm_as_plain_im2col():
    """A small layer's GEMM roles run without tiles (gemm.LANE_BYTES): explain says
    which; a large layer's run in tiles, and a 1x1 layer's are plain products anyway."""
    small = ex.explain("conv2d", (1, 3, 16, 16), out_channels=8, kernel_size=3, padding=1)
    note = [n for n in small.notes if "plain im2col" in n]
    assert len(note) == 1 and "forward" in note[0] and "weight_grad" in note[0]
    for shape, k in [((16, 64, 56, 56), 3), ((1, 3, 16, 16), 1)]:
        big = ex.explain("conv2d", shape, out_channels=64, kernel_size=k, padding=k // 2)
        assert not [n for n in big.notes if "plain im2col" in n]


def test_input_shape_entries_must_be_ints():
    for bad in [(1, 3, 8.5, 8), (1, 3, "8", 8), (1, True, 8, 8)]:
        with pytest.raises(TypeError, match=r"input_shape=.* must be a tuple of ints"):
            ex.explain("conv2d", bad, kernel_size=3)
    assert ex.explain("conv2d", np.array([1, 3, 8, 8]), kernel_size=3).output_shape == (
        1, 3, 6, 6)
    # the data instead of its shape: a short message that says what to pass, not a repr
    # of every value
    x = np.zeros((8, 3, 32, 32), np.float32)
    for bad in (x, x.tolist()):
        with pytest.raises(TypeError, match=r"input_shape=.* must be a tuple of ints") as info:
            ex.explain("conv2d", bad, kernel_size=3)
        assert len(str(info.value)) < 300
    with pytest.raises(TypeError, match=r"an array of shape \(8, 3, 32, 32\) \(float32\).*"
                                        r"\.shape"):
        ex.explain("conv2d", x, kernel_size=3)


def test_a_layer_without_a_rule_is_not_run_on_huge_zeros(monkeypatch):
    class Twice:  # no rule: explain runs a copy of it to learn its output shape
        def __call__(self, x):
            return np.concatenate([x, x], axis=-1)

    assert ex.explain([Twice()], (2, 3, 8, 8)).output_shape == (2, 3, 8, 16)
    monkeypatch.setattr(ex, "MAX_PROBE_ELEMENTS", 100)
    with pytest.raises(ValueError, match=r"Twice.*\(1, 3, 8, 8\).*MAX_PROBE_ELEMENTS=100"):
        ex.explain([Twice()], (2, 3, 8, 8))


def test_a_transposed_convolutions_padding_is_said_to_crop():
    # a transposed convolution pads nothing: its padding crops the full output
    t = str(ex.explain("conv_transpose1d", (1, 1, 4), kernel_size=3, stride=2, padding=1))
    assert "padding (lo, hi), cropped from the full output: L: (1, 1)" in t
    assert "padding applied" not in t
    c = str(ex.explain("conv1d", (1, 1, 4), kernel_size=3, padding=1))
    assert "padding applied (lo, hi): L: (1, 1)" in c


@pytest.mark.small_calls_serial
def test_explain_says_a_small_call_runs_in_the_calling_thread():
    """explain chooses as the call runs: a small call on one worker (its choices and
    workspace those of workers=1), whatever the worker count in force."""
    args = ("conv2d", (8, 16, 14, 14))
    kw = dict(out_channels=8, kernel_size=3, padding=1)
    with cl.options(workers=2):
        e = cl.explain(*args, **kw)
        big = cl.explain("conv2d", (16, 64, 56, 56), out_channels=64, kernel_size=3)
    with cl.options(workers=1):
        one = cl.explain(*args, **kw)
    assert any("runs in the calling thread" in n for n in e.notes)
    assert not any("calling thread" in n for n in big.notes + one.notes)
    assert e.bytes["workspace"] == one.bytes["workspace"]
    assert e.algorithm == one.algorithm


def test_a_strided_forward_through_space_to_depth_is_said_so():
    """polyphase's strided forward (few output channels) gets a note naming the stride-1
    layer it runs: its channels, its kernel and that layer's algorithm; the transposed
    layer's input gradient too, which is such a forward."""
    e = cl.explain("conv2d", (2, 256, 64, 64), out_channels=8, kernel_size=7, stride=2)
    assert e.algorithm["forward"]["name"] == "polyphase"
    note = [n for n in e.notes if "space to depth" in n]
    assert len(note) == 1 and "forward" in note[0] and "1024" in note[0] and "4x4" in note[0]
    t = cl.explain("conv_transpose2d", (2, 8, 29, 29), out_channels=256, kernel_size=7,
                   stride=2)
    assert any("input_grad" in n and "space to depth" in n for n in t.notes)
    wide = cl.explain("conv2d", (2, 256, 64, 64), out_channels=64, kernel_size=7, stride=2)
    assert not any("space to depth" in n for n in wide.notes)
