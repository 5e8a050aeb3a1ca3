"""Optimizers and schedules: the same trajectory as torch.optim, step by step."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from convolab.nn import Parameter, optim

torch = pytest.importorskip("torch")


def same_groups(opt, topt):
    """lr, momentum and betas of every parameter group agree with torch's."""
    for g, tg in zip(opt.param_groups, topt.param_groups, strict=True):
        for k in ("lr", "momentum", "betas"):
            if k in g or k in tg:
                np.testing.assert_allclose(g[k], tg[k], rtol=1e-13, atol=0, err_msg=k)


def run_both(
    make, tmake, sched=None, tsched=None, steps=12, seed=0, resume_at=None, resume=None
):
    """Step convolab's and torch's optimizers (and schedules) side by side; at step
    ``resume_at`` replace both schedules with ``resume(module, optimizer, last_epoch)``,
    a schedule resumed from the running one's ``last_epoch``."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    ps = [Parameter(a.copy()) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    opt, topt = make(ps), tmake(tps)
    s = sched(opt) if sched else None
    ts = tsched(topt) if tsched else None
    if s:
        assert np.allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-13, atol=0)
        same_groups(opt, topt)
    for i in range(steps):
        if i == resume_at:
            assert s.last_epoch == ts.last_epoch
            s = resume(optim, opt, s.last_epoch)
            ts = resume(torch.optim.lr_scheduler, topt, ts.last_epoch)
            assert s.last_epoch == ts.last_epoch
            assert np.allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-13, atol=0)
            same_groups(opt, topt)
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
            same_groups(opt, topt)
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


# ---------------------------------------------------------------------------
# torch 2.13 parity: signatures, Adam's decoupled_weight_decay, OneCycleLR's
# epochs/steps_per_epoch/three_phase/per-group momenta, and resuming (last_epoch).

SIGNATURE_PAIRS = [
    (optim.SGD, torch.optim.SGD),
    (optim.Adam, torch.optim.Adam),
    (optim.AdamW, torch.optim.AdamW),
    (optim.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR),
    (optim.OneCycleLR, torch.optim.lr_scheduler.OneCycleLR),
]


@pytest.mark.parametrize("cls,tcls", SIGNATURE_PAIRS, ids=lambda c: c.__name__)
def test_signatures_match_torch(cls, tcls):
    """The same positional parameters in the same order with the same defaults, and
    every keyword-only one torch's too (torch's foreach/fused/capturable/differentiable
    select kernels and have no NumPy counterpart)."""
    import inspect

    def split(c):
        ps = list(inspect.signature(c.__init__).parameters.values())[1:]
        pos = [(p.name, p.default) for p in ps if p.kind is p.POSITIONAL_OR_KEYWORD]
        kw = {p.name: p.default for p in ps if p.kind is p.KEYWORD_ONLY}
        return pos, kw

    (pos, kw), (tpos, tkw) = split(cls), split(tcls)
    assert pos == tpos
    assert {k: tkw.get(k, "absent in torch") for k in kw} == kw


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, weight_decay=0.05, amsgrad=True, decoupled_weight_decay=True),
        dict(lr=0.01, weight_decay=0.1, maximize=True, decoupled_weight_decay=True),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=False),
    ],
)
def test_adam_decoupled_weight_decay_matches_torch(kw):
    run_both(lambda p: optim.Adam(p, **kw), lambda p: torch.optim.Adam(p, **kw))
    if kw["decoupled_weight_decay"]:  # and is AdamW's trajectory
        akw = {k: v for k, v in kw.items() if k != "decoupled_weight_decay"}
        run_both(lambda p: optim.Adam(p, **kw), lambda p: torch.optim.AdamW(p, **akw))


def test_adam_decoupled_weight_decay_per_group_matches_torch():
    def make(m, ps):
        return m.Adam(
            [{"params": [ps[0]], "decoupled_weight_decay": True}, {"params": [ps[1]]}],
            lr=0.01,
            weight_decay=0.2,
        )

    run_both(lambda p: make(optim, p), lambda p: make(torch.optim, p))
    with pytest.raises(TypeError, match="decoupled_weight_decay"):
        optim.AdamW([Parameter(np.zeros(2))], decoupled_weight_decay=False)


def _sgd(m):
    return lambda p: m.SGD(p, lr=0.1, momentum=0.9)


def _adamw(m):
    return lambda p: m.AdamW(p, lr=0.01)


@pytest.mark.parametrize("make", [_sgd, _adamw], ids=["sgd", "adamw"])
@pytest.mark.parametrize(
    "args,kw",
    [
        ((None, 4, 5), dict()),  # torch's positions: total_steps, epochs, steps_per_epoch
        ((), dict(epochs=3, steps_per_epoch=7, pct_start=0.4)),
        ((20,), dict(three_phase=True)),
        ((20,), dict(three_phase=True, anneal_strategy="linear", pct_start=0.35)),
        ((21,), dict(three_phase=True, cycle_momentum=False, div_factor=5.0)),
        ((20,), dict(base_momentum=0.8, max_momentum=0.9, final_div_factor=100.0)),
    ],
)
def test_one_cycle_new_parameters_match_torch(make, args, kw):
    total = args[0] if args and args[0] else kw.get("epochs", 4) * kw.get("steps_per_epoch", 5)
    run_both(
        make(optim),
        make(torch.optim),
        lambda o: optim.OneCycleLR(o, 0.05, *args, **kw),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, *args, **kw),
        steps=total,
    )


def test_one_cycle_total_steps_takes_precedence_as_in_torch():
    p = Parameter(np.zeros(2))
    s = optim.OneCycleLR(optim.SGD([p], lr=0.1, momentum=0.9), 0.5, 20, 1, 3)
    assert s.total_steps == 20


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_momenta_per_group_match_torch(three_phase):
    def make(m, ps):
        return m.SGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.2}], lr=0.1, momentum=0.9)

    def sched(m, o):
        return m.OneCycleLR(
            o,
            [0.1, 0.3],
            12,
            base_momentum=[0.8, 0.7],
            max_momentum=(0.95, 0.9),
            three_phase=three_phase,
        )

    run_both(
        lambda p: make(optim, p),
        lambda p: make(torch.optim, p),
        lambda o: sched(optim, o),
        lambda o: sched(torch.optim.lr_scheduler, o),
        steps=12,
    )


@pytest.mark.parametrize("make", [_sgd, _adamw], ids=["sgd", "adamw"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("resume_at", [0, 5])
def test_one_cycle_resumes_as_torch(make, three_phase, resume_at):
    """A schedule built with last_epoch=k on the resumed run's optimizer continues from
    the groups' stored entries (the new max_lr/div_factor are not used, as in torch)."""
    run_both(
        make(optim),
        make(torch.optim),
        lambda o: optim.OneCycleLR(o, 0.05, 16, three_phase=three_phase),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, 16, three_phase=three_phase),
        steps=15,
        resume_at=resume_at,
        resume=lambda m, o, k: m.OneCycleLR(
            o, 9.0, 16, div_factor=3.0, three_phase=three_phase, last_epoch=k
        ),
    )


@pytest.mark.parametrize("resume_at", [0, 3, 6])
def test_cosine_resumes_as_torch(resume_at):
    run_both(
        _sgd(optim),
        _sgd(torch.optim),
        lambda o: optim.CosineAnnealingLR(o, T_max=5, eta_min=0.01),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.01),
        steps=14,
        resume_at=resume_at,
        resume=lambda m, o, k: m.CosineAnnealingLR(o, 5, 0.01, last_epoch=k),
    )


def test_cosine_starts_from_the_current_lr_as_torch():
    """A second schedule on the same optimizer keeps the first one's initial_lr as its
    base, and its first step keeps the current lr (torch's recursive form)."""
    run_both(
        _sgd(optim),
        _sgd(torch.optim),
        lambda o: optim.CosineAnnealingLR(o, T_max=4),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
        steps=12,
        resume_at=3,
        resume=lambda m, o, k: m.CosineAnnealingLR(o, T_max=3.5, eta_min=0.02),
    )


def test_resuming_needs_the_resumed_param_groups():
    p = Parameter(np.zeros(2))
    with pytest.raises(KeyError, match="last_epoch=3 resumes.*no 'initial_lr'"):
        optim.CosineAnnealingLR(optim.SGD([p], lr=0.1), 10, last_epoch=3)
    o = optim.SGD([p], lr=0.1, momentum=0.9)
    o.param_groups[0]["initial_lr"] = 0.1
    with pytest.raises(ValueError, match="no 'max_lr', 'min_lr', 'max_momentum'"):
        optim.OneCycleLR(o, 0.5, 10, last_epoch=3)
    for m in (optim, torch.optim.lr_scheduler):  # torch raises a KeyError too
        tp = torch.nn.Parameter(torch.zeros(2))
        o = (optim.SGD([p], lr=0.1) if m is optim else torch.optim.SGD([tp], lr=0.1))
        with pytest.raises(KeyError):
            m.OneCycleLR(o, 0.5, 10, last_epoch=3)


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        (dict(), ValueError, "give total_steps, or both epochs and steps_per_epoch"),
        (dict(epochs=3), ValueError, "steps_per_epoch=None"),
        (dict(epochs=0, steps_per_epoch=3), ValueError, "epochs=0 must be an integer >= 1"),
        (dict(epochs=2, steps_per_epoch=2.0), ValueError, "steps_per_epoch=2.0 must be"),
        (dict(total_steps=2.5), ValueError, "total_steps=2.5 must be an integer >= 1"),
        (dict(total_steps="9"), TypeError, "total_steps='9' must be an integer"),
        (dict(total_steps=True), TypeError, "total_steps=True must be an integer"),
        # the old fourth position, pct_start, now lands on epochs (as in torch, which
        # would silently ignore it): refused rather than ignored
        (dict(total_steps=20, epochs=0.3), ValueError, "epochs=0.3 must be"),
        (dict(total_steps=9, last_epoch=-2), ValueError, "last_epoch=-2 must be an integer >= -1"),
        (dict(total_steps=9, last_epoch=1.0), ValueError, "last_epoch=1.0 must be an integer"),
        (dict(total_steps=9, max_momentum=[0.9, 0.8]), ValueError, "max_momentum has 2 entries"),
        (dict(total_steps=9, base_momentum="a"), TypeError, "base_momentum='a' must be a real"),
        (dict(total_steps=9, pct_start=1.5), ValueError, r"pct_start=1.5 must be in \[0, 1\]"),
    ],
)
def test_one_cycle_argument_errors(kw, exc, msg):
    o = optim.SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(exc, match=msg):
        optim.OneCycleLR(o, 0.5, **kw)


def test_one_cycle_empty_phase_is_a_value_error_where_torch_divides_by_zero():
    tp = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([tp], lr=0.1), 0.5, 10, pct_start=0.1)
    o = optim.SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"phase 1 .*pct_start=0.1, total_steps=10"):
        optim.OneCycleLR(o, 0.5, 10, pct_start=0.1)
    s = optim.OneCycleLR(o, 0.5, 4, pct_start=1.0)  # torch fails on the 4th step too
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="phase 2"):
        s.step()


def test_one_cycle_needs_momentum_to_cycle():
    class Plain(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

    o = Plain([Parameter(np.zeros(2))])
    with pytest.raises(ValueError, match="cycle_momentum=True needs .* Plain has neither"):
        optim.OneCycleLR(o, 0.5, 10)
    s = optim.OneCycleLR(o, 0.5, 10, cycle_momentum=False)
    assert s.get_last_lr() == [pytest.approx(0.5 / 25, rel=1e-14)]


def test_cosine_argument_errors():
    o = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="T_max=0 must be positive"):
        optim.CosineAnnealingLR(o, 0)
    with pytest.raises(ValueError, match="last_epoch=-3 must be an integer >= -1"):
        optim.CosineAnnealingLR(o, 5, last_epoch=-3)
    with pytest.raises(TypeError, match="last_epoch='1' must be an integer"):
        optim.CosineAnnealingLR(o, 5, 0.0, "1")


@pytest.mark.parametrize("cls,tcls", [(optim.SGD, torch.optim.SGD), (optim.Adam, torch.optim.Adam)])
@pytest.mark.parametrize("lr", [np.float64(0.01), np.float32(0.25), np.int64(1)])
def test_numpy_scalar_lr_matches_torch(cls, tcls, lr):
    """torch takes the same NumPy scalar (and, like convolab, computes Adam's step size in
    its precision: an np.float32 lr gives float32-rounded steps in both)."""
    run_both(lambda p: cls(p, lr=lr), lambda p: tcls(p, lr=lr))


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_array_lr_is_a_clear_type_error(cls):
    with pytest.raises(TypeError, match=r"lr=array\(0.1\) is a NumPy array.*float\(lr\)"):
        cls([Parameter(np.zeros(2))], lr=np.array(0.1))


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True),
        lambda ps: optim.AdamW(ps, lr=0.1),
    ],
)
@pytest.mark.parametrize(
    "bad,exc,msg",
    [
        (np.ones(7), ValueError, r"\[1\]\.grad .* has shape \(7,\); it must have the param"),
        (np.ones((1, 5)), ValueError, r"has shape \(1, 5\)"),  # never broadcast
        (np.full(5, "a"), TypeError, "has dtype <U1; it must be numbers that cast"),
        (np.ones(5, dtype=object), TypeError, "has dtype object"),
        (np.ones(5, dtype=bool), TypeError, "has dtype bool"),
        (np.ones(5, dtype=complex), TypeError, "has dtype complex128"),
        ([1.0] * 5, TypeError, r"param_groups\[1\]\['params'\]\[1\]\.grad .* is a list"),
        ({}, TypeError, "is a dict; it must be a NumPy array"),
    ],
)
def test_step_checks_every_grad_before_changing_any_parameter(make, bad, exc, msg):
    ps = [Parameter(np.zeros((3, 4))), Parameter(np.zeros(2)), Parameter(np.zeros(5))]
    opt = make([{"params": ps[:1]}, {"params": ps[1:]}])
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    before = [p.data.copy() for p in ps]
    state = {k: dict(v) for k, v in opt.state.items()}
    ps[2].grad = bad
    with pytest.raises(exc, match=msg):
        opt.step()
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.data, b)
    assert opt.state.keys() == state.keys()
    for k, v in state.items():
        for name, val in v.items():
            np.testing.assert_array_equal(opt.state[k][name], val)


def test_step_takes_grads_that_cast_to_the_parameter():
    p, q = Parameter(np.zeros(3, np.float32)), Parameter(np.zeros(2))
    opt = optim.SGD([p, q], lr=0.5)
    p.grad, q.grad = np.ones(3), np.array([1, 2], np.int64)  # float64, int64: fine
    opt.step()
    np.testing.assert_array_equal(p.data, [-0.5] * 3)
    assert p.data.dtype == np.float32
    np.testing.assert_array_equal(q.data, [-0.5, -1.0])


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(div_factor=0), "div_factor=0 must be a positive number"),
        (dict(div_factor=-1), "div_factor=-1 must be a positive"),
        (dict(div_factor=float("nan")), "div_factor=nan must be"),
        (dict(final_div_factor=0), "final_div_factor=0 must be a positive number"),
        (dict(final_div_factor=float("nan")), "final_div_factor=nan must be"),
        (dict(max_lr=float("nan")), "max_lr=nan must be a finite number >= 0"),
        (dict(max_lr=-1), "max_lr=-1 must be a finite number >= 0"),
        (dict(max_lr=[0.5, -0.1]), r"max_lr\[1\]=-0.1 must be a finite number >= 0"),
        (dict(pct_start=0.1), "phase 1"),  # fails in the first step, after the checks
    ],
)
def test_one_cycle_refuses_bad_factors_and_leaves_the_groups_alone(kw, msg):
    """torch takes these and divides by zero or gives nan or negative rates."""
    args = dict(max_lr=[0.5, 0.2], total_steps=10) | kw
    o = optim.SGD(
        [{"params": [Parameter(np.zeros(2))]}, {"params": [Parameter(np.zeros(1))]}],
        lr=0.1, momentum=0.9,
    )
    before = [dict(g) for g in o.param_groups]
    with pytest.raises(ValueError, match=msg):
        optim.OneCycleLR(o, **args)
    assert o.param_groups == before
    tps = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    to = torch.optim.SGD([{"params": tps[:1]}, {"params": tps[1:]}], lr=0.1, momentum=0.9)
    with contextlib.suppress(ZeroDivisionError):  # torch takes it, or divides by zero
        torch.optim.lr_scheduler.OneCycleLR(to, **args)


def test_one_cycle_takes_a_zero_max_lr_and_infinite_factors_as_torch():
    o = optim.SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    assert optim.OneCycleLR(o, 0, total_steps=10).get_last_lr() == [0.0]
    kw = dict(div_factor=float("inf"), final_div_factor=float("inf"))
    run_both(
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda o: optim.OneCycleLR(o, 0.5, 10, **kw),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, 10, **kw),
        steps=10,
    )


@pytest.mark.parametrize(
    "make,where",
    [
        (lambda p, v: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=v), "SGD: nesterov"),
        (lambda p, v: optim.SGD(p, lr=0.1, maximize=v), "SGD: maximize"),
        (lambda p, v: optim.Adam(p, amsgrad=v), "Adam: amsgrad"),
        (lambda p, v: optim.Adam(p, maximize=v), "Adam: maximize"),
        (lambda p, v: optim.Adam(p, decoupled_weight_decay=v), "Adam: decoupled_weight_decay"),
        (lambda p, v: optim.AdamW(p, amsgrad=v), "AdamW: amsgrad"),
        (lambda p, v: optim.SGD([{"params": p, "nesterov": v}], lr=0.1, momentum=0.9),
         r"SGD: param_groups\[0\]\['nesterov'\]"),
        (lambda p, v: optim.Adam([{"params": p[:1]}, {"params": p[1:], "amsgrad": v}]),
         r"Adam: param_groups\[1\]\['amsgrad'\]"),
        (lambda p, v: optim.OneCycleLR(optim.SGD(p, momentum=0.9), 0.1, 10, cycle_momentum=v),
         "OneCycleLR: cycle_momentum"),
        (lambda p, v: optim.OneCycleLR(optim.SGD(p, momentum=0.9), 0.1, 10, three_phase=v),
         "OneCycleLR: three_phase"),
    ],
)
@pytest.mark.parametrize("bad", [np.array([1, 0]), "no", None, 0.5], ids=repr)
def test_optimizer_flags_refuse_what_is_not_a_bool(make, where, bad):
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    with pytest.raises(TypeError, match=f"{where}=.* must be a bool"):
        make(ps, bad)
    with pytest.raises(TypeError, match=f"{where}=tensor"):
        make(ps, torch.tensor(True))
    for ok in (True, np.True_, 1, 0):  # what torch takes, by truthiness
        make(ps, ok)


def test_integer_flags_step_as_the_bools_they_mean():
    run_both(
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=1, maximize=np.True_),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, maximize=True),
    )
    run_both(
        lambda p: optim.Adam(p, lr=0.05, amsgrad=np.int64(1)),
        lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True),
    )


@pytest.mark.parametrize("make", [
    lambda ps: (optim.SGD(ps[0], lr=0.1, momentum=0.9, weight_decay=0.01),
                torch.optim.SGD(ps[1], lr=0.1, momentum=0.9, weight_decay=0.01)),
    lambda ps: (optim.Adam(ps[0], lr=0.01, weight_decay=0.01, amsgrad=True),
                torch.optim.Adam(ps[1], lr=0.01, weight_decay=0.01, amsgrad=True)),
    lambda ps: (optim.AdamW(ps[0], lr=0.01), torch.optim.AdamW(ps[1], lr=0.01)),
])
def test_complex_parameters_step_as_torch(make):
    """Complex layers train: a complex gradient for a complex parameter is taken, and
    Adam treats real and imaginary parts as separate reals, as torch does."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    ours = [Parameter(w0.copy())]
    theirs = [torch.nn.Parameter(torch.tensor(w0))]
    opt, topt = make((ours, theirs))
    for _ in range(4):
        g = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
        ours[0].grad = g
        theirs[0].grad = torch.tensor(g)
        opt.step()
        topt.step()
        np.testing.assert_allclose(ours[0].data, theirs[0].detach().numpy(), rtol=1e-12,
                                   atol=1e-14)
    real = [Parameter(np.zeros((3, 4)))]
    real[0].grad = np.ones((3, 4), np.complex128)
    with pytest.raises(TypeError, match="a complex gradient only for a complex parameter"):
        optim.SGD(real, lr=0.1).step()


def test_a_0d_complex_parameter_keeps_its_shape_under_adam():
    p0 = np.array(1 + 2j)
    ours, theirs = Parameter(p0.copy()), torch.nn.Parameter(torch.tensor(p0))
    opt, topt = optim.Adam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
    for g in (0.5 - 0.25j, -1 + 1j):
        ours.grad, theirs.grad = np.array(g), torch.tensor(np.array(g))
        opt.step()
        topt.step()
        assert ours.data.shape == () and np.isclose(ours.data, theirs.detach().numpy())


def _trajectory(ps, opt, sched, grads):
    """The parameters after stepping ``opt`` (and ``sched``) through ``grads``."""
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.copy()
        opt.step()
        sched.step()
    return [p.data.copy() for p in ps]


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
        lambda ps: optim.AdamW([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}]),
    ],
)
def test_a_copied_optimizer_keeps_its_state(make, how):
    """The state is keyed by id(parameter): a pickled or deep-copied optimizer (with its
    parameters) lost its momentum buffers and Adam moments, so training went on from a
    fresh start instead of where it was."""
    import copy
    import pickle

    copier = {"pickle": lambda o: pickle.loads(pickle.dumps(o)), "deepcopy": copy.deepcopy}
    rng = np.random.default_rng(0)
    ps = [Parameter(rng.standard_normal(s)) for s in ((3, 4), (5,))]
    grads = [[rng.standard_normal(p.data.shape) for p in ps] for _ in range(6)]
    opt = make(ps)
    sched = optim.CosineAnnealingLR(opt, T_max=5)
    _trajectory(ps, opt, sched, grads[:3])
    ps2, opt2, sched2 = copier[how]((ps, opt, sched))
    assert len(opt2.state) == len(opt.state) == 2
    want = _trajectory(ps, opt, sched, grads[3:])
    got = _trajectory(ps2, opt2, sched2, grads[3:])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_optimizer_pickled_before_the_positions_still_unpickles():
    """Pickles made before the state travelled by position hold it under the ids of the
    old parameters: unpickling raised IndexError (params[id]); the state is lost, as it
    was when they were made, and training goes on."""
    import pickle

    ps = [Parameter(np.ones(3))]
    opt = optim.SGD(ps, lr=0.1, momentum=0.9)
    ps[0].grad = np.ones(3)
    opt.step()
    old = opt.__dict__.copy()  # the old pickle: the instance dict, state by id
    ps2, old2 = pickle.loads(pickle.dumps((ps, old)))
    opt2 = optim.SGD.__new__(optim.SGD)
    opt2.__setstate__(old2)
    assert opt2.state == {} and opt2.param_groups[0]["params"][0] is ps2[0]
    ps2[0].grad = np.ones(3)
    opt2.step()
    np.testing.assert_allclose(ps2[0].data, 0.8)


_MAKERS = [
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
     lambda o: optim.CosineAnnealingLR(o, T_max=4)),
    (lambda ps: optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.03}], lr=0.01),
     lambda o: optim.OneCycleLR(o, max_lr=[0.05, 0.1], total_steps=8)),
    (lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True),
     lambda o: optim.OneCycleLR(o, max_lr=0.05, total_steps=8, three_phase=True)),
]


@pytest.mark.parametrize("make, schedule", _MAKERS)
def test_state_dict_round_trip_continues_training(make, schedule):
    """torch's Optimizer/LRScheduler state_dict and load_state_dict: a fresh optimizer
    and schedule loaded from them step exactly as the ones they came from."""
    rng = np.random.default_rng(1)
    ps = [Parameter(rng.standard_normal(s)) for s in ((3, 4), (5,))]
    grads = [[rng.standard_normal(p.data.shape) for p in ps] for _ in range(7)]
    opt = make(ps)
    sched = schedule(opt)
    _trajectory(ps, opt, sched, grads[:3])
    osd, ssd = opt.state_dict(), sched.state_dict()
    ps2 = [Parameter(p.data.copy()) for p in ps]
    opt2 = make(ps2)
    sched2 = schedule(opt2)
    opt2.load_state_dict(osd)
    sched2.load_state_dict(ssd)
    want = _trajectory(ps, opt, sched, grads[3:])
    assert opt.state_dict()["state"][0] is not osd["state"][0]  # copies, not shared
    got = _trajectory(ps2, opt2, sched2, grads[3:])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_state_dict_has_torchs_layout():
    """The same indices, state entries and group entries as torch's (which has more)."""
    rng = np.random.default_rng(2)
    init = [rng.standard_normal(s) for s in ((3, 4), (5,))]
    ps = [Parameter(a.copy()) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    pairs = [(optim.SGD(ps, lr=0.1, momentum=0.9), torch.optim.SGD(tps, lr=0.1, momentum=0.9)),
             (optim.Adam(ps), torch.optim.Adam(tps))]
    for opt, topt in pairs:
        for p, tp in zip(ps, tps):
            p.grad = np.ones(p.data.shape)
            tp.grad = torch.ones(tp.shape, dtype=tp.dtype)
        opt.step()
        topt.step()
        sd, tsd = opt.state_dict(), topt.state_dict()
        assert sd["state"].keys() == tsd["state"].keys()
        for i in sd["state"]:
            assert sd["state"][i].keys() == tsd["state"][i].keys()
        for g, tg in zip(sd["param_groups"], tsd["param_groups"], strict=True):
            assert g["params"] == tg["params"]
            assert set(g) <= set(tg)


def test_load_state_dict_errors_name_what_does_not_match():
    ps = [Parameter(np.zeros((2, 3))), Parameter(np.zeros(4))]
    opt = optim.Adam(ps)
    two_groups = optim.Adam([{"params": ps[:1]}, {"params": ps[1:]}]).state_dict()
    with pytest.raises(ValueError, match="2 parameter groups|param_groups=.*1 parameter"):
        opt.load_state_dict(two_groups)
    with pytest.raises(ValueError, match=r"param_groups\[0\].* 1 parameters.* has 2"):
        opt.load_state_dict(optim.Adam(ps[:1]).state_dict())
    with pytest.raises(TypeError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    for p in ps:
        p.grad = np.ones(p.data.shape)
    sd = opt.state_dict()
    opt.step()
    bad = opt.state_dict()
    bad["state"][1]["exp_avg"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\] has shape \(5,\)"):
        opt.load_state_dict(bad)
    bad["state"] = {7: {}}
    with pytest.raises(ValueError, match=r"state\[7\] is not the index"):
        opt.load_state_dict(bad)
    sched = optim.CosineAnnealingLR(opt, T_max=3)
    with pytest.raises(ValueError, match="unexpected keys"):
        sched.load_state_dict(optim.OneCycleLR(opt, max_lr=0.1, total_steps=3).state_dict())
    assert sd["state"] == {}  # the dict given is not changed


def test_zero_grad_set_to_none_as_torch():
    p = Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.full(3, 2.0)
    kept = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is kept and not p.grad.any()  # zeroed in place, as torch
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(TypeError, match="set_to_none"):
        opt.zero_grad(set_to_none="no")
