"""Optimizers and schedules: the same trajectory as torch.optim, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from convolab.nn import Parameter, optim

torch = pytest.importorskip("torch")


def run_both(make, tmake, sched=None, tsched=None, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    ps = [Parameter(a.copy()) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    opt, topt = make(ps), tmake(tps)
    s = sched(opt) if sched else None
    ts = tsched(topt) if tsched else None
    for _ in range(steps):
        grads = [rng.standard_normal(sh) for sh in shapes]
        for p, tp, g in zip(ps, tps, grads):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        if s:
            s.step()
            ts.step()
            assert np.allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-13, atol=0)
        for p, tp in zip(ps, tps):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    ],
)
def test_sgd_matches_torch(kw):
    run_both(lambda p: optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw))


@pytest.mark.parametrize(
    "cls,tcls", [(optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)]
)
@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6),
        dict(lr=0.01, amsgrad=True, weight_decay=0.05),
    ],
)
def test_adam_matches_torch(cls, tcls, kw):
    run_both(lambda p: cls(p, **kw), lambda p: tcls(p, **kw))


def test_cosine_schedule_matches_torch():
    run_both(
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        steps=10,
    )


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(pct_start=0.25, anneal_strategy="linear"),
        dict(cycle_momentum=False, div_factor=10),
    ],
)
def test_one_cycle_matches_torch(opt, kw):
    total = 20
    if opt == "sgd":
        mk = lambda p: optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
        tmk = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    else:
        mk = lambda p: optim.AdamW(p, lr=0.01)  # noqa: E731
        tmk = lambda p: torch.optim.AdamW(p, lr=0.01)  # noqa: E731
    run_both(
        mk,
        tmk,
        lambda o: optim.OneCycleLR(o, 0.05, total, **kw),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, total_steps=total, **kw),
        steps=total,
    )


def test_errors_and_zero_grad():
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr=-1"):
        optim.Adam([p], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="not a Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)
    o = optim.SGD([p], lr=0.1)
    p.grad = np.ones(3)
    o.step()
    np.testing.assert_allclose(p.data, -0.1)
    o.zero_grad()
    assert p.grad is None
    o.step()  # parameters without a gradient are skipped
    np.testing.assert_allclose(p.data, -0.1)
    s = optim.OneCycleLR(o, 0.1, total_steps=2)
    s.step()
    s.step()
    with pytest.raises(ValueError, match="total_steps=2"):
        s.step()


def test_hyper_parameters_are_checked():
    p = Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="lr='a' must be a real number"):
        optim.SGD([p], lr="a")
    with pytest.raises(TypeError, match="betas=0.9 must be a pair"):
        optim.Adam([p], betas=0.9)
    q = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        optim.Adam([{"params": [p]}, {"params": [q, p]}])


def test_one_cycle_takes_one_max_lr_per_group():
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    tps = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([{"params": [tps[0]]}, {"params": [tps[1]]}], lr=0.1, momentum=0.9)
    s = optim.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=10)
    ts = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=[1.0, 0.5], total_steps=10)
    for _ in range(9):
        assert np.allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-12)
        topt.step()
        s.step()
        ts.step()
    with pytest.raises(ValueError, match="max_lr has 3 entries"):
        optim.OneCycleLR(opt, max_lr=[1.0, 0.5, 0.2], total_steps=10)


# Mutation testing: (kills O10: Adam/AdamW honour maximize=True, as torch; could also
# be two more entries of test_adam_matches_torch's kw list)
@pytest.mark.parametrize(
    "cls,tcls", [(optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)]
)
@pytest.mark.parametrize(
    "kw", [dict(lr=0.01, maximize=True),
           dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)]
)
def test_adam_maximize_matches_torch(cls, tcls, kw):
    run_both(lambda p: cls(p, **kw), lambda p: tcls(p, **kw))


# Mutation testing: (kills O11: a parameter group's own lr/momentum/betas override
# the optimizer's defaults, as torch)
@pytest.mark.parametrize(
    "make",
    [
        lambda m, ps: m.SGD([{"params": [ps[0]], "lr": 0.5, "momentum": 0.9},
                             {"params": [ps[1]]}], lr=0.1),
        lambda m, ps: m.Adam([{"params": [ps[0]], "lr": 0.05, "betas": (0.5, 0.9)},
                              {"params": [ps[1]], "weight_decay": 0.1}], lr=0.01),
    ],
)
def test_parameter_groups_override_the_defaults(make):
    run_both(lambda p: make(optim, p), lambda p: make(torch.optim, p))


# Mutation testing: (kills O13: CosineAnnealingLR past T_max follows the cosine back
# up, as torch, instead of staying at eta_min)
def test_cosine_schedule_past_t_max_matches_torch():
    run_both(
        lambda p: optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda o: optim.CosineAnnealingLR(o, T_max=4, eta_min=0.001),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.001),
        steps=11,
    )
