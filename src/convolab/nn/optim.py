"""Optimizers and learning-rate schedules with ``torch.optim``'s update formulas.

Optimizers keep ``param_groups`` (a list of dicts holding ``params`` and the
hyper-parameters) so a schedule can change ``lr`` (and momentum) between steps,
as torch's schedulers do.  ``step()`` reads each parameter's ``.grad`` and sets a
new ``.data`` array (keep the Parameter, not its old ``.data``); parameters with
``grad is None`` are skipped.  A parameter may appear once across all groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import numpy as np

from .module import Parameter, check_flag, check_real

__all__ = ["SGD", "Adam", "AdamW", "CosineAnnealingLR", "OneCycleLR", "Optimizer"]


class Optimizer:
    defaults: dict = {}

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], defaults: dict):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        seen: set[int] = set()
        for g in groups:
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(
                    f"{type(self).__name__}: params must be Parameters or dicts with a "
                    f"'params' entry, got {g!r}"
                )
            group = dict(self.defaults)
            group.update(g)
            for k, d in self.defaults.items():  # a group's own flags, as the defaults
                if isinstance(d, bool):
                    where = f"param_groups[{len(self.param_groups)}]['{k}']"
                    group[k] = check_flag(type(self).__name__, where, group[k])
            group["params"] = list(group["params"])
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: {p!r} is not a Parameter")
                if id(p) in seen:
                    # stepping one array twice per step would silently double its update
                    raise ValueError(
                        f"{type(self).__name__}: {p!r} appears more than once in the "
                        "parameters; each parameter may be given once"
                    )
                seen.add(id(p))
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}

    def _all_params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def __getstate__(self):
        # ``state`` is keyed by id(p): a pickled or deep-copied optimizer's parameters
        # are new objects with other ids, so the copy lost its momentum buffers and Adam
        # moments (and restarted Adam's step count) unless the keys travel as positions
        out = self.__dict__.copy()
        index = {id(p): i for i, p in enumerate(self._all_params())}
        out["state"] = {index[k]: v for k, v in self.state.items() if k in index}
        return out

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        params = self._all_params()
        saved = state["state"]
        if not all(isinstance(i, int) and 0 <= i < len(params) for i in saved):
            # pickled before the positions: keyed by the ids of parameters that no
            # longer exist, so lost (as they were then); unpickling raised IndexError
            saved = {}
        self.state = {id(params[i]): v for i, v in saved.items()}

    def state_dict(self) -> dict:
        """torch's layout: ``{'state': {index: {...}}, 'param_groups': [{..., 'params':
        [index, ...]}]}``, the parameters numbered in order through the groups; copies,
        so later steps do not change it.  :meth:`load_state_dict` of an optimizer of the
        same class over parameters of the same shapes, in the same groups, continues the
        training where this one is."""
        index = {id(p): i for i, p in enumerate(self._all_params())}
        groups, n = [], 0
        for g in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            saved["params"] = list(range(n, n + len(g["params"])))
            n += len(g["params"])
            groups.append(saved)
        state = {index[k]: copy.deepcopy(v) for k, v in self.state.items() if k in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the hyper-parameters and the state of :meth:`state_dict` (copied: the
        dict is not changed and not shared).  ValueError when its groups do not match
        this optimizer's in number or size, or a state entry does not fit its parameter."""
        name = f"{type(self).__name__}.load_state_dict"
        if (not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict)
                or not isinstance(state_dict["state"], dict)):
            raise TypeError(f"{name}: expected a dict with 'state' and 'param_groups' (from "
                            f"state_dict()), got {type(state_dict).__name__}")
        saved = state_dict["param_groups"]
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.param_groups):
            n = len(saved) if isinstance(saved, (list, tuple)) else saved
            raise ValueError(f"{name}: the state dict has param_groups={n!r}; this optimizer "
                             f"has {len(self.param_groups)} parameter groups")
        by_index = {}
        for i, (g, sg) in enumerate(zip(self.param_groups, saved)):
            if not isinstance(sg, dict) or len(sg.get("params", ())) != len(g["params"]):
                got = len(sg.get("params", ())) if isinstance(sg, dict) else sg
                raise ValueError(f"{name}: param_groups[{i}] of the state dict has "
                                 f"{got!r} parameters; this optimizer's has {len(g['params'])}")
            by_index.update(zip(sg["params"], g["params"]))
        state = {}
        for k, entries in state_dict["state"].items():
            if k not in by_index:
                raise ValueError(f"{name}: state[{k!r}] is not the index of a parameter in "
                                 f"param_groups (indices {sorted(by_index)})")
            p = by_index[k]
            state[id(p)] = {key: _state_entry(name, f"state[{k!r}][{key!r}]", v, p)
                            for key, v in entries.items()}
        self.param_groups = [{**copy.deepcopy({k: v for k, v in sg.items() if k != "params"}),
                              "params": g["params"]}
                             for g, sg in zip(self.param_groups, saved)]
        self.state = state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every parameter's ``.grad`` to None (torch's default), or with
        ``set_to_none=False`` fill an existing ``.grad`` with zeros in place."""
        set_to_none = check_flag(f"{type(self).__name__}.zero_grad", "set_to_none", set_to_none)
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def _params(self) -> list:
        """``(group, parameter, state)`` for every parameter with a ``.grad``, each grad
        checked first, so a bad one stops the step before any parameter changes."""
        for gi, g in enumerate(self.param_groups):
            for pi, p in enumerate(g["params"]):
                if p.grad is not None:
                    where = f"param_groups[{gi}]['params'][{pi}].grad"
                    _check_grad(f"{type(self).__name__}.step", where, p)
        return [
            (g, p, self.state.setdefault(id(p), {}))
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_grad(name: str, where: str, p: Parameter) -> None:
    """TypeError unless ``p.grad`` is a NumPy array of numbers that casts to the
    parameter's dtype (not complex into a real parameter: the imaginary part would be
    dropped), ValueError unless it has the parameter's shape (never broadcast)."""
    g = p.grad
    what = f"{name}: {where} (of {p!r})"
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{what} is a {type(g).__name__}; it must be a NumPy array")
    if g.dtype.kind not in "iufc" or not np.can_cast(g.dtype, p.data.dtype, "same_kind"):
        raise TypeError(
            f"{what} has dtype {g.dtype}; it must be numbers that cast to the parameter's "
            f"{p.data.dtype} (a complex gradient only for a complex parameter)"
        )
    if g.shape != p.data.shape:
        raise ValueError(f"{what} has shape {g.shape}; it must have the parameter's shape")


def _state_entry(name: str, where: str, v, p: Parameter):
    """A copy of a loaded state entry: arrays in the parameter's dtype and shape (or
    those of its real view, which Adam keeps for a complex parameter); other values
    (the step count) as they are."""
    if not isinstance(v, np.ndarray):
        return copy.deepcopy(v)
    for like in (p.data, _as_real(p.data)):
        if v.shape == like.shape:
            return np.array(v, dtype=like.dtype, copy=True)
    raise ValueError(f"{name}: {where} has shape {v.shape}; the parameter {p!r} has "
                     f"shape {p.data.shape}")


def _as_real(a: np.ndarray) -> np.ndarray:
    """A complex array as a flat array of reals, each value's real and imaginary parts
    side by side (flat: a 0-d array cannot change its itemsize)."""
    a = np.ascontiguousarray(a).reshape(-1)
    return a.view(a.real.dtype)


def _check(name: str, cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {what}")


def _real(name: str, **values) -> None:
    """``check_real``, with a hint for NumPy arrays (a 0-d array is not a number here:
    torch's tensor ``lr`` lives on in place, a copied float would not)."""
    for arg, v in values.items():
        if isinstance(v, np.ndarray):
            raise TypeError(
                f"{name}: {arg}={v!r} is a NumPy array; it must be a real number "
                f"(a Python or NumPy scalar: pass float({arg}) for a 0-d array)"
            )
    check_real(name, **values)


def _finite(v) -> bool:
    """A real number that is not inf or nan (an int always is; math.isfinite would
    overflow on a huge one)."""
    return isinstance(v, (int, np.integer)) or math.isfinite(v)


def _int(name: str, arg: str, v, low: int) -> None:
    """An integer ``>= low`` (bools refused); a non-integral number is a ValueError, as
    in torch's ``OneCycleLR``, anything else a TypeError."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        _check(name, v >= low, f"{arg}={v!r} must be an integer >= {low}")
        return
    if isinstance(v, (float, np.floating)):
        raise ValueError(f"{name}: {arg}={v!r} must be an integer >= {low}")
    raise TypeError(f"{name}: {arg}={v!r} must be an integer >= {low}")


class SGD(Optimizer):
    """``g = grad + wd*p``; ``buf = momentum*buf + (1-dampening)*g`` (``buf = g`` at the
    first step); ``g = g + momentum*buf`` (nesterov) or ``buf``; ``p -= lr*g``."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ):
        _real("SGD", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        nesterov = check_flag("SGD", "nesterov", nesterov)
        maximize = check_flag("SGD", "maximize", maximize)
        _check("SGD", lr >= 0, f"lr={lr} must be non-negative")
        _check("SGD", momentum >= 0, f"momentum={momentum} must be non-negative")
        _check("SGD", weight_decay >= 0, f"weight_decay={weight_decay} must be non-negative")
        _check(
            "SGD",
            not nesterov or (momentum > 0 and dampening == 0),
            f"nesterov=True needs momentum > 0 and dampening = 0 (got momentum={momentum}, "
            f"dampening={dampening})",
        )
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    def step(self) -> None:
        """One update of every parameter that has a ``.grad`` (others are skipped)."""
        for group, p, state in self._params():
            g = -p.grad if group["maximize"] else p.grad
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.data
            mom = group["momentum"]
            if mom:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = np.array(g, copy=True)
                else:
                    buf = mom * buf + (1 - group["dampening"]) * g
                state["momentum_buffer"] = buf
                g = g + mom * buf if group["nesterov"] else buf
            p.data = (p.data - group["lr"] * g).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """torch's Adam; ``decoupled_weight_decay=True`` (a group entry, as in torch) is AdamW::

    p *= 1 - lr*wd  (decoupled)              g = grad + wd*p   (otherwise)
    m = m + (1-b1)(g - m);  v = b2 v + (1-b2) g^2;   (amsgrad: vmax = max(vmax, v))
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ):
        name = type(self).__name__
        _real(name, lr=lr, eps=eps, weight_decay=weight_decay)
        amsgrad = check_flag(name, "amsgrad", amsgrad)
        maximize = check_flag(name, "maximize", maximize)
        decoupled_weight_decay = check_flag(
            name, "decoupled_weight_decay", decoupled_weight_decay
        )
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name}: betas={betas!r} must be a pair of numbers in [0, 1)")
        _real(name, **{"betas[0]": betas[0], "betas[1]": betas[1]})
        _check(name, lr >= 0, f"lr={lr} must be non-negative")
        _check(name, eps >= 0, f"eps={eps} must be non-negative")
        _check(
            name,
            all(0 <= b < 1 for b in betas),
            f"betas={betas} must be two numbers in [0, 1)",
        )
        _check(name, weight_decay >= 0, f"weight_decay={weight_decay} must be non-negative")
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
        )

    def step(self) -> None:
        """One update of every parameter that has a ``.grad`` (others are skipped)."""
        for group, p, state in self._params():
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            g = -p.grad if group["maximize"] else p.grad
            data = p.data
            cplx = data.dtype.kind == "c"
            if cplx:  # torch: real and imaginary parts as separate reals (view_as_real)
                data, g = _as_real(data), _as_real(g.astype(data.dtype, copy=False))
            if wd and group["decoupled_weight_decay"]:
                data = data * (1 - lr * wd)
            elif wd:
                g = g + wd * data
            if not state:
                state["step"] = 0
                state["exp_avg"] = np.zeros_like(data)
                state["exp_avg_sq"] = np.zeros_like(data)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = np.zeros_like(data)
            state["step"] += 1
            t = state["step"]
            m = state["exp_avg"] = state["exp_avg"] + (1 - b1) * (g - state["exp_avg"])
            v = state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
            if group["amsgrad"]:
                v = state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
            step_size = lr / (1 - b1**t)
            denom = np.sqrt(v) / math.sqrt(1 - b2**t) + group["eps"]
            new = data - step_size * (m / denom)
            if cplx:
                new = new.view(p.data.dtype).reshape(p.data.shape)
            p.data = new.astype(p.data.dtype, copy=False)


class AdamW(Adam):
    """``Adam(..., decoupled_weight_decay=True)`` with ``weight_decay=1e-2`` by default; like
    torch's AdamW it takes no ``decoupled_weight_decay`` argument."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )


# ---------------------------------------------------------------------------
# Schedules: call ``step()`` once after each ``optimizer.step()``.


class _ResumeError(KeyError, ValueError):
    """A schedule resumed (``last_epoch != -1``) on param groups that lack its entries;
    a KeyError as in torch, and a ValueError as convolab's argument errors are."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class _Scheduler:
    """torch's ``LRScheduler``: ``last_epoch=-1`` starts a schedule (each group's
    ``initial_lr`` is set to its ``lr`` unless present) and the constructor takes the
    first step (to ``last_epoch = 0``); ``last_epoch=k`` resumes one, needs the groups'
    ``initial_lr`` (and the schedule's other entries) from the run that is resumed, and
    takes one step, to ``last_epoch = k + 1``, as torch does."""

    _needs: tuple[str, ...] = ("initial_lr",)

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: {optimizer!r} is not an Optimizer")
        _int(name, "last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                missing = [k for k in self._needs if k not in g]
                if missing:
                    raise _ResumeError(
                        f"{name}: last_epoch={last_epoch} resumes a schedule, but "
                        f"param_groups[{i}] has no {', '.join(map(repr, missing))}; resuming "
                        "needs the param groups of the optimizer the schedule ran on (pass "
                        "last_epoch=-1 to start a schedule)"
                    )
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._initial = True
        try:
            self.step()
        finally:
            self._initial = False

    def state_dict(self) -> dict:
        """The schedule's own entries (all but the optimizer), copied, as torch's."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the entries of :meth:`state_dict` of a schedule of the same class (load
        the optimizer's state dict too: the learning rates live in its groups)."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{name}: expected a dict (from state_dict()), got "
                            f"{type(state_dict).__name__}")
        own = set(self.state_dict())
        if set(state_dict) != own:
            raise ValueError(f"{name}: the state dict has missing keys "
                             f"{sorted(own - set(state_dict))} and unexpected keys "
                             f"{sorted(set(state_dict) - own)} (from another schedule?)")
        self.__dict__.update(copy.deepcopy(state_dict))

    def get_last_lr(self) -> list[float]:
        """The learning rates the last ``step()`` set (a copy, as torch's)."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance the schedule one step and set each group's learning rate."""
        self.last_epoch += 1
        lrs = self._get_lr()
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _get_lr(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError


class CosineAnnealingLR(_Scheduler):
    """torch's recursive form, which is ``lr_t = eta_min + (base_lr - eta_min)
    (1 + cos(pi t / T_max)) / 2`` while nothing else changes ``lr``: each step scales
    ``lr - eta_min`` by the ratio of consecutive cosine terms (adding the increment where
    that ratio's denominator is 0, at ``t = T_max + 1 (mod 2 T_max)``).  The first step
    (from the constructor) keeps the groups' current ``lr``, as torch's does."""

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ):
        _real("CosineAnnealingLR", T_max=T_max, eta_min=eta_min)
        _check("CosineAnnealingLR", T_max > 0, f"T_max={T_max} must be positive")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def _get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._initial:
            return [g["lr"] for g in groups]
        t, T, eta = self.last_epoch, self.T_max, self.eta_min
        if (t - 1 - T) % (2 * T) == 0:
            return [
                g["lr"] + (base - eta) * (1 - math.cos(math.pi / T)) / 2
                for g, base in zip(groups, self.base_lrs)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (g["lr"] - eta) + eta for g in groups]


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


def _per_group(name: str, arg: str, value, groups: list) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(groups)
    if len(values) != len(groups):
        raise ValueError(
            f"{name}: {arg} has {len(values)} entries, the optimizer {len(groups)} "
            f"parameter groups; give one {arg} or one per group"
        )
    for v in values:
        _real(name, **{arg: v})
    return values


class OneCycleLR(_Scheduler):
    """torch's one-cycle policy.  Two phases (default): lr rises from
    ``initial_lr = max_lr/div_factor`` to ``max_lr`` over ``pct_start`` of the steps, then
    anneals to ``min_lr = initial_lr/final_div_factor``.  ``three_phase=True``: up to
    ``max_lr``, back down to ``initial_lr`` over as many steps, then to ``min_lr``.
    Momentum (SGD's ``momentum`` or Adam's ``beta1``) cycles inversely between
    ``max_momentum`` and ``base_momentum``.  ``max_lr``, ``base_momentum`` and
    ``max_momentum`` may be one number or one per parameter group.

    The cycle has ``total_steps`` steps or, when that is None, ``epochs *
    steps_per_epoch`` (torch's precedence: a given ``total_steps`` wins).  Unlike torch,
    a given ``epochs`` or ``steps_per_epoch`` must be a positive integer even when
    ``total_steps`` wins, so a ``pct_start`` passed in the fourth position (where it was
    before these arguments existed) is an error rather than silently ignored.

    ``last_epoch=k`` resumes after ``k + 1`` schedule steps: the groups' ``initial_lr``,
    ``max_lr``, ``min_lr`` (and ``max_momentum``, ``base_momentum`` when cycling momentum)
    from the resumed run are used, not ``max_lr``/``div_factor``/... given here."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ):
        name = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: {optimizer!r} is not an Optimizer")
        if epochs is not None:
            _int(name, "epochs", epochs, 1)
        if steps_per_epoch is not None:
            _int(name, "steps_per_epoch", steps_per_epoch, 1)
        if total_steps is not None:
            _int(name, "total_steps", total_steps, 1)
        elif epochs is None or steps_per_epoch is None:
            raise ValueError(
                f"{name}: give total_steps, or both epochs and steps_per_epoch (got "
                f"total_steps=None, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r})"
            )
        else:
            total_steps = epochs * steps_per_epoch
        self.total_steps = total_steps = int(total_steps)
        groups = optimizer.param_groups
        max_lrs = _per_group(name, "max_lr", max_lr, groups)
        _real(
            name,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
        _check(name, 0 <= pct_start <= 1, f"pct_start={pct_start} must be in [0, 1]")
        cycle_momentum = check_flag(name, "cycle_momentum", cycle_momentum)
        three_phase = check_flag(name, "three_phase", three_phase)
        # torch checks none of these: 0 divides by zero, nan or < 0 gives nan or
        # negative learning rates (an infinite factor is fine: a rate of 0)
        for arg, v in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            _check(name, v > 0, f"{arg}={v!r} must be a positive number")
        for i, v in enumerate(max_lrs):
            arg = f"max_lr[{i}]" if isinstance(max_lr, (list, tuple)) else "max_lr"
            _check(name, _finite(v) and v >= 0, f"{arg}={v!r} must be a finite number >= 0")
        _check(
            name,
            anneal_strategy in ("cos", "linear"),
            f"anneal_strategy={anneal_strategy!r} must be 'cos' or 'linear'",
        )
        self._anneal = _anneal_cos if anneal_strategy == "cos" else _anneal_linear
        self.cycle_momentum = cycle_momentum
        self._pct_start = pct_start
        up = float(pct_start * total_steps) - 1
        if three_phase:
            self._phases = [
                (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (
                    float(2 * pct_start * total_steps) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                (float(total_steps - 1), "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(total_steps - 1), "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        self._needs = ("initial_lr", "max_lr", "min_lr")
        if cycle_momentum:
            _check(
                name,
                "momentum" in optimizer.defaults or "betas" in optimizer.defaults,
                f"cycle_momentum=True needs an optimizer with momentum or betas, and "
                f"{type(optimizer).__name__} has neither",
            )
            self._use_beta1 = "betas" in optimizer.defaults
            max_moms = _per_group(name, "max_momentum", max_momentum, groups)
            base_moms = _per_group(name, "base_momentum", base_momentum, groups)
            self._needs += ("max_momentum", "base_momentum")
        saved = [dict(g) for g in groups]
        try:
            if last_epoch == -1:
                for i, (g, top) in enumerate(zip(groups, max_lrs)):
                    g["initial_lr"] = top / div_factor
                    g["max_lr"] = top
                    g["min_lr"] = g["initial_lr"] / final_div_factor
                    if cycle_momentum:
                        g["max_momentum"], g["base_momentum"] = max_moms[i], base_moms[i]
                        self._set_momentum(g, max_moms[i])
            super().__init__(optimizer, last_epoch)
        except BaseException:  # e.g. an empty first phase: leave the groups as they were
            for g, old in zip(groups, saved):
                g.clear()
                g.update(old)
            raise

    def _set_momentum(self, g: dict, m: float) -> None:
        if self._use_beta1:
            g["betas"] = (m,) + tuple(g["betas"][1:])
        else:
            g["momentum"] = m

    def _get_lr(self) -> list[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"OneCycleLR: stepped {t} times, more than total_steps={self.total_steps}"
            )
        lrs = []
        for g in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
                if t <= end or i == len(self._phases) - 1:
                    if end == start:  # torch divides by zero here
                        raise ValueError(
                            f"OneCycleLR: step {t} falls in phase {i + 1} of the schedule, "
                            f"which starts and ends at step {end:g} (pct_start="
                            f"{self._pct_start}, total_steps={self.total_steps}); the "
                            "phases must not be empty: change pct_start or total_steps"
                        )
                    pct = (t - start) / (end - start)
                    lrs.append(self._anneal(g[lr0], g[lr1], pct))
                    if self.cycle_momentum:
                        self._set_momentum(g, self._anneal(g[m0], g[m1], pct))
                    break
                start = end
        return lrs
