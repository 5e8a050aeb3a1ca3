"""The conv layer classes against torch.nn with copied weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from convolab import nn

torch = pytest.importorskip("torch")

from .strategies import rel_err  # noqa: E402


def _torch_layer(name, *args, **kwargs):
    return getattr(torch.nn, name)(*args, dtype=torch.float64, **kwargs)


def _copy(src_cl, dst_torch):
    dst_torch.load_state_dict({k: torch.from_numpy(v) for k, v in src_cl.state_dict().items()})


def _run_both(layer, tlayer, x, **fwd):
    rng = np.random.default_rng(7)
    y = layer(x, **fwd)
    tx = torch.tensor(x, requires_grad=True)
    ty = tlayer(tx, **fwd)
    assert y.shape == tuple(ty.shape)
    assert rel_err(y, ty.detach().numpy()) < 1e-12
    g = rng.standard_normal(y.shape)
    gx = layer.backward(g)
    ty.backward(torch.tensor(g))
    assert rel_err(gx, tx.grad.numpy()) < 1e-12
    for name, p in tlayer.named_parameters():
        assert rel_err(getattr(layer, name).grad, p.grad.numpy()) < 1e-12, name


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("padding", [1, "same", "valid"])
def test_conv_layers_every_padding_mode(mode, rank, padding):
    name = f"Conv{rank}d"
    kw = dict(
        stride=1,
        padding=padding,
        dilation=(2,) * rank if padding == "same" else 1,
        groups=2,
        padding_mode=mode,
    )
    layer = getattr(nn, name)(4, 6, 3, dtype=np.float64, seed=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tlayer = _torch_layer(name, 4, 6, 3, **kw)
    _copy(layer, tlayer)
    x = np.random.default_rng(1).standard_normal((2, 4) + (7, 6, 5)[:rank])
    _run_both(layer, tlayer, x)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_transpose_layers(rank):
    name = f"ConvTranspose{rank}d"
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1, bias=True)
    layer = getattr(nn, name)(4, 6, 3, dtype=np.float64, seed=0, **kw)
    tlayer = _torch_layer(name, 4, 6, 3, **kw)
    _copy(layer, tlayer)
    x = np.random.default_rng(1).standard_normal((2, 4) + (4, 3, 3)[:rank])
    _run_both(layer, tlayer, x)


def test_conv_transpose_output_size_argument():
    layer = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=np.float64, seed=0)
    tlayer = _torch_layer("ConvTranspose2d", 3, 2, 3, stride=2, padding=1)
    _copy(layer, tlayer)
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4))
    _run_both(layer, tlayer, x, output_size=(8, 7))
    with pytest.raises(ValueError, match="output_size=.* is not reachable"):
        layer(x, output_size=(10, 10))


def test_module_db_samples():
    """torch's own constructor and forward samples for its conv modules."""
    cm = pytest.importorskip("torch.testing._internal.common_modules")
    count = 0
    for info in cm.module_db:
        name = info.module_cls.__name__
        if "Conv" not in name or name.startswith("Lazy") or not hasattr(nn, name):
            continue
        for mi in info.module_inputs_func(
            info, device="cpu", dtype=torch.float64, requires_grad=False, training=True
        ):
            args, kwargs = mi.constructor_input.args, dict(mi.constructor_input.kwargs)
            kwargs.pop("device", None)
            kwargs.pop("dtype", None)
            if mi.forward_input is None:
                continue
            (tx,) = mi.forward_input.args
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tlayer = info.module_cls(*args, dtype=torch.float64, **kwargs)
            layer = getattr(nn, name)(*args, dtype=np.float64, **kwargs)
            _copy(layer, tlayer)
            _run_both(layer, tlayer, tx.numpy().copy())
            count += 1
    assert count >= 6


def test_state_dict_round_trip_with_torch():
    tlayer = torch.nn.Conv2d(3, 5, (3, 2), bias=True)
    layer = nn.Conv2d(3, 5, (3, 2))
    layer.load_state_dict({k: v.numpy() for k, v in tlayer.state_dict().items()})
    assert list(layer.state_dict()) == list(tlayer.state_dict()) == ["weight", "bias"]
    np.testing.assert_array_equal(layer.weight.data, tlayer.weight.detach().numpy())
    assert layer.weight.data.dtype == np.float32
    tlayer.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    with pytest.raises(KeyError, match="missing keys"):
        layer.load_state_dict({"weight": layer.weight.data})
    with pytest.raises(ValueError, match="weight has shape"):
        layer.load_state_dict({"weight": np.zeros((1, 1, 1, 1)), "bias": np.zeros(5)})
    assert nn.Conv1d(2, 2, 3, bias=False).state_dict().keys() == {"weight"}


def test_default_initialisation_matches_torch_distribution():
    layer = nn.Conv2d(16, 32, 3, seed=0)
    bound = 1 / np.sqrt(16 * 9)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    assert layer.weight.data.dtype == np.float32
    t = nn.ConvTranspose2d(16, 8, 3, groups=2, seed=0)
    assert t.weight.shape == (16, 4, 3, 3)
    assert np.abs(t.weight.data).max() <= 1 / np.sqrt(4 * 9)
    a = nn.Conv1d(2, 3, 3, seed=5).weight.data
    b = nn.Conv1d(2, 3, 3, rng=np.random.default_rng(5)).weight.data
    np.testing.assert_array_equal(a, b)


def test_backward_accumulates_and_zero_grad_clears():
    layer = nn.Conv1d(2, 3, 3, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 6))
    y = layer(x)
    layer.backward(np.ones_like(y))
    g1 = layer.weight.grad.copy()
    layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(layer.weight.grad, 2 * g1)
    layer.zero_grad()
    assert layer.weight.grad is None
    assert np.asarray(layer.weight) is layer.weight.data
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Conv1d(2, 3, 3).backward(np.ones((1, 3, 4)))


def test_state_dict_order_and_round_trip_match_torch_for_a_network():
    m = nn.Sequential(nn.Conv1d(1, 4, 3, seed=0), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8, 2))
    t = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8, 2))
    assert list(m.state_dict()) == list(t.state_dict())
    m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy())


def test_layer_pickles_after_forward_and_reprs_like_torch():
    import copy
    import pickle

    layer = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect", seed=0)
    x = np.ones((1, 1, 5, 5), np.float32)
    y = layer(x)
    again = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(again(x), y)
    with pytest.raises(RuntimeError, match="before forward"):
        copy.deepcopy(layer).backward(np.ones_like(y))  # a copy has no forward of its own
    for cls, args, kw in [
        ("Conv2d", (4, 16, 3), dict(padding=1)),
        ("Conv2d", (4, 16, 3), dict(padding="same", padding_mode="reflect")),
        ("Conv2d", (4, 16, 3), dict(padding=(0, 1), dilation=2, bias=False)),
        ("Conv1d", (4, 8, 3), dict(groups=2)),
        ("ConvTranspose2d", (3, 4, 3), dict(stride=2, output_padding=1)),
    ]:
        assert repr(getattr(nn, cls)(*args, **kw)) == repr(getattr(torch.nn, cls)(*args, **kw))


def test_layer_dtype_argument():
    assert nn.Conv1d(1, 1, 3, dtype=torch.float64).weight.dtype == np.float64
    assert nn.Conv1d(1, 1, 3, dtype="float64").weight.dtype == np.float64
    with pytest.raises(TypeError, match="dtype=int64 must be one of"):
        nn.Conv2d(2, 3, 3, dtype=np.int64)
    with pytest.raises(TypeError, match="is not a dtype"):
        nn.Conv2d(2, 3, 3, dtype="nonsense")


def test_transposed_output_size_follows_torch():
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    x = np.ones((1, 2, 4, 4), np.float32)
    assert layer(x, output_size=(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    assert layer(x[0], output_size=(3, 7, 8)).shape == (3, 7, 8)  # unbatched: C + spatial
    with pytest.raises(ValueError, match="must have 2 or 4 entries"):
        layer(x, output_size=(3, 8, 8))
    with pytest.raises(TypeError, match="must hold ints"):
        layer(x, output_size=(8.9, 8.9))
    with pytest.raises(TypeError, match="sequence of ints"):
        layer(x, output_size="16")
    dilated = nn.ConvTranspose1d(1, 1, 3, dilation=2)  # torch: output_padding < stride
    with pytest.raises(ValueError, match="between 8 and 8"):
        dilated(np.ones((1, 1, 4), np.float32), output_size=(9,))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_padding_mode_with_uneven_same_padding_matches_torch(mode, rank):
    """An even kernel with padding='same' pads (1, 2): with a padding_mode the layer pads
    first, and swapping the two sides passed every symmetric test."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + (7,) * rank)
    layer = getattr(nn, f"Conv{rank}d")(3, 4, 4, padding="same", padding_mode=mode,
                                        dtype=np.float64)
    ref = getattr(torch.nn, f"Conv{rank}d")(3, 4, 4, padding="same",
                                            padding_mode=mode).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.weight.data))
        ref.bias.copy_(torch.tensor(layer.bias.data))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    y = layer(x)
    assert rel_err(y, yt.detach().numpy()) <= 1e-10
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    yt.backward(torch.tensor(gy))
    assert rel_err(gx, xt.grad.numpy()) <= 1e-10
    assert rel_err(layer.weight.grad, ref.weight.grad.numpy()) <= 1e-10


@pytest.mark.parametrize("name", ["Conv1d", "Conv2d", "ConvTranspose3d"])
def test_bias_flag_is_a_bool(name):
    """torch tests ``bias`` by truthiness: an array raised NumPy's 'ambiguous' error,
    a tensor torch's, neither naming ``bias``; a string silently meant True."""
    for bad in (np.array([1, 0]), torch.tensor(True), "no", None, 0.5):
        with pytest.raises(TypeError, match=f"{name}: bias=.* must be a bool"):
            getattr(nn, name)(2, 2, 1, bias=bad)
    for off in (False, np.False_, 0):
        assert getattr(nn, name)(2, 2, 1, bias=off).bias is None
    for on in (True, np.True_, 1):
        assert getattr(nn, name)(2, 2, 1, bias=on).bias.shape == (2,)


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        (dict(seed="a"), TypeError, "Conv2d: seed='a' must be None, an int >= 0"),
        (dict(seed=1.5), TypeError, "Conv2d: seed=1.5 must be None, an int >= 0"),
        (dict(seed=-1), ValueError, "Conv2d: seed=-1 must be None, an int >= 0"),
        (dict(seed=[1, -1]), ValueError, r"Conv2d: seed=\[1, -1\] must be None"),
        (dict(rng=3), TypeError, "Conv2d: rng=3 must be a numpy.random.Generator"),
        (dict(rng=np.random.RandomState(0)), TypeError, "Conv2d: rng=.* must be a numpy"),
    ],
)
def test_seed_and_rng_errors_name_the_argument(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        nn.Conv2d(2, 3, 3, **kw)


def test_seeds_numpy_takes_seed_the_same():
    a = nn.Conv1d(2, 3, 3, seed=np.int64(5)).weight.data
    b = nn.Conv1d(2, 3, 3, rng=np.random.default_rng(5)).weight.data
    c = nn.Conv1d(2, 3, 3, seed=np.random.SeedSequence(5)).weight.data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda: nn.Conv2d(2**40, 4, 3),
         r"Conv2d: in_channels=1099511627776, out_channels=4, kernel_size=\(3, 3\), groups=1 "
         r"gives weight of shape \(4, 1099511627776, 3, 3\), bias of shape \(4,\) "
         r"\(144 TiB\), more than this machine's memory"),
        (lambda: nn.ConvTranspose1d(4, 2**40, 3, bias=False, dtype=np.float64),
         r"ConvTranspose1d: .* weight of shape \(4, 1099511627776, 3\) \(96 TiB\)"),
        (lambda: nn.Conv3d(1, 1, (10**5,) * 3), r"kernel_size=\(100000, 100000, 100000\)"),
    ],
)
def test_parameters_larger_than_memory_fail_at_once(make, msg):
    """Not a MemoryError after minutes of trying: an error that is both ValueError and
    MemoryError, naming the arguments, the shape and the bytes."""
    with pytest.raises(ValueError, match=msg) as info:
        make()
    assert isinstance(info.value, MemoryError)
