"""Parameter and Module: the small base every layer builds on (no autograd engine).

A layer's ``forward(x)`` keeps what its ``backward(grad_out)`` needs;
``backward`` returns the gradient for the input and *accumulates* into each
parameter's ``.grad``, as torch does.

Because a layer keeps only its *last* forward, each layer instance may appear
once in a model that is differentiated (``Sequential.backward`` raises when one
instance sits at two places).  To share weights between two places, use two
layers and assign one ``Parameter`` to both (``b.weight = a.weight``): their
gradients add up in the shared ``.grad``, and ``parameters()`` lists it once.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np



def check_real(name: str, **values) -> None:
    """TypeError unless every value is a real number (bools excluded)."""
    for arg, v in values.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(
            v, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"{name}: {arg}={v!r} must be a real number")


def check_index(name: str, arg: str, value) -> int:
    """``value`` as an int: an int, a NumPy integer or anything with ``__index__`` (a
    0-d integer tensor), as torch's int arguments; a TypeError naming the argument for
    a bool, a float (``1.7`` is not silently 1), a string or anything else."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name}: {arg}={value!r} must be an int")


def check_flag(name: str, arg: str, value) -> bool:
    """``value`` as a bool: a bool, a NumPy bool or an int (torch tests these flags by
    truthiness); a TypeError naming the argument for anything else (an array or a
    tensor, whose truth value is ambiguous, a string, None)."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return bool(value)
    raise TypeError(f"{name}: {arg}={value!r} must be a bool (True or False)")


def check_device(name: str, device) -> None:
    """ValueError unless ``device`` names the CPU: None, ``'cpu'``, ``'cpu:N'``, or an
    object that prints as one (``torch.device('cpu')``), as torch's constructors take."""
    if device is None:
        return
    text = device if isinstance(device, str) else str(device)
    kind, _, index = text.partition(":")
    if kind != "cpu" or (index and not index.isdigit()) or text.endswith(":"):
        raise ValueError(f"{name}: device={device!r}; convolab runs on the CPU only")


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` did not match, as torch's return value."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(KeyError, ValueError, RuntimeError):
    """``load_state_dict`` found missing or unexpected keys (strict) or an entry of
    another shape (a RuntimeError too, as torch raises, so code written for torch
    catches it)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _loadable(key: str, value, like: np.ndarray) -> np.ndarray:
    """``value`` as a new array of ``like``'s shape and dtype, converted as torch's
    ``copy_`` converts (ints and bools into floats, floats truncated into ints), or an
    error naming ``key``: TypeError for what is not numbers (object, str, bytes,
    datetime, void) and for complex into a real array (the imaginary part would be
    lost); ValueError for another shape, and for a non-finite or out-of-range value
    into an integer array (torch would store garbage)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"load_state_dict: {key} is not an array of numbers ({exc})") from exc
    big = not isinstance(value, np.ndarray) and arr.dtype.kind == "O" and arr.size
    if big and like.dtype.kind in "iu" and all(type(x) is int for x in arr.flat):
        # Python ints that NumPy holds as objects: beyond 64 bits
        raise ValueError(
            f"load_state_dict: {key} holds integers beyond 64 bits, outside the range of "
            f"the model's {like.dtype} {key}"
        )
    if arr.dtype.kind not in "biufc":
        raise TypeError(
            f"load_state_dict: {key} has dtype {arr.dtype}; it must hold numbers (the "
            f"model's {key} is {like.dtype})"
        )
    if arr.shape != like.shape:  # a RuntimeError too, as torch's size mismatch
        raise StateDictError(
            f"load_state_dict: {key} has shape {arr.shape}, expected {like.shape}"
        )
    if arr.dtype.kind == "c" and like.dtype.kind != "c":
        raise TypeError(
            f"load_state_dict: {key} is complex ({arr.dtype}) but the model's {key} is "
            f"{like.dtype}; loading it would drop the imaginary part"
        )
    if like.dtype.kind in "iu" and arr.size and arr.dtype.kind in "iuf":
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(
                f"load_state_dict: {key} holds non-finite values, which the model's "
                f"{like.dtype} {key} cannot hold"
            )
        info = np.iinfo(like.dtype)
        ends = (arr.min(), arr.max())
        lo, hi = (int(np.trunc(v)) if arr.dtype.kind == "f" else int(v) for v in ends)
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"load_state_dict: {key} holds values in [{lo}, {hi}], outside the range "
                f"[{info.min}, {info.max}] of the model's {like.dtype} {key}"
            )
    return arr.astype(like.dtype, copy=True)


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` (``None`` until a backward runs)."""

    __array_priority__ = 10

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)
        self.grad: np.ndarray | None = None

    def __array__(self, dtype=None, copy=None):
        # NumPy 2 passes copy=True for np.array(p) and trusts the result to be a copy.
        if copy is False:
            if dtype is not None and np.dtype(dtype) != self.data.dtype:
                raise ValueError(
                    f"Parameter: a {self.data.dtype} array cannot be viewed as "
                    f"dtype={np.dtype(dtype)} without a copy (copy=False)"
                )
            return self.data
        if dtype is None:
            return self.data.copy() if copy else self.data
        return self.data.astype(dtype, copy=bool(copy))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate(self, g: np.ndarray) -> None:
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters, sub-modules, buffers, train/eval, state dicts."""

    training: bool = True

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        self.training = True

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        # An array (or None) assigned to a buffer's name stays a buffer, as in torch.
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # same place in the state dict
            object.__setattr__(self, name, value)
            return
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """Register a parameter slot, possibly ``None`` (e.g. ``bias=False``)."""
        object.__setattr__(self, name, value)
        if value is None:
            self._parameters.pop(name, None)
        else:
            self._parameters[name] = value

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """An array kept in the state dict but not trained (BatchNorm's running statistics)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def _set_buffer(self, name: str, value: np.ndarray) -> None:
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    # -- traversal -------------------------------------------------------
    def named_parameters(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs; a parameter shared by several layers comes once
        (under its first name), as in torch, so an optimizer steps it once."""
        remove_duplicate = check_flag("named_parameters", "remove_duplicate", remove_duplicate)
        seen: set[int] = set()
        for n, p in self._named_parameters_all(prefix):
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            yield n, p

    def _named_parameters_all(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for n, p in self._parameters.items():
            yield prefix + n, p
        for mn, m in self._modules.items():
            yield from m._named_parameters_all(prefix + mn + ".")

    def parameters(self) -> list[Parameter]:
        """Every trainable :class:`Parameter`, this module's and its children's, each once."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """``(dotted name, array)`` for every buffer, as in the state dict."""
        for n, b in self._buffers.items():
            if b is not None:  # a buffer set to None is not state (as torch)
                yield prefix + n, b
        for mn, m in self._modules.items():
            yield from m.named_buffers(prefix + mn + ".")

    def buffers(self) -> list[np.ndarray]:
        """Every buffer's array, in state-dict order."""
        return [b for _, b in self.named_buffers()]

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for this module (name ``prefix``, ``""`` at the top) and
        every module below it, each instance once, as torch."""
        seen: set[int] = set()

        def walk(m: Module, name: str) -> Iterator[tuple[str, Module]]:
            if id(m) in seen:
                return
            seen.add(id(m))
            yield name, m
            for n, c in m._modules.items():
                yield from walk(c, f"{name}.{n}" if name else n)

        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        """This module and every sub-module, depth first, each once."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct sub-modules, each instance once (as torch)."""
        seen: set[int] = set()
        for n, c in self._modules.items():
            if id(c) not in seen:
                seen.add(id(c))
                yield n, c

    def children(self) -> Iterator[Module]:
        """The direct sub-modules, each once."""
        for _, c in self.named_children():
            yield c

    def apply(self, fn) -> Module:
        """``fn(module)`` for every module below, then this one (torch's order, e.g. to
        re-initialise weights); returns ``self``."""
        for c in self.children():
            c.apply(fn)
        fn(self)
        return self

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (torch's default, ``set_to_none=True``)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, dropout) for this module and every sub-module."""
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"train: mode={mode!r} must be a bool")
        mode = bool(mode)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """``train(False)``: running statistics, no dropout."""
        return self.train(False)

    def num_parameters(self) -> int:
        """The number of trainable values."""
        return sum(p.size for p in self.parameters())

    # -- state -----------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of parameters and buffers, under torch's key names."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        self._collect_state(out, "")
        return out

    def _collect_state(self, out: OrderedDict, prefix: str) -> None:
        # torch's order: a module's own parameters, then its buffers, then its children.
        for n, p in self._parameters.items():
            out[prefix + n] = p.data.copy()
        for n, b in self._buffers.items():
            if b is not None:
                out[prefix + n] = np.array(b, copy=True)
        for mn, m in self._modules.items():
            m._collect_state(out, prefix + mn + ".")

    def load_state_dict(self, state: Mapping[str, object], strict: bool = True):
        """Load arrays (NumPy, or anything ``np.asarray`` accepts, e.g. torch tensors).

        Returns ``(missing_keys, unexpected_keys)`` as torch (a named tuple; both empty
        under ``strict=True``, which raises :class:`StateDictError` instead)."""
        strict = check_flag("load_state_dict", "strict", strict)
        own = dict(self._named_parameters_all(""))
        bufs = dict(self.named_buffers())
        # torch fills in a missing BatchNorm counter (checkpoints older than torch 0.4.1)
        optional = {k for k in bufs if k.rpartition(".")[2] == "num_batches_tracked"}
        missing = [k for k in list(own) + list(bufs) if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own and k not in bufs]
        if strict and (missing or unexpected):
            raise StateDictError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected} "
                "(strict=True needs exactly the model's keys)"
            )
        # convert every entry before changing anything, so a bad dict leaves the model intact
        arrays = {}
        for k, v in state.items():
            if k in own:
                arrays[k] = _loadable(k, v, own[k].data)
            elif k in bufs:
                arrays[k] = _loadable(k, v, np.asarray(bufs[k]))
        for k, arr in arrays.items():
            if k in own:
                own[k].data = arr
            else:
                mod, _, name = k.rpartition(".")
                target = self
                for part in filter(None, mod.split(".")):
                    target = target._modules[part]
                target._set_buffer(name, arr)
        return IncompatibleKeys(missing, unexpected)

    # -- calling ---------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={m!r}" for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner})"
