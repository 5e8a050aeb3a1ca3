"""Containers as torch's: Sequential's list operations, ModuleList, ModuleDict (names,
order, return values and errors compared with torch.nn on the same operations)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import convolab.nn as nn

from .test_nn_module import pair

torch = pytest.importorskip("torch")



def _names(m):
    return [(n, type(c).__name__) for n, c in m.named_children()]


def _both(fn):
    """``fn(lib)`` for torch.nn and convolab.nn: the same result, or the same error type."""
    out = []
    for lib in (torch.nn, nn):
        try:
            out.append(fn(lib))
        except Exception as exc:  # noqa: BLE001 - the error's type is compared
            out.append(type(exc))
    assert out[0] == out[1], out
    return out[1]


SEQ_OPS = {
    "append": lambda s, lib: s.append(lib.Flatten()) is s,
    "insert0": lambda s, lib: s.insert(0, lib.Flatten()) is s,
    "insert_end": lambda s, lib: s.insert(3, lib.Flatten()) is s,
    "insert_neg": lambda s, lib: s.insert(-1, lib.Flatten()) is s,
    "insert_oob": lambda s, lib: s.insert(5, lib.Flatten()),
    "extend": lambda s, lib: s.extend([lib.Flatten(), lib.Identity()]) is s,
    "extend_seq": lambda s, lib: s.extend(lib.Sequential(lib.Flatten())) is s,
    "pop": lambda s, lib: type(s.pop(1)).__name__,
    "pop_neg": lambda s, lib: type(s.pop(-1)).__name__,
    "del": lambda s, lib: s.__delitem__(0),
    "del_slice": lambda s, lib: s.__delitem__(slice(0, 2)),
    "set": lambda s, lib: s.__setitem__(-1, lib.Flatten()),
    "set_oob": lambda s, lib: s.__setitem__(3, lib.Flatten()),
    "get_oob": lambda s, lib: s[3],
    "get_neg_oob": lambda s, lib: s[-4],
    "get_str": lambda s, lib: s["0"],
    "get_neg": lambda s, lib: type(s[-1]).__name__,
    "slice": lambda s, lib: (_names(s[1:]), type(s[1:]).__name__, list(s[::2].state_dict())),
    "len": lambda s, lib: len(s),
    "iter": lambda s, lib: [type(m).__name__ for m in s],
    "add": lambda s, lib: _names(s + lib.Sequential(lib.Flatten())),
    "iadd": lambda s, lib: s.__iadd__(lib.Sequential(lib.Flatten())) is s,
    "add_list": lambda s, lib: s + [lib.Flatten()],
}


@pytest.mark.parametrize("op", sorted(SEQ_OPS))
def test_sequential_list_operations_as_torch(op):
    def run(lib):
        s = lib.Sequential(lib.Linear(2, 2), lib.ReLU(), lib.Linear(2, 3))
        r = SEQ_OPS[op](s, lib)
        return r, _names(s), list(s.state_dict())

    _both(run)


def test_sequential_slice_keeps_names_and_insert_needs_numbered_names():
    def run(lib):
        s = lib.Sequential(OrderedDict(a=lib.ReLU(), b=lib.Linear(2, 2)))
        return _names(s[1:]), _names(s.append(lib.ReLU())), list(s[1:].state_dict())

    _both(run)
    s = nn.Sequential(OrderedDict(a=nn.ReLU(), b=nn.ReLU()))
    with pytest.raises(ValueError, match="named"):  # torch: a KeyError from inside
        s.insert(0, nn.ReLU())
    del s[0]  # renumbered, as torch
    assert _names(s) == [("0", "ReLU")] and not hasattr(s, "b")
    with pytest.raises(TypeError, match="not a convolab Module"):
        nn.Sequential().append(torch.nn.ReLU())


def test_sequential_after_list_operations_trains_as_torch():
    t, c = pair(lambda lib: lib.Sequential(lib.Linear(3, 4), lib.ReLU()))
    t.append(torch.nn.Linear(4, 2).double()).insert(0, torch.nn.Identity())
    c.append(nn.Linear(4, 2, dtype=np.float64)).insert(0, nn.Identity())
    c[-1].load_state_dict(t[-1].state_dict())
    x = np.random.default_rng(0).standard_normal((5, 3))
    tx = torch.tensor(x, requires_grad=True)
    ty = t(tx)
    ty.sum().backward()
    y = c(x)
    gx = c.backward(np.ones_like(y))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10)


LIST_OPS = {
    "append": lambda m, lib: m.append(lib.Flatten()) is m,
    "extend": lambda m, lib: m.extend([lib.Flatten()]) is m,
    "insert": lambda m, lib: m.insert(1, lib.Flatten()),
    "pop": lambda m, lib: type(m.pop(0)).__name__,
    "del": lambda m, lib: m.__delitem__(1),
    "del_slice": lambda m, lib: m.__delitem__(slice(1, None)),
    "set": lambda m, lib: m.__setitem__(0, lib.Flatten()),
    "set_bad": lambda m, lib: m.__setitem__(0, 3),
    "get_oob": lambda m, lib: m[5],
    "slice": lambda m, lib: (_names(m[1:]), type(m[1:]).__name__, list(m[1:].state_dict())),
    "add": lambda m, lib: _names(m + [lib.Flatten()]),
    "iadd": lambda m, lib: m.__iadd__([lib.Flatten()]) is m,
    "len_iter": lambda m, lib: (len(m), [type(x).__name__ for x in m]),
    "call": lambda m, lib: m(1),
}


def test_module_list_insert_takes_a_negative_index_as_list_insert():
    m = nn.ModuleList([nn.ReLU(), nn.GELU()])
    assert m.insert(-1, nn.Flatten()) is None  # torch: None (and a KeyError for -1)
    assert _names(m) == [("0", "ReLU"), ("1", "Flatten"), ("2", "GELU")]
    with pytest.raises(IndexError, match="index -4 is out of range"):
        m.insert(-4, nn.ReLU())


def test_module_list_repr_folds_repeated_blocks_as_torch():
    def build(lib):
        return lib.ModuleList([lib.Linear(2, 2), lib.Linear(2, 2), lib.ReLU(),
                               lib.Sequential(lib.ReLU()), lib.Sequential(lib.ReLU())])

    assert repr(build(nn)) == repr(build(torch.nn))
    assert repr(nn.ModuleList()) == repr(torch.nn.ModuleList())


@pytest.mark.parametrize("op", sorted(LIST_OPS))
def test_module_list_as_torch(op):
    def run(lib):
        m = lib.ModuleList([lib.Linear(2, 2), lib.ReLU(), lib.Linear(2, 3)])
        r = LIST_OPS[op](m, lib)
        return r, _names(m), list(m.state_dict())

    _both(run)


def test_model_with_a_module_list_of_blocks_as_torch():
    def build(lib):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.blocks = lib.ModuleList([lib.Linear(3, 3) for _ in range(2)])
                self.blocks.append(lib.Linear(3, 1))

            def forward(self, x):
                for b in self.blocks:
                    x = b(x)
                return x

            def backward(self, g):
                for b in reversed(self.blocks):
                    g = b.backward(g)
                return g

        return Net()

    t, c = pair(build)
    assert list(c.state_dict()) == list(t.state_dict()) == [
        f"blocks.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert repr(c) == repr(t)
    x = np.random.default_rng(0).standard_normal((4, 3))
    ty = t(torch.tensor(x))
    ty.sum().backward()
    c.backward(np.ones_like(c(x)))
    for (n, p), (_, tp) in zip(c.named_parameters(), t.named_parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-10, err_msg=n)


def test_module_dict_as_torch():
    def run(lib):
        d = lib.ModuleDict({"conv": lib.Conv1d(1, 2, 3), "act": lib.ReLU()})
        d["head"] = lib.Linear(2, 1)
        d.update([("act", lib.GELU()), ("pool", lib.MaxPool1d(2))])
        popped = type(d.pop("pool")).__name__
        out = (list(d), list(d.keys()), [type(v).__name__ for v in d.values()],
               [k for k, _ in d.items()], "conv" in d, len(d), popped, list(d.state_dict()),
               _names(d))
        del d["conv"]
        d.clear()
        return out, len(d), list(d.state_dict())

    _both(run)
    _both(lambda lib: lib.ModuleDict({"a": lib.ReLU()})["b"])
    _both(lambda lib: lib.ModuleDict().update([lib.ReLU()]))
    _both(lambda lib: lib.ModuleDict().update([("a", lib.ReLU(), 1)]))
    _both(lambda lib: lib.ModuleDict().update(3))
    _both(lambda lib: lib.ModuleDict({"a.b": lib.ReLU()}))


@pytest.mark.parametrize("key", ["train", "forward", "state_dict", "keys", "training"])
def test_module_dict_key_cannot_hide_a_method_as_torch(key):
    """``ModuleDict()["train"] = m`` replaced the container's own ``train`` (and
    ``forward``, ``state_dict``, ``keys``...) with the child: ``model.train()`` then called
    the child.  torch refuses the name, and so does add_module here."""
    for lib in (torch.nn, nn):
        d = lib.ModuleDict({"a": lib.ReLU()})
        with pytest.raises(KeyError, match=key):
            d[key] = lib.ReLU()
        with pytest.raises(KeyError, match=key):
            d.add_module(key, lib.ReLU())
        assert list(d) == ["a"]
    d = nn.ModuleDict({"a": nn.ReLU()})
    d["a"] = nn.GELU()  # replacing a child is not hiding anything
    assert type(d["a"]) is nn.GELU and d.train() is d
