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

    def __repr__(self) -> str:  # torch's
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return (f"IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")


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
    """A trainable array: ``.data`` and ``.grad`` (``None`` until a backward runs).

    ``requires_grad`` (default True), as torch's: a frozen parameter
    (``requires_grad_(False)``) gets no ``.grad`` from ``backward``, so an optimizer,
    which skips parameters whose ``.grad`` is None, leaves it as it is."""

    __array_priority__ = 10
    requires_grad: bool = True  # (a Parameter pickled before this attribute existed)

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        self.data = np.asarray(data)
        self.grad: np.ndarray | None = None
        self.requires_grad = check_flag("Parameter", "requires_grad", requires_grad)

    def requires_grad_(self, requires_grad: bool = True) -> Parameter:
        """Set ``requires_grad`` (in place) and return the parameter, as torch."""
        self.requires_grad = check_flag("requires_grad_", "requires_grad", requires_grad)
        return self

    def numel(self) -> int:
        """The number of values (``size``), as torch's ``numel()``."""
        return self.data.size

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
        if not self.requires_grad:  # frozen: no gradient, as torch
            return
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def _no_arithmetic(self, *args):
        raise TypeError(
            "Parameter: no arithmetic on a Parameter (convolab has no autograd to record "
            "it); compute with its array, p.data, and send the gradient to "
            "p.accumulate(grad) in backward"
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _no_arithmetic
    __truediv__ = __rtruediv__ = __matmul__ = __rmatmul__ = __pow__ = _no_arithmetic
    __neg__ = __pos__ = _no_arithmetic

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


# torch's Module methods that convolab does not have, each with what to do instead
_TORCH_ONLY = {
    "to": "convolab runs on the CPU in NumPy; build the layers with dtype=... (e.g. "
          "np.float64) instead of converting a model",
    "cuda": "convolab runs on the CPU only",
    "cpu": "convolab runs on the CPU only (the model already is there)",
    "float": "build the layers with dtype=np.float32 (the default) instead",
    "double": "build the layers with dtype=np.float64 instead",
    "half": "build the layers with dtype=... instead",
    "bfloat16": "NumPy has no bfloat16; build the layers with dtype=... instead",
    "type": "build the layers with dtype=... instead",
    "share_memory": "there are no worker processes to share with",
    "register_forward_hook": "hooks are not supported; override forward in a subclass",
    "register_forward_pre_hook": "hooks are not supported; override forward in a subclass",
    "register_full_backward_hook": "hooks are not supported; override backward in a "
                                   "subclass",
    "register_backward_hook": "hooks are not supported; override backward in a subclass",
    "register_full_backward_pre_hook": "hooks are not supported; override backward in a "
                                       "subclass",
    "register_state_dict_pre_hook": "hooks are not supported",
    "register_load_state_dict_post_hook": "hooks are not supported",
}


def _check_name(where: str, kind: str, name) -> None:
    """torch's rules for a parameter, buffer or sub-module name."""
    if not isinstance(name, str):
        raise TypeError(f"{where}: {kind} name={name!r} must be a str")
    if name == "":
        raise KeyError(f"{where}: {kind} name can't be empty")
    if "." in name:
        raise KeyError(f"{where}: {kind} name={name!r} can't contain '.'")


def _sub(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    """Base class: parameters, sub-modules, buffers, train/eval, state dicts."""

    training: bool = True
    # (read-only default for a module pickled before non-persistent buffers existed)
    _non_persistent_buffers: frozenset | set = frozenset()

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
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
        # torch refuses what would silently turn a parameter or a sub-module into a
        # plain attribute (``layer.weight = array`` would no longer be trained)
        if name in params and value is not None and not isinstance(value, Parameter):
            raise TypeError(
                f"cannot assign {type(value).__name__} as parameter {name!r} (a convolab "
                f"Parameter or None expected; to change the values, assign to "
                f"{name}.data, or wrap the array: Parameter(array))"
            )
        if name in self._modules and value is not None and not isinstance(value, (Module,
                                                                                    Parameter)):
            raise TypeError(
                f"cannot assign {type(value).__name__} as child module {name!r} (a "
                "convolab Module or None expected)"
            )
        # a parameter or module replaced by one of its kind keeps its place (torch's
        # order in the state dict and the traversals); anything else leaves the stores
        # (None keeps a parameter's or a sub-module's slot, as torch: an array assigned
        # to it later is refused above instead of becoming a plain attribute the layer
        # would still use; the traversals skip the empty slot, repr shows it)
        own = (self._parameters if isinstance(value, Parameter)
               or (value is None and name in params)
               else self._modules if isinstance(value, Module)
               or (value is None and name in self._modules) else None)
        for store in (self._parameters, self._modules, self._buffers):
            if store is not own:
                store.pop(name, None)
        self._persistent(name, True)
        if own is not None:
            own[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        # forget a parameter, buffer or sub-module too, as torch: not in the state dict
        for store in (self.__dict__.get("_parameters", {}), self.__dict__.get("_modules", {}),
                      self.__dict__.get("_buffers", {})):
            store.pop(name, None)
        if "_parameters" in self.__dict__:
            self._persistent(name, True)
        object.__delattr__(self, name)

    def _persistent(self, name: str, persistent: bool) -> None:
        if persistent == (name not in self._non_persistent_buffers):
            return
        if "_non_persistent_buffers" not in self.__dict__:
            object.__setattr__(self, "_non_persistent_buffers", set())
        (self._non_persistent_buffers.discard if persistent
         else self._non_persistent_buffers.add)(name)

    def __getattr__(self, name):
        # called only for a missing attribute: name torch's API and the alternative
        if name in _TORCH_ONLY:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}: "
                f"torch.nn.Module.{name} has no convolab counterpart ({_TORCH_ONLY[name]})"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_new(self, where: str, kind: str, name: str, store: dict) -> None:
        _check_name(where, kind, name)
        # (an empty slot, e.g. register_parameter("bias", None), may be filled again)
        if name in self.__dict__ and name not in store and self.__dict__[name] is not None:
            raise KeyError(f"{where}: attribute {name!r} already exists")
        # ... but not by another kind: torch refuses add_module("bias", None) on an empty
        # parameter slot, or register_parameter on an empty sub-module slot, instead of
        # moving the slot to another store
        if any(name in other for other in (self._parameters, self._modules, self._buffers)
               if other is not store):
            raise KeyError(f"{where}: attribute {name!r} already exists")
        # a method or class attribute (ModuleDict()["train"] = m) would be shadowed: the
        # module's own train(), forward() or state_dict() would call the child, as torch
        # refuses
        if name not in self.__dict__ and hasattr(type(self), name):
            raise KeyError(f"{where}: attribute {name!r} already exists ({type(self).__name__}"
                           f".{name} would be hidden)")

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """Register a parameter slot, possibly ``None`` (e.g. ``bias=False``)."""
        self._check_new("register_parameter", "parameter", name, self._parameters)
        if value is not None and not isinstance(value, Parameter):
            raise TypeError(
                f"register_parameter: cannot assign {type(value).__name__} to parameter "
                f"{name!r} (a convolab Parameter or None required)"
            )
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        self._persistent(name, True)
        object.__setattr__(self, name, value)
        self._parameters[name] = value  # None: an empty slot, in the state dict's order

    def register_buffer(self, name: str, value: np.ndarray | None,
                        persistent: bool = True) -> None:
        """An array kept with the module but not trained (BatchNorm's running
        statistics); ``None`` is an empty slot.  ``persistent=False``: left out of the
        state dict (and not expected by ``load_state_dict``), as torch."""
        self._check_new("register_buffer", "buffer", name, self._buffers)
        if name in self._parameters or name in self._modules:
            raise KeyError(f"register_buffer: attribute {name!r} already exists")
        if value is not None and not isinstance(value, np.ndarray):
            raise TypeError(
                f"register_buffer: cannot assign {type(value).__name__} to buffer {name!r} "
                "(a NumPy array or None required)"
            )
        persistent = check_flag("register_buffer", "persistent", persistent)
        object.__setattr__(self, name, value)
        self._buffers[name] = value
        self._persistent(name, persistent)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a sub-module as attribute ``name`` (a name ``setattr`` cannot spell,
        e.g. ``"0"``), as torch."""
        self._check_new("add_module", "module", name, self._modules)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a convolab Module")
        if module is None:  # an empty slot, as torch (a later module fills it in place)
            for store in (self._parameters, self._buffers):
                store.pop(name, None)
            self._persistent(name, True)
            self._modules[name] = None
            object.__setattr__(self, name, None)
            return
        setattr(self, name, module)

    register_module = add_module

    def _set_buffer(self, name: str, value: np.ndarray) -> None:
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    # -- look-up by dotted name -------------------------------------------
    def get_submodule(self, target: str = "") -> Module:
        """The sub-module at the dotted path ``target`` (``""``: this module), as torch;
        an AttributeError says which part is missing or not a module."""
        if not isinstance(target, str):
            raise TypeError(f"get_submodule: target={target!r} must be a str")
        mod: Module = self
        if target == "":
            return mod
        for item in target.split("."):
            if not hasattr(mod, item):
                raise AttributeError(
                    f"{type(mod).__name__} has no attribute `{item}` (get_submodule: "
                    f"target={target!r})"
                )
            mod = getattr(mod, item)
            if not isinstance(mod, Module):
                raise AttributeError(f"`{item}` is not a Module (get_submodule: "
                                     f"target={target!r})")
        return mod

    def _get_member(self, where: str, target: str, store: str):
        if not isinstance(target, str):
            raise TypeError(f"{where}: target={target!r} must be a str")
        module_path, _, name = target.rpartition(".")
        mod = self.get_submodule(module_path)
        if getattr(mod, store).get(name) is None and (store == "_parameters"
                                                     or name not in getattr(mod, store)):
            kind = "parameter" if store == "_parameters" else "buffer"
            raise AttributeError(f"`{name}` is not a {kind} of {type(mod).__name__} "
                                 f"({where}: target={target!r})")
        return getattr(mod, store)[name]

    def get_parameter(self, target: str) -> Parameter:
        """The :class:`Parameter` at the dotted path ``target``, as torch."""
        return self._get_member("get_parameter", target, "_parameters")

    def get_buffer(self, target: str) -> np.ndarray:
        """The buffer at the dotted path ``target``, as torch."""
        return self._get_member("get_buffer", target, "_buffers")

    # -- traversal -------------------------------------------------------
    def _named_members(self, store: str, prefix: str, recurse: bool, remove_duplicate: bool):
        # torch's order: module by module (as named_modules), own members first
        mods = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse else [(prefix, self)]
        )
        seen: set[int] = set()
        for mp, m in mods:
            for n, v in getattr(m, store).items():
                if v is None:  # an empty slot is not a member (as torch)
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                yield _sub(mp, n), v

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs (names start with ``prefix + "."`` when one is
        given); ``recurse=False``: this module's own only; a parameter shared by several
        layers comes once (under its first name), as in torch, so an optimizer steps it
        once."""
        recurse = check_flag("named_parameters", "recurse", recurse)
        remove_duplicate = check_flag("named_parameters", "remove_duplicate", remove_duplicate)
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def _named_parameters_all(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for n, p in self._parameters.items():
            if p is not None:  # an empty slot (bias=False) is not a parameter
                yield prefix + n, p
        for mn, m in self._modules.items():
            if m is not None:
                yield from m._named_parameters_all(prefix + mn + ".")

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        """Every trainable :class:`Parameter`, this module's and (``recurse=True``) its
        children's, each once.  A list (torch gives an iterator: ``next(iter(...))``
        works on both)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        """``(dotted name, array)`` for every buffer (non-persistent ones too), each
        array once unless ``remove_duplicate=False``, as torch."""
        recurse = check_flag("named_buffers", "recurse", recurse)
        remove_duplicate = check_flag("named_buffers", "remove_duplicate", remove_duplicate)
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def _named_state_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        # what the state dict holds: persistent, non-None, every place (no de-duplication)
        for n, b in self._buffers.items():
            if b is not None and n not in self._non_persistent_buffers:
                yield prefix + n, b
        for mn, m in self._modules.items():
            if m is not None:
                yield from m._named_state_buffers(prefix + mn + ".")

    def buffers(self, recurse: bool = True) -> list[np.ndarray]:
        """Every buffer's array, in torch's order (a list; torch gives an iterator)."""
        return [b for _, b in self.named_buffers(recurse=recurse)]

    def named_modules(
        self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for this module (name ``prefix``, ``""`` at the top) and
        every module below it, each instance once (``remove_duplicate=False``: at every
        place), as torch."""
        remove_duplicate = check_flag("named_modules", "remove_duplicate", remove_duplicate)
        seen: set[int] = set() if memo is None else memo

        def walk(m: Module, name: str) -> Iterator[tuple[str, Module]]:
            if remove_duplicate:
                if id(m) in seen:
                    return
                seen.add(id(m))
            yield name, m
            for n, c in m._modules.items():
                if c is not None:  # an empty slot (a sub-module set to None)
                    yield from walk(c, _sub(name, n))

        yield from walk(self, prefix)

    def modules(self, remove_duplicate: bool = True) -> Iterator[Module]:
        """This module and every sub-module, depth first, each once."""
        for _, m in self.named_modules(remove_duplicate=remove_duplicate):
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct sub-modules, each instance once (as torch)."""
        seen: set[int] = set()
        for n, c in self._modules.items():
            if c is not None and id(c) not in seen:
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

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (``False``) or unfreeze every parameter, as torch; returns ``self``.
        A frozen parameter gets no ``.grad`` from ``backward``, so optimizers skip it;
        ``backward`` still returns the input's gradient."""
        requires_grad = check_flag("requires_grad_", "requires_grad", requires_grad)
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every parameter's ``.grad`` to None (torch's default), or with
        ``set_to_none=False`` fill an existing ``.grad`` with zeros in place."""
        set_to_none = check_flag("zero_grad", "set_to_none", set_to_none)
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, dropout) for this module and every
        sub-module; returns ``self``."""
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"train: mode={mode!r} must be a bool")
        mode = bool(mode)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """``train(False)``: running statistics, no dropout; returns ``self``."""
        return self.train(False)

    def num_parameters(self) -> int:
        """The number of trainable values (torch has no such method:
        ``sum(p.numel() for p in model.parameters())`` works on both)."""
        return sum(p.size for p in self.parameters())

    # -- state -----------------------------------------------------------
    def state_dict(self, *, prefix: str = "", keep_vars: bool = False
                   ) -> OrderedDict[str, np.ndarray]:
        """Copies of parameters and persistent buffers, under torch's key names
        (each starting with ``prefix``, as torch's); ``keep_vars=True``: the
        :class:`Parameter` objects and buffer arrays themselves, not copies."""
        if not isinstance(prefix, str):
            raise TypeError(f"state_dict: prefix={prefix!r} must be a str")
        keep_vars = check_flag("state_dict", "keep_vars", keep_vars)
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        self._collect_state(out, prefix, keep_vars)
        return out

    def _collect_state(self, out: OrderedDict, prefix: str, keep_vars: bool = False) -> None:
        # torch's order: a module's own parameters, then its buffers, then its children.
        for n, p in self._parameters.items():
            if p is not None:  # an empty slot (bias=False), as torch
                out[prefix + n] = p if keep_vars else p.data.copy()
        for n, b in self._buffers.items():
            if b is not None and n not in self._non_persistent_buffers:
                out[prefix + n] = b if keep_vars else np.array(b, copy=True)
        for mn, m in self._modules.items():
            if m is not None:
                m._collect_state(out, prefix + mn + ".", keep_vars)

    def _under_empty_slot(self, key) -> bool:
        # torch leaves a key below a sub-module set to None out of the unexpected keys
        # (the slot is a name of the module, and no child reads what is below it), so a
        # checkpoint of the full model loads, strictly, into one whose head was removed
        if not isinstance(key, str):
            return False
        m: Module | None = self
        for part in key.split(".")[:-1]:
            if part not in m._modules:
                return False
            m = m._modules[part]
            if m is None:
                return True
        return False

    def load_state_dict(self, state: Mapping[str, object], strict: bool = True):
        """Load arrays (NumPy, or anything ``np.asarray`` accepts, e.g. torch tensors).

        Returns ``(missing_keys, unexpected_keys)`` as torch (a named tuple; both empty
        under ``strict=True``, which raises :class:`StateDictError` instead)."""
        strict = check_flag("load_state_dict", "strict", strict)
        own = dict(self._named_parameters_all(""))
        bufs = dict(self._named_state_buffers())
        # torch fills in a missing BatchNorm counter (checkpoints older than torch 0.4.1)
        optional = {k for k in bufs if k.rpartition(".")[2] == "num_batches_tracked"}
        order = self.state_dict(keep_vars=True)  # torch's order: module by module
        missing = [k for k in order if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own and k not in bufs
                      and not self._under_empty_slot(k)]
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

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function'
        )

    def backward(self, grad_out):
        raise NotImplementedError(
            f"Module [{type(self).__name__}] has no backward: a convolab model defines "
            "backward(grad_out) next to forward, calling its layers' backward in reverse "
            "order (there is no autograd engine)"
        )

    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        # torch's layout: extra_repr, then one "(name): child" line per sub-module
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        for n, m in self._modules.items():
            lines.append(f"({n}): " + _addindent(repr(m), 2))
        main = self._get_name() + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"
