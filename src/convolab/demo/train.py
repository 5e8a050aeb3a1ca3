"""Training loop: mini-batches, AdamW with a one-cycle schedule, per-epoch evaluation."""

from __future__ import annotations

import math
import sys
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


@dataclass
class Divergence:
    """Where training stopped on a non-finite value: ``step`` (1-based, counted over all
    epochs), ``epoch``, and ``loss`` (the training loss of that step, or the test loss
    when the evaluation after an epoch was the first to see a non-finite value)."""

    step: int
    epoch: int
    loss: float
    phase: str  # "train" or "test"

    def describe(self) -> str:
        what = "loss" if self.phase == "train" else f"test loss after epoch {self.epoch}"
        return f"training diverged at step {self.step} ({what} {self.loss})"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`, with where it happened (``epoch`` 1-based, ``step``
    the number of steps finished, ``epochs``/``steps`` the planned totals)."""

    def __init__(self, epoch: int, epochs: int, step: int, steps: int) -> None:
        super().__init__(f"interrupted at epoch {epoch}/{epochs}, step {step}/{steps}")
        self.epoch, self.epochs, self.step, self.steps = epoch, epochs, step, steps

    def __reduce__(self):
        # the default rebuilds it from ``args`` (the message alone), which __init__
        # refused: it could not cross a process boundary (multiprocessing) or be copied
        return type(self), (self.epoch, self.epochs, self.step, self.steps)


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of one shuffled epoch (the last batch may be smaller)."""
    perm = rng.permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def make_optimizer(model: nn.Module, cfg: Config, total_steps: int):
    opt = nn.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = nn.optim.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    return opt, sched


def train_step(model, loss_fn, opt, sched, xb, yb):
    """One step; returns (loss, number correct).  A non-finite loss changes nothing (no
    update, no scheduler step) and counts 0 correct: the caller stops there."""
    model.train()
    logits = model(xb)
    loss = float(loss_fn(logits, yb))
    if not math.isfinite(loss):
        return loss, 0
    model.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    sched.step()
    return loss, int((logits.argmax(axis=1) == yb).sum())


def evaluate(model, loss_fn, x, y, batch_size: int = 1000):
    """(mean loss, accuracy, predictions) in evaluation mode; ``(nan, nan, None)`` when
    any logit is not finite (an argmax over NaN would give a meaningless accuracy)."""
    model.eval()
    losses, preds = [], []
    try:
        for i in range(0, len(y), batch_size):
            logits = model(x[i : i + batch_size])
            if not np.isfinite(logits).all():
                return math.nan, math.nan, None
            losses.append(float(loss_fn(logits, y[i : i + batch_size])) * len(logits))
            preds.append(logits.argmax(axis=1))
    finally:
        model.train()
    pred = np.concatenate(preds)
    loss = sum(losses) / len(y)
    if not math.isfinite(loss):
        return math.nan, math.nan, None
    return loss, float((pred == y).mean()), pred


def fit(model, data, cfg: Config, progress: bool = True):
    """Train ``model`` on ``data``; returns (History, test predictions, seconds training,
    divergence).

    ``divergence`` is None, or a :class:`Divergence` when a training loss (or the test
    loss after an epoch) was not finite: training stops there, the history keeps the
    epochs finished before it (a test value computed from non-finite logits is NaN),
    and the predictions are None.  ``progress``: a tqdm bar when stderr is a terminal,
    else one line per epoch on stderr.  Ctrl-C raises :class:`Interrupted` (a
    KeyboardInterrupt) after closing the bar."""
    dtype = np.dtype(cfg.dtype)
    x, y = data.x.astype(dtype), data.y
    xt, yt = data.x_test.astype(dtype), data.y_test
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt, sched = make_optimizer(model, cfg, total)
    loss_fn = nn.CrossEntropyLoss()
    hist = History()
    bar = _bar(total, progress)
    lines = progress and bar is None  # piped stderr (or no tqdm): one line per epoch
    t0 = time.perf_counter()
    step, epoch, seen, run_loss, pred, last_test = 0, 0, 0, None, None, None
    diverged = None
    try:
        # overflow warnings would only precede the divergence reported below
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(1, cfg.epochs + 1):
                tot_loss, correct = 0.0, 0
                for idx in batches(len(y), cfg.batch_size, rng):
                    loss, ok = train_step(model, loss_fn, opt, sched, x[idx], y[idx])
                    step += 1
                    if not math.isfinite(loss):
                        diverged = Divergence(step, epoch, loss, "train")
                        break
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
                if diverged is not None:
                    break
                test_loss, test_acc, pred = evaluate(model, loss_fn, xt, yt)
                hist.epoch.append(epoch)
                hist.train_loss.append(tot_loss / len(y))
                hist.train_acc.append(correct / len(y))
                hist.test_loss.append(test_loss)
                hist.test_acc.append(test_acc)
                hist.seconds.append(time.perf_counter() - t0)
                if pred is None:
                    diverged = Divergence(step, epoch, test_loss, "test")
                    break
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
                elif lines:
                    _epoch_line(hist, cfg.epochs)
    except KeyboardInterrupt:
        raise Interrupted(max(epoch, 1), cfg.epochs, step, total) from None
    finally:
        if bar is not None:
            bar.close()
    return hist, (None if diverged else pred), time.perf_counter() - t0, diverged


def _epoch_line(hist: History, epochs: int) -> None:
    """The bar's information as one line per epoch, for logs (stderr is not a terminal)."""
    print(
        f"epoch {hist.epoch[-1]}/{epochs}: train loss {hist.train_loss[-1]:.4f} "
        f"acc {hist.train_acc[-1]:.3f}, test loss {hist.test_loss[-1]:.4f} "
        f"acc {hist.test_acc[-1]:.3f} ({hist.seconds[-1]:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def _postfix(bar, epoch, epochs, loss, acc, test_acc, rate, refresh=True):
    """Running loss and accuracy of this epoch, last test accuracy, throughput."""
    items = {"epoch": f"{epoch}/{epochs}", "loss": f"{loss:.3f}", "acc": f"{acc:.3f}"}
    if test_acc is not None:
        items["test_acc"] = f"{test_acc:.3f}"
    items["samples/s"] = f"{rate:.0f}"
    bar.set_postfix(items, refresh=refresh)


def _bar(total: int, enabled: bool):
    """A tqdm bar on stderr, or None: not enabled, stderr not a terminal (a piped log
    would collect every redraw), or tqdm not installed."""
    if not enabled or not _isatty(sys.stderr):
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:  # the bar is a nicety; train without it
        return None
    return tqdm(total=total, unit="step", desc="training", dynamic_ncols=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
