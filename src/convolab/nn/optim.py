"""Optimizers and learning-rate schedules with ``torch.optim``'s update formulas.

Optimizers keep ``param_groups`` (a list of dicts holding ``params`` and the
hyper-parameters) so a schedule can change ``lr`` (and momentum) between steps,
as torch's schedulers do.  ``step()`` reads each parameter's ``.grad`` and sets a
new ``.data`` array (keep the Parameter, not its old ``.data``); parameters with
``grad is None`` are skipped.  A parameter may appear once across all groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .module import Parameter, check_real

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

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    yield g, p, self.state.setdefault(id(p), {})

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _check(name: str, cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {what}")


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
        check_real("SGD", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
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
    """torch's Adam (``decoupled=False``) and AdamW (``decoupled=True``)::

    p *= 1 - lr*wd                      (AdamW)      g = grad + wd*p   (Adam)
    m = m + (1-b1)(g - m);  v = b2 v + (1-b2) g^2;   (amsgrad: vmax = max(vmax, v))
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    """

    _decoupled = False

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
    ):
        name = type(self).__name__
        check_real(name, lr=lr, eps=eps, weight_decay=weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name}: betas={betas!r} must be a pair of numbers in [0, 1)")
        check_real(name, **{"betas[0]": betas[0], "betas[1]": betas[1]})
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
            ),
        )

    def step(self) -> None:
        for group, p, state in self._params():
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            g = -p.grad if group["maximize"] else p.grad
            data = p.data
            if wd and self._decoupled:
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
            p.data = (data - step_size * (m / denom)).astype(p.data.dtype, copy=False)


class AdamW(Adam):
    __doc__ = Adam.__doc__
    _decoupled = True

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
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


# ---------------------------------------------------------------------------
# Schedules: call ``step()`` once after each ``optimizer.step()``.


class _Scheduler:
    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {optimizer!r} is not an Optimizer")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        self._apply(self.last_epoch)

    def _apply(self, t: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class CosineAnnealingLR(_Scheduler):
    """``lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2`` (closed form)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        check_real("CosineAnnealingLR", T_max=T_max, eta_min=eta_min)
        _check("CosineAnnealingLR", T_max > 0, f"T_max={T_max} must be positive")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def _apply(self, t: int) -> None:
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.eta_min + (base - self.eta_min) * c


def _anneal_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


class OneCycleLR(_Scheduler):
    """torch's one-cycle policy (two phases): lr rises from ``max_lr/div_factor`` to
    ``max_lr`` over ``pct_start`` of ``total_steps``, then anneals to
    ``initial_lr/final_div_factor``; momentum (SGD's ``momentum`` or Adam's ``beta1``)
    cycles inversely between ``max_momentum`` and ``base_momentum``.  ``max_lr`` may be
    one number or one per parameter group, as in torch."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ):
        name = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: {optimizer!r} is not an Optimizer")
        groups = optimizer.param_groups
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * len(groups)
        if len(max_lrs) != len(groups):
            raise ValueError(
                f"{name}: max_lr has {len(max_lrs)} entries, the optimizer {len(groups)} "
                "parameter groups"
            )
        for v in max_lrs:
            check_real(name, max_lr=v)
        check_real(
            name,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            base_momentum=base_momentum,
            max_momentum=max_momentum,
        )
        _check(name, total_steps > 0, f"total_steps={total_steps} must be positive")
        _check(name, 0 <= pct_start <= 1, f"pct_start={pct_start} must be in [0, 1]")
        _check(
            name,
            anneal_strategy in ("cos", "linear"),
            f"anneal_strategy={anneal_strategy!r} must be 'cos' or 'linear'",
        )
        self.total_steps = int(total_steps)
        self._anneal = _anneal_cos if anneal_strategy == "cos" else _anneal_linear
        self.cycle_momentum = cycle_momentum
        self._phases = [
            (
                float(pct_start * total_steps) - 1,
                "initial_lr",
                "max_lr",
                "max_momentum",
                "base_momentum",
            ),
            (float(total_steps - 1), "max_lr", "min_lr", "base_momentum", "max_momentum"),
        ]
        self._use_beta1 = "betas" in optimizer.defaults
        for g, top in zip(groups, max_lrs):
            g["initial_lr"] = top / div_factor
            g["max_lr"] = top
            g["min_lr"] = g["initial_lr"] / final_div_factor
            if cycle_momentum:
                g["max_momentum"], g["base_momentum"] = max_momentum, base_momentum
                self._set_momentum(g, max_momentum)
        super().__init__(optimizer)

    def _set_momentum(self, g: dict, m: float) -> None:
        if self._use_beta1:
            g["betas"] = (m,) + tuple(g["betas"][1:])
        else:
            g["momentum"] = m

    def _apply(self, t: int) -> None:
        if t > self.total_steps:
            raise ValueError(
                f"OneCycleLR: stepped {t} times, more than total_steps={self.total_steps}"
            )
        for g in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
                if t <= end or i == len(self._phases) - 1:
                    pct = (t - start) / (end - start)
                    g["lr"] = self._anneal(g[lr0], g[lr1], pct)
                    if self.cycle_momentum:
                        self._set_momentum(g, self._anneal(g[m0], g[m1], pct))
                    break
                start = end
