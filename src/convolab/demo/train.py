"""Training loop: mini-batches, AdamW with a one-cycle schedule, per-epoch evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import nn


@dataclass
class Config:
    dataset: str = "mnist1d"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 0.01
    seed: int = 0
    dtype: str = "float32"


@dataclass
class History:
    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of one shuffled epoch (the last batch may be smaller)."""
    perm = rng.permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def make_optimizer(model: nn.Module, cfg: Config, total_steps: int):
    opt = nn.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = nn.optim.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    return opt, sched


def train_step(model, loss_fn, opt, sched, xb, yb):
    """One step; returns (loss, number correct)."""
    model.train()
    logits = model(xb)
    loss = float(loss_fn(logits, yb))
    model.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    sched.step()
    return loss, int((logits.argmax(axis=1) == yb).sum())


def evaluate(model, loss_fn, x, y, batch_size: int = 1000):
    """(mean loss, accuracy, predictions) in evaluation mode."""
    model.eval()
    losses, preds = [], []
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        losses.append(float(loss_fn(logits, y[i : i + batch_size])) * len(logits))
        preds.append(logits.argmax(axis=1))
    model.train()
    pred = np.concatenate(preds)
    return sum(losses) / len(y), float((pred == y).mean()), pred


def fit(model, data, cfg: Config, progress: bool = True):
    """Train ``model`` on ``data``; returns (History, test predictions, seconds training)."""
    dtype = np.dtype(cfg.dtype)
    x, y = data.x.astype(dtype), data.y
    xt, yt = data.x_test.astype(dtype), data.y_test
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    hist = History()
    bar = _bar(cfg.epochs * steps_per_epoch, progress)
    t0 = time.perf_counter()
    seen, run_loss, pred, last_test = 0, None, None, None
    for epoch in range(1, cfg.epochs + 1):
        tot_loss, correct = 0.0, 0
        for idx in batches(len(y), cfg.batch_size, rng):
            loss, ok = train_step(model, loss_fn, opt, sched, x[idx], y[idx])
            tot_loss += loss * len(idx)
            correct += ok
            seen += len(idx)
            run_loss = loss if run_loss is None else 0.9 * run_loss + 0.1 * loss
            if bar is not None:
                bar.update(1)
                _postfix(
                    bar,
                    epoch,
                    cfg.epochs,
                    run_loss,
                    correct / (seen - (epoch - 1) * len(y)),
                    last_test,
                    seen / (time.perf_counter() - t0),
                    refresh=False,
                )
        test_loss, test_acc, pred = evaluate(model, loss_fn, xt, yt)
        hist.epoch.append(epoch)
        hist.train_loss.append(tot_loss / len(y))
        hist.train_acc.append(correct / len(y))
        hist.test_loss.append(test_loss)
        hist.test_acc.append(test_acc)
        hist.seconds.append(time.perf_counter() - t0)
        if bar is not None:
            last_test = test_acc
            _postfix(
                bar,
                epoch,
                cfg.epochs,
                run_loss,
                correct / len(y),
                test_acc,
                seen / (time.perf_counter() - t0),
            )
    if bar is not None:
        bar.close()
    return hist, pred, time.perf_counter() - t0


def _postfix(bar, epoch, epochs, loss, acc, test_acc, rate, refresh=True):
    """Running loss and accuracy of this epoch, last test accuracy, throughput."""
    items = {"epoch": f"{epoch}/{epochs}", "loss": f"{loss:.3f}", "acc": f"{acc:.3f}"}
    if test_acc is not None:
        items["test_acc"] = f"{test_acc:.3f}"
    items["samples/s"] = f"{rate:.0f}"
    bar.set_postfix(items, refresh=refresh)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:  # the bar is a nicety; train without it
        return None
    return tqdm(total=total, unit="step", desc="training", dynamic_ncols=True)
