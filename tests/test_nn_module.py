"""Module API parity with torch.nn.Module: the calls torch training scripts make
(freezing, traversal, buffers, look-ups by name, assignment rules, repr), each checked
against torch's behaviour on the same model."""

from __future__ import annotations

import numpy as np
import pytest

import convolab.nn as nn

torch = pytest.importorskip("torch")


def pair(build):
    """The same model built from torch.nn and from convolab.nn (float64, same state)."""
    t = build(torch.nn).double()
    c = build(nn)
    for m in c.modules():  # float64 layers, then torch's values
        for p in m._parameters.values():
            if p is not None:  # (an empty slot: bias=False)
                p.data = p.data.astype(np.float64)
        for name, b in list(m._buffers.items()):
            if b is not None and b.dtype.kind == "f":
                m._set_buffer(name, b.astype(np.float64))
    c.load_state_dict(t.state_dict())
    return t, c


def cnn(lib):
    return lib.Sequential(
        lib.Conv2d(1, 3, 3, padding=1), lib.BatchNorm2d(3), lib.ReLU(),
        lib.Flatten(), lib.Linear(3 * 4 * 4, 2),
    )


def test_requires_grad_freezes_as_torch():
    """A frozen parameter gets no .grad, so the optimizer leaves it as it is; the
    input's gradient still flows through the frozen layers."""
    t, c = pair(cnn)
    assert t[0].requires_grad_(False) is t[0]
    assert c[0].requires_grad_(False) is c[0]
    t[1].weight.requires_grad_(False)
    assert c[1].weight.requires_grad_(False) is c[1].weight
    assert [n for n, p in c.named_parameters() if p.requires_grad] == [
        n for n, p in t.named_parameters() if p.requires_grad]
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    tx = torch.tensor(x, requires_grad=True)
    topt = torch.optim.SGD(t.parameters(), lr=0.5, momentum=0.9)
    copt = nn.optim.SGD(c.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        topt.zero_grad()
        copt.zero_grad()
        tx.grad = None
        ty = t(tx)
        ty.square().sum().backward()
        y = c(x)
        gx = c.backward(2 * y)
        topt.step()
        copt.step()
    assert [p.grad is None for p in c.parameters()] == [p.grad is None for p in t.parameters()]
    ts = t.state_dict()
    for k, v in c.state_dict().items():
        np.testing.assert_allclose(v, ts[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    c.requires_grad_()
    assert all(p.requires_grad for p in c.parameters())
    with pytest.raises(TypeError, match="requires_grad"):
        c.requires_grad_("no")


def test_zero_grad_set_to_none_false_zeros_in_place():
    c = nn.Linear(3, 2)
    c(np.ones((1, 3), np.float32))
    c.backward(np.ones((1, 2), np.float32))
    g = c.weight.grad
    c.zero_grad(set_to_none=False)
    assert c.weight.grad is g and not g.any()  # torch zeroes the same tensor
    c.zero_grad()
    assert c.weight.grad is None
    fresh = nn.Linear(3, 2)
    fresh.zero_grad(set_to_none=False)  # no grad yet: stays None, as torch
    assert fresh.weight.grad is None


class _Net:
    """A model class with own parameters and buffers next to sub-modules."""

    @staticmethod
    def build(lib):
        arr = torch.zeros if lib is torch.nn else (lambda *s: np.zeros(s))

        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.stem = lib.Linear(2, 3)
                self.scale = lib.Parameter(
                    torch.ones(1) if lib is torch.nn else np.ones(1))
                self.register_buffer("mean", arr(2), persistent=False)
                self.register_buffer("count", arr(1))
                self.bn = lib.BatchNorm1d(3)
                self.register_buffer("empty", None)

        return Net()


def test_traversal_prefix_recurse_and_duplicates_as_torch():
    t, c = _Net.build(torch.nn), _Net.build(nn)
    for kw in [{}, {"prefix": "model"}, {"recurse": False}, {"prefix": "m", "recurse": False}]:
        assert [n for n, _ in c.named_parameters(**kw)] == [n for n, _ in t.named_parameters(**kw)]
        assert [n for n, _ in c.named_buffers(**kw)] == [n for n, _ in t.named_buffers(**kw)]
    assert len(c.parameters(recurse=False)) == len(list(t.parameters(recurse=False))) == 1
    assert len(c.buffers(recurse=False)) == len(list(t.buffers(recurse=False))) == 2
    names = [n for n, _ in c.named_modules(prefix="m")]
    assert names == [n for n, _ in t.named_modules(prefix="m")]
    # a module at two places: once by default, at every place with remove_duplicate=False
    r, tr = nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    s, ts = nn.Sequential(r, nn.ReLU(), r), torch.nn.Sequential(tr, torch.nn.ReLU(), tr)
    for kw in [{}, {"remove_duplicate": False}]:
        assert [n for n, _ in s.named_modules(**kw)] == [n for n, _ in ts.named_modules(**kw)]
        assert [n for n, _ in s.named_parameters(**kw)] == [
            n for n, _ in ts.named_parameters(**kw)]
        assert [n for n, _ in s.named_buffers(**kw)] == [n for n, _ in ts.named_buffers(**kw)]
    assert len(list(s.modules())) == len(list(ts.modules()))
    assert list(s.state_dict()) == list(ts.state_dict())  # the state dict keeps both places


def test_non_persistent_buffers_stay_out_of_the_state_dict():
    t, c = _Net.build(torch.nn), _Net.build(nn)
    assert list(c.state_dict()) == list(t.state_dict())
    assert "mean" not in c.state_dict() and "mean" in dict(c.named_buffers())
    sd = c.state_dict()
    assert c.load_state_dict(sd) == ([], [])
    bad = dict(sd, mean=np.ones(2))
    tbad = dict(t.state_dict(), mean=torch.ones(2))
    assert c.load_state_dict(bad, strict=False).unexpected_keys == ["mean"]
    assert t.load_state_dict(tbad, strict=False).unexpected_keys == ["mean"]
    np.testing.assert_array_equal(c.mean, 0)
    c.mean = np.ones(2)  # assigning keeps it a non-persistent buffer, as torch
    assert "mean" not in c.state_dict()
    c.register_buffer("mean", np.ones(2))  # registered again: persistent
    assert "mean" in c.state_dict()
    with pytest.raises(TypeError, match="persistent"):
        c.register_buffer("other", np.ones(2), persistent="no")


def test_state_dict_prefix_keep_vars_and_load_repr_as_torch():
    t, c = pair(cnn)
    assert list(c.state_dict(prefix="m.")) == list(t.state_dict(prefix="m."))
    kv = c.state_dict(keep_vars=True)
    assert kv["0.weight"] is c[0].weight and kv["1.running_mean"] is c[1].running_mean
    assert repr(c.load_state_dict(c.state_dict())) == repr(t.load_state_dict(t.state_dict()))
    r = c.load_state_dict({}, strict=False)
    assert r.missing_keys == t.load_state_dict({}, strict=False).missing_keys


def test_named_registration_errors_as_torch():
    for lib in (torch.nn, nn):
        m = lib.Linear(2, 2)
        arr = torch.zeros(2) if lib is torch.nn else np.zeros(2)
        with pytest.raises(KeyError, match="contain"):
            m.register_buffer("a.b", None)
        with pytest.raises(KeyError, match="already exists"):
            m.register_buffer("weight", None)
        with pytest.raises(KeyError, match="already exists"):
            m.add_module("in_features", lib.ReLU())
        with pytest.raises(KeyError, match="empty"):
            m.add_module("", lib.ReLU())
        with pytest.raises(TypeError, match="parameter 'w'"):
            m.register_parameter("w", arr)
        with pytest.raises(TypeError, match="as parameter 'weight'"):
            m.weight = arr  # would silently stop training it
        m.add_module("act", lib.ReLU())
        with pytest.raises(TypeError, match="child module 'act'"):
            m.act = 3
        m.bias = None  # None empties the slot
        m.act = None
        assert [n for n, _ in m.named_parameters()] == ["weight"]
        assert list(m.named_children()) == []
        m.register_parameter("bias", None)  # an empty slot may be registered again
    with pytest.raises(TypeError, match="NumPy array"):
        nn.Linear(2, 2).register_buffer("b", [1, 2])


def test_add_module_and_del_as_torch():
    for lib in (torch.nn, nn):
        m = lib.Sequential()
        m.add_module("conv", lib.Conv1d(1, 1, 1))
        m.register_module("act", lib.ReLU())
        assert [n for n, _ in m.named_children()] == ["conv", "act"]
        assert list(m.state_dict()) == ["conv.weight", "conv.bias"]
        del m.conv  # gone from the state dict and the traversal too
        assert list(m.state_dict()) == [] and [n for n, _ in m.named_children()] == ["act"]
        bn = lib.BatchNorm1d(2)
        del bn.running_mean, bn.weight
        assert list(bn.state_dict()) == ["bias", "running_var", "num_batches_tracked"]


def test_a_sub_module_set_to_none_keeps_its_slot_as_torch():
    """``model.block = None`` (or ``add_module(name, None)``) leaves an empty slot: gone
    from the traversals and the state dict, shown by repr, refused a non-module value
    later, and filled in its old place by a module, as torch."""
    def build(lib):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.a = lib.Linear(2, 2)
                self.b = lib.BatchNorm1d(2)
                self.c = lib.ReLU()
        return Net()

    reprs = []
    for lib in (torch.nn, nn):
        m = build(lib)
        m.a = None
        m.add_module("d", None)
        assert m.a is None and m.d is None
        reprs.append(repr(m))
        assert repr(m).startswith("Net(\n  (a): None\n  (b): BatchNorm1d(")
        assert repr(m).endswith("\n  (c): ReLU()\n  (d): None\n)")
        assert [n for n, _ in m.named_children()] == ["b", "c"]
        assert [n for n, _ in m.named_modules()] == ["", "b", "c"]
        assert [n for n, _ in m.named_parameters()] == ["b.weight", "b.bias"]
        assert list(m.state_dict()) == ["b.weight", "b.bias", "b.running_mean",
                                        "b.running_var", "b.num_batches_tracked"]
        m.load_state_dict(m.state_dict())
        m.train(False).apply(lambda mod: None)
        assert not m.b.training
        with pytest.raises(TypeError, match="child module 'a'"):
            m.a = 3
        with pytest.raises(AttributeError, match="not a"):
            m.get_submodule("a")
        m.a = lib.Linear(2, 2)  # back in its old place: first in the state dict
        assert list(m.state_dict())[:2] == ["a.weight", "a.bias"]
        assert [n for n, _ in m.named_children()] == ["a", "b", "c"]
    assert reprs[0] == reprs[1]
    s = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    s.add_module("2", None)
    assert len(s) == 3 and repr(s).endswith("(2): None\n)")


def test_get_submodule_parameter_buffer_as_torch():
    t, c = pair(lambda lib: lib.Sequential(lib.Sequential(lib.Linear(2, 2), lib.BatchNorm1d(2))))
    assert c.get_submodule("") is c
    assert type(c.get_submodule("0.1")).__name__ == type(t.get_submodule("0.1")).__name__
    assert c.get_parameter("0.0.weight") is c[0][0].weight
    assert c.get_buffer("0.1.running_var") is c[0][1].running_var
    for call, arg in [("get_submodule", "0.5"), ("get_submodule", "0.0.weight"),
                      ("get_parameter", "0.1.running_var"), ("get_buffer", "0.0.weight"),
                      ("get_parameter", "0.0.nothing")]:
        with pytest.raises(AttributeError):
            getattr(t, call)(arg)
        with pytest.raises(AttributeError, match=arg.rpartition(".")[2]):
            getattr(c, call)(arg)


def test_torch_only_methods_say_what_to_do_instead():
    m = nn.Linear(2, 2)
    for name, hint in [("double", "dtype=np.float64"), ("to", "CPU"), ("cuda", "CPU"),
                       ("register_forward_hook", "hooks")]:
        with pytest.raises(AttributeError, match=f"torch.nn.Module.{name} .*{hint}"):
            getattr(m, name)
    assert not hasattr(m, "double")
    with pytest.raises(AttributeError, match="no attribute 'wieght'$"):
        _ = m.wieght
    with pytest.raises(NotImplementedError, match=r'\[Module\] is missing .*"forward"'):
        nn.Module()(1)


def test_parameter_arithmetic_points_to_data():
    p = nn.Parameter(np.ones(2))
    for f in (lambda: p * 2, lambda: np.ones(2) * p, lambda: 1 - p, lambda: -p):
        with pytest.raises(TypeError, match="p.data"):
            f()
    assert p.numel() == 2 and np.allclose(p, 1) and np.asarray(p).sum() == 2


def test_repr_layout_as_torch():
    def build(lib):
        class Block(lib.Module):
            def __init__(self):
                super().__init__()
                self.fc = lib.Linear(2, 2)
                self.inner = lib.Sequential(lib.ReLU(), lib.Sequential(lib.Flatten()))

            def extra_repr(self):
                return "k=3\nsecond line"

        class Leaf(lib.Module):
            def extra_repr(self):
                return "a=1"

        return lib.Sequential(Block(), Leaf(), lib.Sequential(), lib.ReLU())

    assert repr(build(nn)) == repr(build(torch.nn))


def test_train_eval_return_the_module_and_call_runs_forward():
    t, c = pair(cnn)
    assert c.train(False) is c and t.train(False) is t
    assert [m.training for m in c.modules()] == [m.training for m in t.modules()]
    assert c.train() is c and c.eval() is c and not c.training
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    np.testing.assert_allclose(c(x), t(torch.tensor(x)).detach().numpy(), rtol=1e-10)
    np.testing.assert_array_equal(c(input=x), c.forward(x))


def test_reassigned_parameter_or_module_keeps_its_place_as_torch():
    """``model.fc = Linear(...)`` (a new head) and ``layer.weight = Parameter(...)`` keep
    their place in the state dict and the traversals, as torch; they moved to the end."""

    def build(lib):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.body = lib.Linear(2, 3)
                self.fc = lib.Linear(3, 2)
                self.act = lib.ReLU()

        return Net()

    for lib in (torch.nn, nn):
        m = build(lib)
        m.fc = lib.Linear(3, 5)
        w = m.body.weight
        m.body.weight = type(w)(w.data)
        m.body.bias = None
        m.body.bias = type(w)(w.data[:, 0])  # an emptied slot, filled again: in its place
        m.act = lib.GELU()
        got = (list(m.state_dict()), [n for n, _ in m.named_children()],
               [n for n, _ in m.named_modules()])
        if lib is torch.nn:
            want = got
    assert got == want
    assert want[0][:2] == ["body.weight", "body.bias"]


def test_an_emptied_parameter_slot_stays_a_slot_as_torch():
    """``layer.bias = None`` (or ``bias=False``) leaves an empty parameter slot, as torch:
    filled again, the parameter keeps its place (it moved to the end), and an array
    assigned to it is a TypeError (it became a plain attribute that forward added as a
    bias and backward crashed on: ``'numpy.ndarray' object has no attribute
    'accumulate'``)."""
    for lib in (torch.nn, nn):
        bn = lib.BatchNorm1d(2)
        w = bn.weight
        bn.weight = None
        assert [n for n, _ in bn.named_parameters()] == ["bias"]
        assert "weight" not in bn.state_dict()
        bn.weight = w
        got = list(bn.state_dict())
        if lib is torch.nn:
            want = got
    assert got == want and got[:2] == ["weight", "bias"]
    for lib, arr in ((torch.nn, torch.zeros(3)), (nn, np.zeros(3, np.float32))):
        lin = lib.Linear(2, 3, bias=False)
        with pytest.raises(AttributeError, match="bias"):
            lin.get_parameter("bias")
        with pytest.raises(TypeError, match="bias"):
            lin.bias = arr
        assert lin.bias is None
    c = nn.Conv2d(1, 2, 3, bias=False)
    c.bias = None
    c.register_parameter("bias", None)
    assert list(c.state_dict()) == ["weight"]
    assert c.load_state_dict({"weight": c.weight.data}) == ([], [])


def test_copies_and_pickles_keep_buffers_and_frozen_parameters():
    import copy
    import pickle

    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    m.register_buffer("tmp", np.zeros(2), persistent=False)
    m[0].weight.requires_grad_(False)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert list(c.state_dict()) == list(m.state_dict()) and "tmp" not in c.state_dict()
        assert not c[0].weight.requires_grad and c[0].bias.requires_grad
        assert repr(c) == repr(m)
    old = pickle.loads(pickle.dumps(m))  # as pickled before these attributes existed
    del old.__dict__["_non_persistent_buffers"], old[0].weight.__dict__["requires_grad"]
    assert "tmp" in old.state_dict() and old[0].weight.requires_grad
    old.register_buffer("tmp2", np.zeros(1), persistent=False)
    assert "tmp2" not in old.state_dict()


def test_a_parameter_may_replace_a_sub_module_as_torch():
    m, tm = nn.Sequential(nn.Linear(2, 3, seed=0)), torch.nn.Sequential(torch.nn.Linear(2, 3))
    setattr(m, "0", nn.Parameter(np.ones(2)))
    setattr(tm, "0", torch.nn.Parameter(torch.ones(2)))
    assert list(m.state_dict()) == list(tm.state_dict()) == ["0"]
    assert len(m) == len(tm) == 0 and [n for n, _ in m.named_parameters()] == ["0"]
    with pytest.raises(TypeError, match="as child module"):  # an array still may not
        nn.Sequential(nn.ReLU()).__setattr__("0", np.ones(2))


def test_load_state_dict_skips_keys_below_an_empty_slot_as_torch():
    """A checkpoint of the full model loads strictly into one whose sub-module was set to
    None: torch counts no key below the empty slot as unexpected (a key naming the slot
    itself, or below a missing or non-module name, still is)."""
    got = []
    for lib in (torch.nn, nn):
        m = lib.Sequential(lib.Linear(2, 2), lib.BatchNorm1d(2), lib.Linear(2, 3))
        state = dict(m.state_dict())
        m.add_module("2", None)  # the head removed, its slot kept
        r = m.load_state_dict(state)  # strict: "2.weight" and "2.bias" are not unexpected
        got.append((list(r.missing_keys), list(r.unexpected_keys)))
        extra = dict(state, **{"2": state["2.bias"], "1.foo.bar": state["2.bias"],
                               "3.weight": state["2.bias"]})
        r = m.load_state_dict(extra, strict=False)
        got.append((list(r.missing_keys), sorted(r.unexpected_keys)))
        with pytest.raises(Exception, match="nexpected"):
            m.load_state_dict(extra)
    assert got[:2] == got[2:]
    assert got[0] == ([], []) and got[1] == ([], ["1.foo.bar", "2", "3.weight"])


def test_containers_hold_an_empty_slot_as_torch():
    """A container holding None (``add_module(name, None)``, or None given where torch's
    containers take it) can be sliced, summed, extended and repr'd as torch's; only
    ``Sequential.insert`` refuses None (torch asserts a Module)."""
    from collections import OrderedDict

    def ops(lib):
        s = lib.Sequential(lib.Linear(2, 2), lib.ReLU())
        s.add_module("2", None)
        ml = lib.ModuleList([lib.ReLU(), None])
        ml.append(None)
        ml.insert(0, None)
        ml[1] = None
        md = lib.ModuleDict({"a": None})
        md["b"] = lib.ReLU()
        md.update({"c": None})
        s2 = lib.Sequential(lib.ReLU(), None)
        s2[0] = None
        out = [repr(s[1:]), repr(s + lib.Sequential(lib.ReLU())),
               repr(lib.Sequential(lib.ReLU()).extend(s)), repr(ml), repr(ml[1:]),
               repr(ml + ml), repr(md), list(md), repr(s2),
               repr(lib.Sequential(OrderedDict(x=None, y=lib.ReLU()))),
               [n for n, _ in (s + s).named_parameters()]]
        s += lib.Sequential(None)
        out.append(repr(s.append(None)))
        return out

    assert ops(torch.nn) == ops(nn)
    with pytest.raises(TypeError, match="insert"):
        nn.Sequential(nn.ReLU()).insert(0, None)
    with pytest.raises(TypeError, match="not a convolab Module"):
        nn.ModuleList([3])


def test_an_empty_slot_is_not_registered_again_as_another_kind_as_torch():
    """``add_module(name, None)`` on an empty parameter or buffer slot, or
    ``register_parameter`` on an empty sub-module slot, raise torch's KeyError instead of
    moving the slot to another store (an empty slot is filled again by its own kind)."""
    for lib in (torch.nn, nn):
        m = lib.Linear(2, 2, bias=False)
        m.register_buffer("buf", None)
        m.add_module("head", None)
        for method, name, value in (("add_module", "bias", None), ("add_module", "buf", None),
                                    ("register_parameter", "head", None),
                                    ("add_module", "bias", lib.ReLU())):
            with pytest.raises(KeyError, match="already exists"):
                getattr(m, method)(name, value)
        assert list(m._parameters) == ["weight", "bias"] and list(m._modules) == ["head"]
        assert list(m._buffers) == ["buf"]
        m.add_module("head", lib.ReLU())  # the same kind fills it
        m.register_parameter("bias", None)
        assert [n for n, _ in m.named_children()] == ["head"]
