"""``--check-torch``: train the same network in convolab and PyTorch side by side.

Same initial weights (copied), same batches, same AdamW + one-cycle schedule, in
float64.  If every forward and backward is right, the two runs agree to rounding
error for hundreds of steps; one wrong gradient makes them drift apart at once.
"""

from __future__ import annotations

import time

import numpy as np

from .. import nn
from . import models
from .train import Config, batches, make_optimizer

TOLERANCE = 1e-8


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_torch(data, cfg: Config, steps: int = 200) -> dict:
    """Returns the largest relative differences (loss per step, final weights, buffers)."""
    import torch

    t0 = time.perf_counter()
    model = models.build(data.name, dtype=np.float64, seed=cfg.seed)
    tmodel = models.to_torch(model)
    x, y = data.x.astype(np.float64), data.y
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, steps)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=cfg.lr, total_steps=steps)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(cfg.seed)
    order = []
    while len(order) < steps:
        order += batches(len(y), cfg.batch_size, rng)
    loss_diff, losses = 0.0, []
    model.train()
    tmodel.train()
    t_cl = t_torch = 0.0
    for idx in order[:steps]:
        t1 = time.perf_counter()
        loss = loss_fn(model(x[idx]), y[idx])
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        sched.step()
        t2 = time.perf_counter()
        tloss = tloss_fn(tmodel(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        tsched.step()
        t_cl, t_torch = t_cl + t2 - t1, t_torch + time.perf_counter() - t2
        tl = float(tloss.detach())
        losses.append(float(loss))
        loss_diff = max(loss_diff, abs(float(loss) - tl) / abs(tl))
    tstate = tmodel.state_dict()
    weight_diff = max(_rel(p.data, tstate[n].numpy()) for n, p in model.named_parameters())
    buffer_diff = max(_rel(b, tstate[n].numpy()) for n, b in model.named_buffers())
    return {
        "steps": steps,
        "epochs": steps / steps_per_epoch,
        "batch_size": cfg.batch_size,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "max_rel_diff_loss": loss_diff,
        "max_rel_diff_weights": weight_diff,
        "max_rel_diff_buffers": buffer_diff,
        "tolerance": TOLERANCE,
        "ok": max(loss_diff, weight_diff, buffer_diff) <= TOLERANCE,
        "seconds": time.perf_counter() - t0,
        "seconds_convolab": t_cl,
        "seconds_torch": t_torch,
    }
