"""Layers beside the convolutions: containers, linear, activations, pooling, norms.

Every layer follows :mod:`convolab.nn.module`: ``y = layer(x)`` keeps what
``gx = layer.backward(gy)`` needs, and ``backward`` accumulates parameter
gradients into ``.grad``.  Constructor signatures, defaults, state-dict keys and
numerics follow ``torch.nn`` (float64 results agree with torch to ~1e-15).

Pooling works for any number of spatial dimensions: a Python loop runs over the
``prod(kernel_size)`` kernel offsets, each a strided slice of the padded input,
never over the batch or the output pixels (and the max-pool backward scatters
with one slice-add per offset, no ``np.add.at``).
"""

from __future__ import annotations

import functools
import math
import operator
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from .._limits import check_arrays
from ..algorithms._finite import all_finite
from ..algorithms._threads import _blas_single_thread, matmul
from ..algorithms.direct import kernel_offsets, tap_slices
from ..dtypes import as_array
from ..padding import pad_spatial
from ..spec import ConvSpec, as_tuple, make_spec, pool_output_size
from .conv import kaiming_uniform, layer_dtype, make_rng
from .module import (
    Module,
    _addindent,
    Parameter,
    check_device,
    check_flag,
    check_index,
    check_real,
)

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "Flatten",
    "GELU",
    "Identity",
    "Linear",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "ModuleDict",
    "ModuleList",
    "ReLU",
    "Sequential",
    "SiLU",
]


def _float_dtype(name: str, dtype) -> np.dtype:
    dt = layer_dtype(name, dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{name}: dtype={dt.name} must be float32 or float64")
    return dt


def _check_input(name: str, x, ranks: tuple[int, ...], kinds: str = "f",
                 rule: str = "a floating dtype") -> np.ndarray:
    """``x`` as an array of one of ``ranks`` dimensions whose dtype kind is in ``kinds``
    (``"f"`` floating, ``"i"``/``"u"`` signed/unsigned integers, ``"l"`` int64 only)."""
    x = as_array(f"{name}: input", x)
    if x.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {want} input, got input.shape={x.shape}")
    ok = x.dtype.kind in kinds or ("l" in kinds and x.dtype == np.int64)
    if not ok or x.dtype.kind not in "fiu":
        raise TypeError(f"{name}: input has dtype {x.dtype}, expected {rule}")
    return x


def _acc_dtype(dt: np.dtype) -> np.dtype:
    """Where sums accumulate: float32 for float16 (torch's accumulation type), else ``dt``."""
    return np.dtype(np.float32) if dt == np.float16 else dt


def _no_integer_grad(name: str, dtype: np.dtype) -> None:
    if dtype.kind in "iu":
        raise TypeError(
            f"{name}.backward: the forward input had dtype {dtype}; only floating inputs "
            "have gradients (as torch)"
        )


def _need(cache, name: str):
    if cache is None:
        raise RuntimeError(f"{name}.backward called before forward")
    return cache


def _grad(name: str, grad_out, shape: tuple[int, ...]) -> np.ndarray:
    """``grad_out`` as an array of the forward output's ``shape`` (never broadcast)."""
    g = as_array(f"{name}.backward: grad_out", grad_out)
    if g.shape != tuple(shape):
        raise ValueError(
            f"{name}.backward: grad_out.shape={g.shape} must equal the output's shape "
            f"{tuple(shape)}"
        )
    return g


def _same_dtype(name: str, x: np.ndarray, dtype: np.dtype) -> None:
    if x.dtype != dtype:
        raise TypeError(
            f"{name}: input has dtype {x.dtype} but the layer's parameters are {dtype}; "
            "dtypes must match (cast the input, or build the layer with dtype=...)"
        )


# ---------------------------------------------------------------------------
# Containers and shape layers


def _index(name: str, idx, size: int) -> int:
    """torch's container index: an int in ``[-size, size)``, as a position."""
    if isinstance(idx, (bool, np.bool_)):
        raise TypeError(f"{name}: index {idx!r} must be an int or a slice")
    idx = operator.index(idx)  # a str or float: TypeError, as torch
    if not -size <= idx < size:
        raise IndexError(f"{name}: index {idx} is out of range for {size} modules")
    return idx % size


def _module(name: str, m, none_ok: bool = False) -> Module | None:
    """``m`` if it is a Module (or, with ``none_ok``, None: an empty slot, which torch's
    containers take wherever ``add_module`` does)."""
    if not isinstance(m, Module) and not (none_ok and m is None):
        raise TypeError(f"{name}: {m!r} is not a convolab Module")
    return m


class _Renumbered(Module):
    """Children named ``"0"``, ``"1"``, ...: the list operations shared by
    :class:`Sequential` and :class:`ModuleList` (torch's semantics, torch's numbering)."""

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def _renumber(self, mods) -> None:
        for k in self._modules:
            self.__dict__.pop(k, None)
        self._modules.clear()
        for i, m in enumerate(mods):
            self._modules[str(i)] = m
            object.__setattr__(self, str(i), m)

    def __setitem__(self, idx, module) -> None:
        name = type(self).__name__
        key = list(self._modules)[_index(name, idx, len(self))]
        setattr(self, key, _module(name, module, none_ok=True))

    def __delitem__(self, idx) -> None:
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            del mods[idx]
        else:
            del mods[_index(type(self).__name__, idx, len(self))]
        self._renumber(mods)  # torch renumbers what is left: "0", "1", ...

    def append(self, module: Module):
        """Add ``module`` at the end (named ``str(len(self))``); returns ``self``."""
        self.add_module(str(len(self)),
                        _module(f"{type(self).__name__}.append", module, none_ok=True))
        return self

    def extend(self, modules):
        """Append every module of an iterable (a list, another container); returns
        ``self``."""
        name = f"{type(self).__name__}.extend"
        if isinstance(modules, Module) and not isinstance(modules, _Renumbered):
            raise TypeError(f"{name}: expected an iterable of modules, got a "
                            f"{type(modules).__name__}")
        for m in list(modules):
            self.append(_module(name, m, none_ok=True))
        return self

    def insert(self, index: int, module: Module):
        """Insert ``module`` before position ``index`` (``len(self)`` appends), the
        later modules moving up one name; returns ``self``, as torch."""
        name = f"{type(self).__name__}.insert"
        # torch's ModuleList.insert takes None (an empty slot), Sequential's asserts a Module
        module = _module(name, module, none_ok=isinstance(self, ModuleList))
        n = len(self)
        index = check_index(name, "index", index)
        if not -n <= index <= n:
            raise IndexError(f"{name}: index {index} is out of range for {n} modules")
        keys = list(self._modules)
        if keys != [str(i) for i in range(n)]:
            raise ValueError(
                f"{name}: the modules are named {keys}, not 0, 1, ...; insert renumbers "
                "them (torch fails here too); build a new container instead"
            )
        mods = list(self._modules.values())
        mods.insert(index + n if index < 0 else index, module)
        self._renumber(mods)
        return self

    def pop(self, index=-1) -> Module:
        """Remove the module at ``index`` and return it (the rest renumbered)."""
        m = self[index]
        del self[index]
        return m


class Sequential(_Renumbered):
    """Modules applied in order; children are named ``"0"``, ``"1"``, ... as in torch
    (or the keys of an ``OrderedDict``).  Indexing, slicing (a ``Sequential`` keeping
    the children's names, as torch), ``len``, ``append``, ``insert``, ``extend``,
    ``pop``, ``del seq[i]``, ``seq[i] = m``, ``+`` and ``+=`` behave as torch's."""

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            # None: an empty slot, as torch's (a slice or a sum of a Sequential holding
            # one keeps it)
            if m is None:
                self.add_module(name, None)
                continue
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: entry {name}={m!r} is not a convolab Module")
            setattr(self, name, m)

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # torch keeps the names: seq[1:] has "1", "2", ...
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[_index("Sequential", idx, len(self))]

    def __add__(self, other):
        if not isinstance(other, Sequential):
            raise ValueError(
                "Sequential: + supports only Sequential objects, but "
                f"{type(other).__name__} is given"
            )
        return Sequential(*self, *other)

    def __iadd__(self, other):
        if not isinstance(other, Sequential):
            raise ValueError(
                "Sequential: += supports only Sequential objects, but "
                f"{type(other).__name__} is given"
            )
        return self.extend(list(other))

    def forward(self, input):
        x = input
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_out):
        _check_distinct(self)
        g = grad_out
        for m in reversed(self._modules.values()):
            g = m.backward(g)
        return g


class ModuleList(_Renumbered):
    """A list of modules whose parameters the model owns, as ``torch.nn.ModuleList``:
    children ``"0"``, ``"1"``, ...; indexing, slicing (a new ``ModuleList``, renumbered
    as torch), ``len``, iteration, ``append``, ``extend``, ``insert``, ``pop``,
    ``del``, item assignment, ``+`` and ``+=``.  It has no ``forward``: a model's own
    ``forward``/``backward`` loop over it (backward in reverse order)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return list(self._modules.values())[_index("ModuleList", idx, len(self))]

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before ``index`` (negative counts from the end, as
        ``list.insert``; torch's fails there with a KeyError); returns None, as torch."""
        super().insert(index, module)

    def __add__(self, other):
        return ModuleList([*self, *ModuleList(other)])

    def __repr__(self) -> str:
        # torch's: a run of children with equal reprs prints once, "(0-2): 3 x ..."
        reprs = [repr(m) for m in self]
        if not reprs:
            return f"{self._get_name()}()"
        runs: list[list] = []
        for i, r in enumerate(reprs):
            if runs and runs[-1][2] == r:
                runs[-1][1] = i
            else:
                runs.append([i, i, r])
        lines = []
        for a, b, r in runs:
            head = f"({a}): {r}" if a == b else f"({a}-{b}): {b - a + 1} x {r}"
            lines.append(_addindent(head, 2))
        return f"{self._get_name()}(\n  " + "\n  ".join(lines) + "\n)"

    def __iadd__(self, other):
        return self.extend(other)


class ModuleDict(Module):
    """Modules under string keys, as ``torch.nn.ModuleDict``: ``d[key]``, ``d[key] =
    m``, ``del d[key]``, ``in``, ``len``, iteration over keys, ``keys``/``values``/
    ``items``, ``update``, ``pop`` and ``clear``, in insertion order."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, _module("ModuleDict", module, none_ok=True))

    def __delitem__(self, key: str) -> None:
        del self._modules[key]
        object.__delattr__(self, key)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key: str) -> Module:
        m = self[key]
        del self[key]
        return m

    def clear(self) -> None:
        for k in list(self._modules):
            del self[k]

    def update(self, modules) -> None:
        """Add or replace modules from a mapping or an iterable of ``(key, module)``."""
        items = modules.items() if hasattr(modules, "items") else modules
        if isinstance(items, Module) or not hasattr(items, "__iter__"):
            raise TypeError(f"ModuleDict.update: expected a mapping or an iterable of "
                            f"(key, module) pairs, got {type(modules).__name__}")
        for j, entry in enumerate(items):
            if isinstance(entry, Module) or not hasattr(entry, "__len__"):  # as torch
                raise TypeError(f"ModuleDict.update: entry #{j} ({type(entry).__name__}) "
                                "must be a (key, module) pair")
            if len(entry) != 2:
                raise ValueError(f"ModuleDict.update: entry #{j} has length {len(entry)}; "
                                 "it must be a (key, module) pair")
            self[entry[0]] = entry[1]


def _check_distinct(root: Module) -> None:
    """A layer keeps only its last forward: one instance at two places of a model
    would get the wrong input in its backward, so refuse that instead of guessing."""
    where: dict[int, str] = {}

    def walk(m: Module, path: str) -> None:
        for n, c in m._modules.items():
            if c is None:
                continue
            p = f"{path}.{n}" if path else n
            if id(c) in where:
                raise ValueError(
                    f"{type(root).__name__}.backward: the same {type(c).__name__} instance "
                    f"sits at {where[id(c)]!r} and {p!r}; a layer keeps only its last "
                    "forward, so it may appear once in a model that runs backward (to "
                    "share weights, use two layers holding the same Parameter)"
                )
            where[id(c)] = p
            walk(c, p)

    walk(root, "")


class Identity(Module):
    """Returns its input (as an array), as ``torch.nn.Identity``; its arguments are
    ignored, as torch's."""

    def __init__(self, *args, **kwargs):  # torch's Identity ignores its arguments
        super().__init__()
        self._shape = None

    def forward(self, input):
        x = np.asarray(input)
        self._shape = x.shape
        return x

    def backward(self, grad_out):
        return _grad("Identity", grad_out, _need(self._shape, "Identity"))


class Flatten(Module):
    """Flatten the dimensions ``start_dim`` to ``end_dim`` (both included; default 1 to
    -1) into one, as ``torch.nn.Flatten``: ``(2, 3, 4, 5) -> (2, 60)``."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = check_index("Flatten", "start_dim", start_dim)
        self.end_dim = check_index("Flatten", "end_dim", end_dim)
        self._shape = None

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        n = max(x.ndim, 1)  # torch treats a 0-d input as 1-D here
        for arg, v in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -n <= v < n:
                raise ValueError(
                    f"Flatten: {arg}={v} is out of range for a {x.ndim}-D input "
                    f"(must be in [{-n}, {n - 1}])"
                )
        s = self.start_dim % x.ndim if x.ndim else 0
        e = self.end_dim % x.ndim if x.ndim else 0
        if s > e:
            raise ValueError(
                f"Flatten: start_dim={self.start_dim} must not come after end_dim="
                f"{self.end_dim} for a {x.ndim}-D input"
            )
        y = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])
        self._shape = (x.shape, y.shape)
        return y

    def backward(self, grad_out):
        xshape, yshape = _need(self._shape, "Flatten")
        return _grad("Flatten", grad_out, yshape).reshape(xshape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---------------------------------------------------------------------------
# Linear


class Linear(Module):
    """``y = x @ weight.T + bias``; x: ``(*, in_features)``, weight: ``(out, in)``.

    Initialised as torch does: both U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        rng=None,
        seed=None,
    ):
        super().__init__()
        for arg, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Linear: {arg}={v!r} must be a non-negative int (torch "
                                 "allows 0: an empty weight)")
        check_device("Linear", device)
        bias = check_flag("Linear", "bias", bias)
        self.in_features, self.out_features = int(in_features), int(out_features)
        dt = _float_dtype("Linear", dtype)
        self._rng = make_rng(rng, seed, "Linear")
        shapes = {"weight": (out_features, in_features)}
        if bias:
            shapes["bias"] = (out_features,)
        check_arrays("Linear", shapes, dt,
                     f"in_features={in_features}, out_features={out_features}")
        self.weight = Parameter(np.empty((out_features, in_features), dt))
        if bias:
            self.bias = Parameter(np.empty((out_features,), dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self._x = None

    def reset_parameters(self) -> None:
        """Draw the weight and bias again (in place) from the layer's generator, as
        torch's default: U(-1/sqrt(in_features), 1/sqrt(in_features))."""
        w = self.weight.data
        w[...] = kaiming_uniform(self._rng, w.shape, self.in_features, w.dtype)
        if self.bias is not None:
            b = self.bias.data
            b[...] = kaiming_uniform(self._rng, b.shape, self.in_features, b.dtype)

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: input.shape={x.shape} must end in in_features={self.in_features}"
            )
        _same_dtype("Linear", x, self.weight.data.dtype)
        self._x = x
        rows = math.prod(x.shape[:-1])  # not -1: a 0-feature input has size 0
        y = matmul(x.reshape(rows, self.in_features), self.weight.data.T)
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if self.bias is not None:
            y = y + self.bias.data
        return y

    def backward(self, grad_out):
        x = _need(self._x, "Linear")
        g = _grad("Linear", grad_out, x.shape[:-1] + (self.out_features,))
        rows = math.prod(x.shape[:-1])
        g2 = g.reshape(rows, self.out_features)
        self.weight.accumulate(matmul(g2.T, x.reshape(rows, self.in_features)))
        if self.bias is not None:
            self.bias.accumulate(g2.sum(axis=0))
        gx = matmul(g2, self.weight.data)
        return gx.reshape(g.shape[:-1] + (self.in_features,))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


# ---------------------------------------------------------------------------
# Activations


def _keep_where(g: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``np.where(keep, g, 0)`` for floats, branch-free: the bits of ``g`` ANDed with
    all ones or all zeros (+0.0), so inf and NaN outside ``keep`` still give 0."""
    ints = np.dtype(f"i{g.itemsize}")
    bits = keep.astype(ints)
    np.negative(bits, out=bits)
    out = np.empty(g.shape, dtype=g.dtype)
    np.bitwise_and(g.view(ints) if g.flags.c_contiguous else
                   np.ascontiguousarray(g).view(ints), bits, out=out.view(ints))
    return out


@functools.cache
def _relu_order(dtype) -> bool | None:
    """For :class:`ReLU`: True when ``np.maximum(0, x)`` returns -0.0 for ``x = -0.0``,
    False when ``np.maximum(x, 0)`` does, in every loop NumPy runs for ``dtype`` (its SIMD
    body and scalar tail, contiguous and strided); None when neither order is
    dependable.  torch's relu keeps -0.0 (``clamp_min``: ``x < 0 ? 0 : x``)."""
    dtype = np.dtype(dtype)
    zero = dtype.type(0)
    cases = [np.full(n, -0.0, dtype) for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 67)]
    cases += [np.full(70, -0.0, dtype)[::3], np.full((5, 6), -0.0, dtype).T]
    for first in (True, False):
        if all(np.signbit(np.maximum(zero, a) if first else np.maximum(a, zero)).all()
               for a in cases):
            return first
    return None


class ReLU(Module):
    """``max(x, 0)``; the gradient at 0 is 0, and NaN passes through (value and
    gradient), as in torch."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        check_flag("ReLU", "inplace", inplace)  # ignored: the input is never changed
        self._mask = None

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        if x.dtype.kind == "f":
            # branch-free: np.where on a mask of random signs mispredicts every other
            # element (1.6 ms on the demo's 128 x 64 x 40 float32; np.maximum 0.18).
            # maximum keeps NaN; which operand a tie (-0.0 against 0) returns is NumPy's
            # choice per dtype and loop, so the order that keeps -0.0 (as torch does) is
            # found once per dtype (:func:`_relu_order`)
            self._mask = ~(x <= 0)
            zero = x.dtype.type(0)
            order = _relu_order(x.dtype)
            if order is None:
                y = np.maximum(x, zero)
                return np.copysign(y, x, out=y, where=(y == 0) & ~(x < 0))
            return np.maximum(zero, x) if order else np.maximum(x, zero)
        self._mask = x > 0
        return np.where(self._mask, x, np.zeros((), x.dtype))

    def backward(self, grad_out):
        mask = _need(self._mask, "ReLU")
        g = _grad("ReLU", grad_out, mask.shape)
        if g.dtype.kind == "f" and g.dtype.itemsize in (2, 4, 8):
            return _keep_where(g, mask)
        return np.where(mask, g, np.zeros((), g.dtype))


class SiLU(Module):
    """``x * sigmoid(x)`` (swish)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        check_flag("SiLU", "inplace", inplace)  # ignored: the input is never changed
        self._cache = None

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        s = _sigmoid(x)
        self._cache = (x, s)
        return x * s

    def backward(self, grad_out):
        x, s = _need(self._cache, "SiLU")
        return _grad("SiLU", grad_out, x.shape) * (s * (1 + x * (1 - s)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow warnings for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_MATH_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    """``scipy.special.erf``; without SciPy (a NumPy-only install) Python's ``math.erf``
    element by element: the same values, ~50x slower."""
    try:
        from scipy.special import erf
    except ModuleNotFoundError:
        return np.asarray(_MATH_ERF(x), dtype=x.dtype)  # (a 0-d input gives a float)
    return erf(x)


class GELU(Module):
    """``x * Phi(x)`` as ``torch.nn.GELU``.

    ``approximate='none'`` (torch's default) uses the exact erf form, computed with
    ``scipy.special.erf`` (imported on first use; without SciPy, ``math.erf`` per element,
    the same values more slowly); ``approximate='tanh'`` uses
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` and needs NumPy only.
    """

    _K = math.sqrt(2.0 / math.pi)

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate={approximate!r} must be 'none' or 'tanh'")
        self.approximate = approximate
        self._cache = None

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        if self.approximate == "tanh":
            t = np.tanh(self._K * (x + 0.044715 * x**3))
            self._cache = (x, t)
            return 0.5 * x * (1 + t)
        cdf = 0.5 * (1 + _erf(x * (1 / math.sqrt(2.0)))).astype(x.dtype, copy=False)
        self._cache = (x, cdf)
        return x * cdf

    def backward(self, grad_out):
        x, c = _need(self._cache, "GELU")
        g = _grad("GELU", grad_out, x.shape)
        if self.approximate == "tanh":
            dinner = self._K * (1 + 3 * 0.044715 * x * x)
            return g * (0.5 * (1 + c) + 0.5 * x * (1 - c * c) * dinner)
        pdf = np.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return g * (c + x * pdf)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def _probability(name: str, arg: str, p) -> float:
    """``p`` as a float in [0, 1]: a real number or a one-element tensor, as torch's
    ``float``; a bool, a string, a list or a NumPy array is a TypeError."""
    rule = "must be a number between 0 and 1"
    if isinstance(p, (bool, np.bool_, str, bytes, np.ndarray)):
        raise TypeError(f"{name}: {arg}={p!r} {rule}")
    try:
        v = float(p)
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: a tensor's
        raise TypeError(f"{name}: {arg}={p!r} {rule}") from exc
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: {arg}={p!r} {rule}")
    return v


class Dropout(Module):
    """Zero each element with probability ``p`` in training, scale the rest by 1/(1-p).

    The mask comes from the layer's own generator (``rng``/``seed``); evaluation mode
    is the identity.  Masks cannot match torch's random stream.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, rng=None, seed=None):
        super().__init__()
        check_flag("Dropout", "inplace", inplace)  # ignored: the input is never changed
        self.p = _probability("Dropout", "p", p)
        self._rng = make_rng(rng, seed, "Dropout")
        self._scale = None
        self._shape = None

    def forward(self, input):
        x = as_array(f"{type(self).__name__}: input", input)
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        if self.p == 1.0:
            self._scale = np.zeros(x.shape, x.dtype)
        else:
            keep = self._rng.random(x.shape) >= self.p
            self._scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, grad_out):
        g = _grad("Dropout", grad_out, _need(self._shape, "Dropout"))
        return g if self._scale is None else g * self._scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---------------------------------------------------------------------------
# Pooling


def _pool_out(spec: ConvSpec, x_spatial, ceil_mode: bool) -> tuple[int, ...]:
    return tuple(
        pool_output_size(n, k, s, p, d, ceil_mode)
        for n, k, s, (p, _), d in zip(
            x_spatial, spec.kernel_size, spec.stride, spec.padding, spec.dilation
        )
    )


def _crop(xp: np.ndarray, pairs, spatial) -> np.ndarray:
    return xp[(Ellipsis,) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(spatial, pairs))]


def _pool_stride(stride, kernel_size: tuple[int, ...]) -> tuple[int, ...]:
    """A pooling layer's stride: torch's None, and an empty list or tuple, mean the
    kernel size."""
    if stride is None or (isinstance(stride, (list, tuple)) and not stride):
        return kernel_size
    return as_tuple("stride", stride, len(kernel_size))


class _PoolNd(Module):
    """Pooling geometry.  The attributes keep the forms they were given (``kernel_size=2``
    stays ``2``; ``stride=None`` becomes ``kernel_size``), as torch's ``MaxPool2d`` and
    ``AvgPool2d`` do (``_as_tuples``: converted to tuples, as torch's ``AvgPool1d``); each
    forward reads them afresh, so a layer changed after construction pools as it says."""

    _rank = 0
    _as_tuples = False

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        if self._as_tuples:
            self.kernel_size, self.stride, self.padding, self.dilation = self._tuples()
        self.ceil_mode = check_flag(name, "ceil_mode", ceil_mode)
        # validates kernel/stride/padding now, with a size that always fits
        k, _, _, d = self._tuples()
        self._geometry(tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d)), name)
        self._cache = None

    def _tuples(self):
        """``(kernel_size, stride, padding, dilation)`` as tuples of ``_rank`` ints."""
        r = self._rank
        k = as_tuple("kernel_size", self.kernel_size, r)
        return (k, _pool_stride(self.stride, k), as_tuple("padding", self.padding, r),
                as_tuple("dilation", self.dilation, r))

    def _geometry(self, spatial, name=None):
        name = name or type(self).__name__
        r = self._rank
        k, s, p, d = self._tuples()
        for pp, kk in zip(p, k):
            if pp < 0 or pp > kk // 2:
                raise ValueError(
                    f"{name}: padding={p} must be non-negative and at most half "
                    f"the kernel_size={k}"
                )
        spec = make_spec(k, s, p, d)
        out = _pool_out(spec, spatial, self.ceil_mode)
        if any(o <= 0 for o in out):
            raise ValueError(
                f"{name}: input spatial size {tuple(spatial)} is too small for kernel_size="
                f"{k}, stride={s}, padding={p}, dilation={d} (output size {out})"
            )
        # extra right padding so the last (ceil-mode) window fits in the buffer
        his = [
            max(pp, (o - 1) * ss + dd * (kk - 1) + 1 - n - pp)
            for n, o, kk, ss, pp, dd in zip(spatial, out, k, spec.stride, p, spec.dilation)
        ]
        pairs = tuple(zip(p, his))
        assert len(pairs) == r
        return ConvSpec(spec.kernel_size, spec.stride, pairs, spec.dilation), out

    _kinds, _rule = "f", "a floating dtype"

    def _batched(self, x):
        name = type(self).__name__
        x = _check_input(name, x, (self._rank + 1, self._rank + 2), self._kinds, self._rule)
        unbatched = x.ndim == self._rank + 1
        return (x[None] if unbatched else x), unbatched

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, ceil_mode={self.ceil_mode}"
        )


def _first_inside(spec: ConvSpec, O) -> np.ndarray:
    """Per output, the index (in ``kernel_offsets`` order) of the window's first tap
    inside the input: where torch sends the gradient of a window whose in-bounds
    values are all -inf (padding never takes it)."""
    first = np.zeros((1,) * len(O), dtype=np.int32)
    for ax, (o, k, s, (p, _), d) in enumerate(
        zip(O, spec.kernel_size, spec.stride, spec.padding, spec.dilation)
    ):
        t = np.maximum(0, -((np.arange(o) * s - p) // d))  # ceil((p - o*s) / d), >= 0
        shape = [1] * len(O)
        shape[ax] = o
        first = first * k + t.reshape(shape).astype(np.int32)
    return first


class _MaxPoolNd(_PoolNd):
    """Max over each window; padding counts as -inf.  The backward sends each
    output gradient to the first maximal element of its window (torch's choice).
    A window that reads no input element (dilation and padding can make one) gives
    -inf and, as torch, the index of the window's first tap at or past 0 (beyond the
    plane's end); its gradient goes nowhere (torch's backward writes it out of bounds).
    Integer inputs (any width, as torch's 2-D and 3-D max pooling) give integer
    outputs and have no backward."""

    _kinds, _rule = "fiu", "a floating or integer dtype (not bool)"

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )

    def __init__(
        self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False
    ):
        indices = check_flag(type(self).__name__, "return_indices", return_indices)
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = indices

    def _indices(self, spec: ConvSpec, O, spatial, arg: np.ndarray) -> np.ndarray:
        """torch's ``return_indices``: for each output, the flat index (within its
        ``(n, c)`` plane of the unpadded input) of the element it took, int64."""
        taps = np.array(list(kernel_offsets(spec)), dtype=np.int64).reshape(-1, len(O))
        flat = np.zeros(arg.shape, dtype=np.int64)
        for ax, (o, s, (lo, _), d, n) in enumerate(
            zip(O, spec.stride, spec.padding, spec.dilation, spatial)
        ):
            shape = [1] * len(O)
            shape[ax] = o
            start = (np.arange(o, dtype=np.int64) * s - lo).reshape(shape)
            flat = flat * n + start + taps[arg, ax] * d
        return flat

    def forward(self, input):
        xb, unbatched = self._batched(input)
        spec, O = self._geometry(xb.shape[2:])
        low = np.iinfo(xb.dtype).min if xb.dtype.kind in "iu" else -np.inf
        xp = pad_spatial(xb, spec.padding, low)
        best = np.full(xb.shape[:2] + O, low, dtype=xb.dtype)
        arg = np.zeros(xb.shape[:2] + O, dtype=np.int32)
        arg[...] = _first_inside(spec, O)
        pre = (slice(None), slice(None))
        for i, t in enumerate(kernel_offsets(spec)):
            v = xp[pre + tap_slices(t, spec, O)]
            upd = (v > best) | np.isnan(v) if xb.dtype.kind == "f" else v > best
            best = np.where(upd, v, best)
            arg[upd] = i
        self._cache = (spec, O, xb.shape, xp.shape, arg, unbatched, xb.dtype)
        out = best[0] if unbatched else best
        if self.return_indices:
            idx = self._indices(spec, O, xb.shape[2:], arg)
            return out, (idx[0] if unbatched else idx)
        return out

    def backward(self, grad_out):
        spec, O, xshape, pshape, arg, unbatched, dtype = _need(self._cache, type(self).__name__)
        _no_integer_grad(type(self).__name__, dtype)
        g = _grad(type(self).__name__, grad_out, (xshape[1:2] if unbatched else xshape[:2]) + O)
        g = g[None] if unbatched else g
        gxp = np.zeros(pshape, dtype=g.dtype)
        zero = np.zeros((), g.dtype)
        pre = (slice(None), slice(None))
        for i, t in enumerate(kernel_offsets(spec)):
            gxp[pre + tap_slices(t, spec, O)] += np.where(arg == i, g, zero)
        gx = np.ascontiguousarray(_crop(gxp, spec.padding, xshape[2:]))
        return gx[0] if unbatched else gx


class _MaxUnpoolNd(Module):
    """The partial inverse of max pooling, as ``torch.nn.MaxUnpool*``: ``forward(input,
    indices, output_size=None)`` puts each input value at its index (a flat position in
    its ``(n, c)`` output plane, as ``MaxPool(return_indices=True)`` gives) and zeros
    elsewhere.  The output size is ``(S - 1) * stride - 2 * padding + kernel_size``, or
    ``output_size`` (full or spatial) strictly within ``stride`` of it.  ``backward``
    gathers the output gradient at the indices."""

    _rank = 0

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        r = self._rank
        self.kernel_size = as_tuple("kernel_size", kernel_size, r)
        self.stride = _pool_stride(stride, self.kernel_size)
        self.padding = as_tuple("padding", padding, r)
        name = type(self).__name__
        for arg, vals, low in (("kernel_size", self.kernel_size, 1),
                               ("stride", self.stride, 1), ("padding", self.padding, 0)):
            if any(v < low for v in vals):
                raise ValueError(f"{name}: {arg}={vals} must be >= {low}")
        self._cache = None

    def _out_size(self, spatial, output_size) -> tuple[int, ...]:
        name, r = type(self).__name__, self._rank
        default = tuple((n - 1) * s - 2 * p + k for n, s, p, k in
                        zip(spatial, self.stride, self.padding, self.kernel_size))
        if output_size is None:
            out = default
        else:
            size = tuple(check_index(name, "output_size", v) for v in output_size)
            size = size[2:] if len(size) == r + 2 else size
            if len(size) != r:
                raise ValueError(f"{name}: output_size={tuple(output_size)} must have {r} or "
                                 f"{r + 2} entries")
            for d, (o, s) in enumerate(zip(size, self.stride)):
                if not default[d] - s < o < default[d] + s:
                    raise ValueError(
                        f"{name}: output_size={size} must be strictly between "
                        f"{default[d] - s} and {default[d] + s} in dimension {d} (the "
                        f"default {default[d]} plus or minus the stride)"
                    )
            out = size
        if any(o < 0 for o in out):
            raise ValueError(f"{name}: the output size {out} must not be negative")
        return out

    def forward(self, input, indices, output_size=None):
        name, r = type(self).__name__, self._rank
        x = _check_input(name, input, (r + 1, r + 2))
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{name}: indices has dtype {idx.dtype}; it must hold integers")
        if idx.shape != x.shape:
            raise ValueError(f"{name}: indices.shape={idx.shape} must equal "
                             f"input.shape={x.shape}")
        unbatched = x.ndim == r + 1
        xb, ib = (x[None], idx[None]) if unbatched else (x, idx)
        out = self._out_size(xb.shape[2:], output_size)
        total = math.prod(out)
        N, C = xb.shape[:2]
        P = math.prod(xb.shape[2:])  # not -1: an empty batch has size 0
        flat = ib.reshape(N, C, P).astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() >= total):
            raise ValueError(
                f"{name}: indices must be in [0, {total}) for an output of spatial size "
                f"{out}, got [{flat.min()}, {flat.max()}]"
            )
        y = np.zeros((N, C, total), dtype=xb.dtype)
        np.put_along_axis(y, flat, xb.reshape(N, C, P), axis=2)
        self._cache = (flat, xb.shape, (N, C) + out, unbatched)
        y = y.reshape((N, C) + out)
        return y[0] if unbatched else y

    def backward(self, grad_out):
        name = type(self).__name__
        flat, xshape, yshape, unbatched = _need(self._cache, name)
        g = _grad(name, grad_out, yshape[1:] if unbatched else yshape)
        g = g.reshape(yshape[0], yshape[1], math.prod(yshape[2:]))
        gx = np.take_along_axis(g, flat, axis=2).reshape(xshape)
        return gx[0] if unbatched else gx

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _avg_divisors(spec: ConvSpec, spatial, O, count_include_pad: bool) -> np.ndarray:
    """Per-output divisor, broadcastable to ``(N, C, *O)``: torch's window sizes.

    A window starting at ``o*s - p`` ends at ``min(start + k, n + p)``; with
    ``count_include_pad=False`` it is also clipped to the input ``[0, n)``.
    """
    div = np.ones((), dtype=np.float64)
    r = len(spatial)
    for ax, (n, o, k, s, (p, _)) in enumerate(
        zip(spatial, O, spec.kernel_size, spec.stride, spec.padding)
    ):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        shape = [1] * r
        shape[ax] = o
        div = div * (end - start).reshape(shape)
    return div


class _AvgPoolNd(_PoolNd):
    """Mean over each window, torch's divisors (``count_include_pad``, ``divisor_override``).
    float16 sums in float32, as torch; int64 inputs (which torch also takes) sum in
    int64 and divide rounding toward zero, and have no backward."""

    _kinds, _rule = "fl", "a floating dtype or int64 (as torch)"

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        if divisor_override is not None and (
            not isinstance(divisor_override, (int, np.integer)) or divisor_override <= 0
        ):
            raise ValueError(
                f"{type(self).__name__}: divisor_override={divisor_override!r} must be a "
                "positive int or None"
            )
        self.count_include_pad = check_flag(
            type(self).__name__, "count_include_pad", count_include_pad
        )
        self.divisor_override = divisor_override

    def forward(self, input):
        xb, unbatched = self._batched(input)
        spec, O = self._geometry(xb.shape[2:])
        if self._rank == 3 and any(n < k for n, k in zip(xb.shape[2:], spec.kernel_size)):
            raise ValueError(  # torch's 3-D average pooling alone checks this (unpadded)
                f"{type(self).__name__}: input spatial size {xb.shape[2:]} must be at least "
                f"the kernel_size={spec.kernel_size} in every dimension (as torch)"
            )
        xp = pad_spatial(xb, spec.padding, 0)
        acc = _acc_dtype(xb.dtype)
        total = np.zeros(xb.shape[:2] + O, dtype=acc)
        pre = (slice(None), slice(None))
        for t in kernel_offsets(spec):
            total += xp[pre + tap_slices(t, spec, O)]
        div = self._divisor(spec, xb.shape[2:], O, acc)
        if acc.kind == "i":  # C's integer division, as torch: toward zero
            y = np.where(total < 0, -(-total // div), total // div)
        else:
            y = (total / div).astype(xb.dtype, copy=False)
        self._cache = (spec, O, xb.shape, xp.shape, unbatched, xb.dtype)
        return y[0] if unbatched else y

    def _divisor(self, spec, spatial, O, dtype) -> np.ndarray:
        if self.divisor_override is not None:
            return np.asarray(self.divisor_override, dtype=dtype)
        return _avg_divisors(spec, spatial, O, self.count_include_pad).astype(dtype)

    def backward(self, grad_out):
        spec, O, xshape, pshape, unbatched, dtype = _need(self._cache, type(self).__name__)
        _no_integer_grad(type(self).__name__, dtype)
        g = _grad(type(self).__name__, grad_out, (xshape[1:2] if unbatched else xshape[:2]) + O)
        g = g[None] if unbatched else g
        acc = _acc_dtype(g.dtype)
        gs = g / self._divisor(spec, xshape[2:], O, acc)
        gxp = np.zeros(pshape, dtype=acc)
        pre = (slice(None), slice(None))
        for t in kernel_offsets(spec):
            gxp[pre + tap_slices(t, spec, O)] += gs
        gx = np.ascontiguousarray(_crop(gxp, spec.padding, xshape[2:]), dtype=g.dtype)
        return gx[0] if unbatched else gx

    def extra_repr(self) -> str:  # torch's: no ceil_mode or count_include_pad
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _adaptive_windows(n: int, o: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's adaptive windows along one axis: output i averages ``[start[i], end[i])``
    = ``[floor(i n/o), ceil((i+1) n/o))``."""
    i = np.arange(o)
    return (i * n) // o, -((-(i + 1) * n) // o)


def _adaptive_matrix(n: int, o: int, dtype) -> np.ndarray:
    """``(o, n)`` averaging matrix: row i averages :func:`_adaptive_windows`' window i."""
    start, end = _adaptive_windows(n, o)
    j = np.arange(n)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _window_means(x: np.ndarray, axis: int, n: int, o: int, acc) -> np.ndarray:
    """Means of ``x`` over :func:`_adaptive_windows` along ``axis`` (length ``n`` to
    ``o``), each window summed on its own: the path for inputs holding inf or NaN (one
    step per output position along the axis)."""
    start, end = _adaptive_windows(n, o)
    xa = np.moveaxis(x, axis, -1)
    out = np.empty(xa.shape[:-1] + (o,), dtype=acc)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as torch
        for i, (a, b) in enumerate(zip(start, end)):
            out[..., i] = xa[..., a:b].sum(axis=-1, dtype=acc) / acc.type(b - a)
    return np.moveaxis(out, -1, axis)


def _window_spread(g: np.ndarray, axis: int, n: int, o: int, acc) -> np.ndarray:
    """The adjoint of :func:`_window_means`: each output's gradient over its count,
    added to the ``n`` positions of its window only (for gradients holding inf or NaN)."""
    start, end = _adaptive_windows(n, o)
    ga = np.moveaxis(g, axis, -1)
    out = np.zeros(ga.shape[:-1] + (n,), dtype=acc)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as torch
        for i, (a, b) in enumerate(zip(start, end)):
            out[..., a:b] += (ga[..., i] / acc.type(b - a))[..., None]
    return np.moveaxis(out, -1, axis)


class _AdaptiveAvgPoolNd(Module):
    """Average over torch's adaptive windows, one small matrix per spatial dimension."""

    _rank = 0

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size  # the form given, as torch (its repr too)
        self._sizes()
        self._cache = None

    def _sizes(self) -> tuple[int | None, ...]:
        r, output_size = self._rank, self.output_size
        if isinstance(output_size, (list, tuple)):
            vals = tuple(output_size)
            if len(vals) != r:
                raise ValueError(f"{type(self).__name__}: output_size={vals} must have {r} entries")
        else:
            vals = (output_size,) * r
        for v in vals:
            if v is not None and (isinstance(v, (bool, np.bool_))
                                  or not isinstance(v, (int, np.integer)) or v < 0):
                raise ValueError(
                    f"{type(self).__name__}: output_size={output_size!r} must be "
                    "non-negative ints (or None to keep a dimension)"
                )
        return vals

    def forward(self, input):
        r = self._rank
        x = _check_input(type(self).__name__, input, (r + 1, r + 2))
        spatial = x.shape[-r:]
        if 0 in x.shape[-r - 1 :]:
            raise ValueError(
                f"{type(self).__name__}: input.shape={x.shape} must have non-zero channel "
                "and spatial sizes (as torch)"
            )
        acc = _acc_dtype(x.dtype)  # float16 sums in float32, as torch
        mats = [
            _adaptive_matrix(n, n if o is None else int(o), acc)
            for n, o in zip(spatial, self._sizes())
        ]
        y = x
        if not all_finite(x):
            # the matrices multiply every value by the zeros outside its windows, and
            # inf * 0 is NaN: torch's sums over the windows themselves give NaN only where
            # a window holds NaN or both infinities
            for ax, m in enumerate(mats):
                y = _window_means(y, x.ndim - r + ax, m.shape[1], m.shape[0], acc)
        else:
            with _blas_single_thread():  # one BLAS thread, as in the convolutions
                for ax, m in enumerate(mats):
                    y = np.tensordot(y, m, axes=([x.ndim - r + ax], [1]))
                    y = np.moveaxis(y, -1, x.ndim - r + ax)
        self._cache = (mats, x.ndim, y.shape)
        return np.ascontiguousarray(y, dtype=x.dtype)

    def backward(self, grad_out):
        mats, ndim, yshape = _need(self._cache, type(self).__name__)
        r = self._rank
        g = _grad(type(self).__name__, grad_out, yshape)
        dtype = g.dtype
        if not all_finite(g):  # as in forward: no inf * 0 outside the windows
            for ax, m in enumerate(mats):
                g = _window_spread(g, ndim - r + ax, m.shape[1], m.shape[0], _acc_dtype(dtype))
            return np.ascontiguousarray(g, dtype=dtype)
        with _blas_single_thread():
            for ax, m in enumerate(mats):
                g = np.moveaxis(np.tensordot(g, m, axes=([ndim - r + ax], [0])), -1, ndim - r + ax)
        return np.ascontiguousarray(g, dtype=dtype)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# ---------------------------------------------------------------------------
# Batch normalisation


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the channels (axis 1): over the batch first (rows of
    whole planes, vectorised), then along each channel's positions.  ``a.sum(axis=(0,
    2, ...))`` walked the strided axes element by element: 0.28 against 0.04 ms on
    the demo's 128 x 64 x 40."""
    acc = np.float32 if a.dtype.itemsize < 4 else a.dtype  # float16 sums in float32
    a = a.reshape(a.shape[:2] + (math.prod(a.shape[2:]),))
    return a.sum(axis=0, dtype=acc).sum(axis=-1)


class _BatchNorm(Module):
    """Normalise each channel over the batch (and spatial dims), as ``torch.nn.BatchNorm*``.

    Training: batch statistics (biased variance) normalise; the running variance is
    updated with the unbiased one, ``running = (1 - momentum) running + momentum batch``
    (``momentum=None``: cumulative average).  Evaluation: the running statistics.
    State-dict keys: ``weight, bias, running_mean, running_var, num_batches_tracked``.
    """

    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        num_features = check_index(name, "num_features", num_features)
        if num_features <= 0:
            raise ValueError(f"{name}: num_features={num_features!r} must be a positive int")
        check_real(name, eps=eps)
        if eps <= 0:
            raise ValueError(f"{name}: eps={eps!r} must be positive")
        if momentum is not None:
            check_real(name, momentum=momentum)
        check_device(name, device)
        dt = _float_dtype(name, dtype)
        affine = check_flag(name, "affine", affine)
        track_running_stats = check_flag(name, "track_running_stats", track_running_stats)
        bias = check_flag(name, "bias", bias)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        names = (["weight"] + ["bias"] * bias) * affine
        names += ["running_mean", "running_var"] * track_running_stats
        check_arrays(name, {n: (num_features,) for n in names}, dt, f"num_features={num_features}")
        if affine:
            self.weight = Parameter(np.ones(num_features, dt))
            if bias:
                self.bias = Parameter(np.zeros(num_features, dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dt))
            self.register_buffer("running_var", np.ones(num_features, dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self._cache = None

    def reset_running_stats(self) -> None:
        """Running mean 0, variance 1, no batches tracked (in place), as torch."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        """The running statistics reset, and the affine weight 1 and bias 0, as torch."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.data[...] = 1
        if self.bias is not None:
            self.bias.data[...] = 0

    def _axes_shape(self, x):
        name = type(self).__name__
        x = _check_input(name, x, self._ranks)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}: input.shape={x.shape} has {x.shape[1]} channels, expected "
                f"num_features={self.num_features}"
            )
        held = self.weight if self.weight is not None else getattr(self, "running_mean", None)
        if held is not None:  # the dtype of what it holds now (a state dict may change it)
            _same_dtype(name, x, np.asarray(held).dtype)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x, axes, shape

    def forward(self, input):
        x, axes, shape = self._axes_shape(input)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            m = x.size // x.shape[1]
            if m <= 1:
                raise ValueError(
                    f"{type(self).__name__}: expected more than 1 value per channel when "
                    f"training, got input.shape={x.shape}"
                )
            mean = (_channel_sum(x) / m).astype(x.dtype)
            xc = x - mean.reshape(shape)
            var = (_channel_sum(xc * xc) / m).astype(x.dtype)
            if self.training and self.track_running_stats:
                self._update_running(mean, var * (m / (m - 1)))
        else:
            mean, var = self.running_mean.astype(x.dtype), self.running_var.astype(x.dtype)
            xc = x - mean.reshape(shape)
        invstd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        # one multiply (and add) per element: the affine map folded into the
        # normalisation's scale; the backward works from xc and invstd
        scale = invstd if not self.affine else invstd * self.weight.data
        y = xc * scale.reshape(shape)
        if self.affine and self.bias is not None:
            y += self.bias.data.reshape(shape)
        self._cache = (xc, invstd, shape, use_batch)
        return y

    def _update_running(self, mean, unbiased_var):
        n = self.num_batches_tracked + 1
        self._set_buffer("num_batches_tracked", np.array(n, dtype=np.int64))
        mom = 1.0 / float(n) if self.momentum is None else self.momentum
        dt = self.running_mean.dtype
        self._set_buffer("running_mean", ((1 - mom) * self.running_mean + mom * mean).astype(dt))
        self._set_buffer(
            "running_var", ((1 - mom) * self.running_var + mom * unbiased_var).astype(dt)
        )

    def backward(self, grad_out):
        xc, invstd, shape, use_batch = _need(self._cache, type(self).__name__)
        g = _grad(type(self).__name__, grad_out, xc.shape)
        scale = invstd if not self.affine else invstd * self.weight.data
        if not use_batch and not self.affine:  # fixed statistics: an affine map
            return g * scale.reshape(shape)
        sum_g = _channel_sum(g)
        sum_gxc = _channel_sum(g * xc)
        if self.affine:
            self.weight.accumulate(sum_gxc * invstd)
            if self.bias is not None:
                self.bias.accumulate(sum_g)
        if not use_batch:
            return g * scale.reshape(shape)
        # gx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = xc * invstd, as
        # g * a + xc * b + c per channel: three passes where the written-out form made
        # ten (the demo's BatchNorm1d, 128 x 64 x 40 float32: 1.8 -> 0.4 ms)
        m = xc.size // xc.shape[1]
        b = -scale * invstd * invstd * sum_gxc / m
        c = -scale * sum_g / m
        gx = g * scale.reshape(shape)
        gx += xc * b.reshape(shape)
        gx += c.reshape(shape)
        return gx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


def _rank_cls(base, rank, name, doc, **extra):
    cls = type(name, (base,), {"_rank": rank, "__doc__": doc, **extra})
    cls.__module__ = "convolab.nn"
    return cls


_NO_INDICES = ("  ``return_indices=True``: ``forward`` returns ``(output, indices)``, each "
               "index the flat position (int64) of the element taken within its input plane.")
MaxPool1d = _rank_cls(_MaxPoolNd, 1, "MaxPool1d",
                      "As torch.nn.MaxPool1d. " + _MaxPoolNd.__doc__ + _NO_INDICES)
MaxPool2d = _rank_cls(_MaxPoolNd, 2, "MaxPool2d",
                      "As torch.nn.MaxPool2d. " + _MaxPoolNd.__doc__ + _NO_INDICES)
MaxUnpool1d = _rank_cls(_MaxUnpoolNd, 1, "MaxUnpool1d",
                        "As torch.nn.MaxUnpool1d. " + _MaxUnpoolNd.__doc__)
MaxPool3d = _rank_cls(_MaxPoolNd, 3, "MaxPool3d",
                      "As torch.nn.MaxPool3d. " + _MaxPoolNd.__doc__ + _NO_INDICES)
MaxUnpool2d = _rank_cls(_MaxUnpoolNd, 2, "MaxUnpool2d",
                        "As torch.nn.MaxUnpool2d. " + _MaxUnpoolNd.__doc__)
MaxUnpool3d = _rank_cls(_MaxUnpoolNd, 3, "MaxUnpool3d",
                        "As torch.nn.MaxUnpool3d. " + _MaxUnpoolNd.__doc__)
AvgPool1d = _rank_cls(_AvgPoolNd, 1, "AvgPool1d",
                      "As torch.nn.AvgPool1d (``divisor_override`` is a convolab extension "
                      "here: torch's AvgPool1d has none). " + _AvgPoolNd.__doc__,
                      _as_tuples=True)
AvgPool2d = _rank_cls(_AvgPoolNd, 2, "AvgPool2d", "As torch.nn.AvgPool2d. " + _AvgPoolNd.__doc__)
AvgPool3d = _rank_cls(_AvgPoolNd, 3, "AvgPool3d", "As torch.nn.AvgPool3d. " + _AvgPoolNd.__doc__)
AdaptiveAvgPool1d = _rank_cls(
    _AdaptiveAvgPoolNd,
    1,
    "AdaptiveAvgPool1d",
    "As torch.nn.AdaptiveAvgPool1d. " + _AdaptiveAvgPoolNd.__doc__,
)
AdaptiveAvgPool2d = _rank_cls(
    _AdaptiveAvgPoolNd,
    2,
    "AdaptiveAvgPool2d",
    "As torch.nn.AdaptiveAvgPool2d. " + _AdaptiveAvgPoolNd.__doc__,
)
AdaptiveAvgPool3d = _rank_cls(
    _AdaptiveAvgPoolNd,
    3,
    "AdaptiveAvgPool3d",
    "As torch.nn.AdaptiveAvgPool3d. " + _AdaptiveAvgPoolNd.__doc__,
)
BatchNorm1d = _rank_cls(
    _BatchNorm,
    1,
    "BatchNorm1d",
    "As torch.nn.BatchNorm1d: input (N, C) or (N, C, L). " + _BatchNorm.__doc__,
    _ranks=(2, 3),
)
BatchNorm2d = _rank_cls(
    _BatchNorm,
    2,
    "BatchNorm2d",
    "As torch.nn.BatchNorm2d: input (N, C, H, W). " + _BatchNorm.__doc__,
    _ranks=(4,),
)
BatchNorm3d = _rank_cls(
    _BatchNorm,
    3,
    "BatchNorm3d",
    "As torch.nn.BatchNorm3d: input (N, C, D, H, W). " + _BatchNorm.__doc__,
    _ranks=(5,),
)
