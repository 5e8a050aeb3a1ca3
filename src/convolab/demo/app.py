"""Command line of ``convolab demo``: options, run, summary table, files."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .. import _records
from .data import DATASETS

# Greydanus & Kobak, "Scaling down deep learning" (MNIST-1D), test accuracy.
REFERENCES = {
    "logistic regression": 0.32,
    "MLP": 0.68,
    "CNN": 0.94,
    "GRU": 0.91,
    "human expert": 0.96,
}
TARGETS = {"mnist1d": 0.96, "digits": 0.98}
DEFAULTS = {
    "mnist1d": dict(epochs=15, batch_size=128, lr=0.01),
    "digits": dict(epochs=20, batch_size=64, lr=0.01),
}
QUICK_EPOCHS = 1
QUICK_CHECK_STEPS = 20
EXIT_DIVERGED = 1  # training stopped on a non-finite loss (run.json has "diverged": true)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convolab demo",
        description="Train a convolutional network in pure NumPy with convolab "
        "(MNIST-1D by default) and compare with published results.",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist1d",
        help="mnist1d (dilated Conv1d TCN) or digits (Conv2d, scikit-learn 8x8)",
    )
    p.add_argument("--epochs", type=int, help="default 15 (mnist1d) / 20 (digits); 1 with --quick")
    p.add_argument("--batch-size", type=int, help="default 128 (mnist1d) / 64 (digits)")
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of the one-cycle schedule (AdamW), default 0.01",
    )
    p.add_argument("--seed", type=int, default=0, help="weights and batch order (default 0)")
    p.add_argument(
        "--out",
        default="convolab-demo",
        help="folder for the PNG plots and run.json (default ./convolab-demo/)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test: {QUICK_EPOCHS} epoch (or {QUICK_CHECK_STEPS} "
        "steps with --check-torch)",
    )
    p.add_argument(
        "--check-torch",
        action="store_true",
        help="train the identical PyTorch network with the same weights and "
        "batches in float64; fail unless they agree to 1e-8 relative",
    )
    p.add_argument(
        "--check-steps", type=int, default=None, help="steps for --check-torch (default 200)"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="tile worker threads for the convolutions (default: one per usable CPU, "
        "at most 8); float32 results depend on it",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (or, when stderr is not a terminal, the per-epoch lines)",
    )
    return p


def _positive(p, name, v):
    if v is not None and not (math.isfinite(v) and v > 0):
        p.error(f"--{name.replace('_', '-')}={v} must be positive (and finite)")


def _out_dir(p, out: str) -> tuple[Path, list[Path]]:
    """The output folder, created now: a bad --out fails before the training, not after.
    Also returns the folders this call created (deepest first), to remove again if the
    run ends without writing anything into them."""
    if out == "":
        p.error("--out='': give a folder name (. for the current folder)")
    path = Path(out)
    created, q = [], Path(os.path.abspath(out))
    while not os.path.lexists(q) and q != q.parent:
        created.append(q)
        q = q.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out={out!r}: cannot create that folder ({exc.strerror})")
    if not os.access(path, os.W_OK):
        _remove_empty(created)
        p.error(f"--out={out!r}: the folder is not writable")
    return path, created


def _remove_empty(folders: list[Path]) -> list[Path]:
    """Remove those of ``folders`` (deepest first) that are empty; returns the removed."""
    removed = []
    for f in folders:
        try:
            f.rmdir()  # only ever removes an empty folder
        except OSError:
            break
        removed.append(f)
    return removed


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 1 training diverged (or --check-torch disagreed); 2 bad
    options or a missing package; 130 interrupted (Ctrl-C)."""
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("epochs", "batch_size", "lr", "check_steps", "workers"):
        _positive(p, name, getattr(args, name))
    if args.seed < 0:
        p.error(f"--seed={args.seed} must be a non-negative integer")
    if args.check_torch and args.epochs is not None:
        p.error("--epochs does not apply to --check-torch, which runs --check-steps steps")
    if args.check_steps is not None and not args.check_torch:
        p.error("--check-steps applies only with --check-torch")
    from ..options import MAX_WORKERS
    from ..options import options as cl_options

    if args.workers is not None and args.workers > MAX_WORKERS:
        p.error(f"--workers={args.workers} must be at most {MAX_WORKERS}")
    args.out, created = _out_dir(p, args.out)
    written: list[Path] = []
    try:
        with cl_options(workers=args.workers) if args.workers else contextlib.nullcontext():
            return _run(args, written)
    except KeyboardInterrupt as exc:
        # train.Interrupted says where; a Ctrl-C while loading data or plotting does not
        where = ""
        if hasattr(exc, "steps"):
            where = f" at epoch {exc.epoch}/{exc.epochs}, step {exc.step}/{exc.steps}"
        if written:
            what = "wrote only " + ", ".join(map(str, written))
        elif _remove_empty(created):
            what = f"nothing written (removed the folder {args.out} it had created)"
        else:
            what = f"nothing written to {args.out}"
        print(f"interrupted{where}; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if not written:
            _remove_empty(created)


def _run(args, written: list[Path]) -> int:
    from . import data as data_mod
    from .train import Config

    d = DEFAULTS[args.dataset]
    cfg = Config(
        dataset=args.dataset,
        epochs=args.epochs or (QUICK_EPOCHS if args.quick else d["epochs"]),
        batch_size=args.batch_size or d["batch_size"],
        lr=args.lr or d["lr"],
        seed=args.seed,
    )
    t_start = time.perf_counter()
    data = data_mod.load(args.dataset)
    print(f"convolab demo: {data.describe()}")
    if args.check_torch:
        return _check(args, cfg, data, written)
    return _train(args, cfg, data, t_start, written)


def _check(args, cfg, data, written: list[Path]) -> int:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        print("convolab demo --check-torch: PyTorch is not installed; install it with "
              "pip install 'convolab[test]' (on Linux add --index-url "
              "https://download.pytorch.org/whl/cpu for the CPU build)", file=sys.stderr)
        return 2
    from .check import check_torch

    steps = args.check_steps or (QUICK_CHECK_STEPS if args.quick else 200)
    print(
        f"--check-torch: {steps} steps of AdamW + one-cycle in float64, batch "
        f"{cfg.batch_size}, convolab vs PyTorch {torch.__version__}, same weights and batches"
    )
    r = check_torch(data, cfg, steps)
    print(f"  loss            {r['loss_first']:.6f} -> {r['loss_last']:.6f}")
    print(
        f"  max rel. diff   loss {r['max_rel_diff_loss']:.2e}   final weights "
        f"{r['max_rel_diff_weights']:.2e}   BatchNorm buffers {r['max_rel_diff_buffers']:.2e}"
    )
    print(
        f"  tolerance       {r['tolerance']:.0e}   -> {'AGREE' if r['ok'] else 'DISAGREE'}"
        f"   ({r['seconds']:.1f} s: convolab {r['seconds_convolab']:.1f} s, "
        f"PyTorch {r['seconds_torch']:.1f} s)"
    )
    path = args.out / "check_torch.json"
    path.write_text(_records.dumps(r, indent=2) + "\n")
    written.append(path)
    return 0 if r["ok"] else 1


def _usable_cpus() -> int:
    """CPUs this process may run on (taskset, cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _train(args, cfg, data, t_start, written: list[Path]) -> int:
    from .. import threading_info
    from . import models, plots
    from .train import fit

    model = models.build(cfg.dataset, dtype=np.float32, seed=cfg.seed)
    n_params = model.num_parameters()
    name = models.MODEL_NAMES[cfg.dataset]
    threads = threading_info()  # the tile workers this run uses (options in force)
    print(
        f"model: {name}, {n_params:,} parameters; {_plural(cfg.epochs, 'epoch')}, batch "
        f"{cfg.batch_size}, AdamW + one-cycle (peak lr {cfg.lr}), float32, seed {cfg.seed}, "
        f"{_plural(threads['workers'], 'tile worker')}"
    )
    hist, pred, train_s, diverged = fit(model, data, cfg, progress=not args.no_progress)
    wall = time.perf_counter() - t_start
    # no accuracy, confusion matrix or "final" train value from a run that diverged
    acc = None if diverged else hist.test_acc[-1]
    cm = None if diverged else plots.confusion_matrix(data.y_test, pred, data.classes)

    out = args.out
    title = f"{name} on {data.title}"
    if hist.epoch:  # a run that diverged in its first epoch has no curve to draw
        plots.curves(hist, out / "curves.png", title)
        written.append(out / "curves.png")
    plots.kernels(
        model[0].weight.data,
        out / "kernels.png",
        f"first-layer kernels ({model[0].weight.data.shape[0]} x "
        f"{'x'.join(map(str, model[0].kernel_size))})"
        + (f", diverged at step {diverged.step}" if diverged else ""),
    )
    written.append(out / "kernels.png")
    if cm is not None:
        plots.confusion(cm, out / "confusion.png", f"{data.title}: test accuracy {100 * acc:.1f}%")
        written.append(out / "confusion.png")
    record = {
        "dataset": cfg.dataset,
        "model": name,
        "parameters": n_params,
        "config": vars(cfg),
        "quick": bool(args.quick),
        "diverged": diverged is not None,
        "diverged_at": None
        if diverged is None
        else {
            "step": diverged.step,
            "epoch": diverged.epoch,
            "phase": diverged.phase,
            "loss": diverged.loss,
        },
        "test_accuracy": acc,
        "train_accuracy": None if diverged else hist.train_acc[-1],
        "target_accuracy": TARGETS[cfg.dataset],
        "references": REFERENCES if cfg.dataset == "mnist1d" else {},
        "wall_seconds": wall,
        "train_seconds": train_s,
        "history": vars(hist),
        "confusion_matrix": None if cm is None else cm.tolist(),
        "machine": {
            "workers": threads["workers"],
            "usable_cpus": _usable_cpus(),
            "cpu_count": os.cpu_count(),
            "cpus": os.cpu_count(),  # the key earlier versions wrote (= cpu_count)
            "threadpoolctl": threads["threadpoolctl"],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
    }
    (out / "run.json").write_text(_records.dumps(record, indent=2) + "\n")
    written.append(out / "run.json")
    print(summary(record))
    print("wrote " + ", ".join(map(str, written)))
    if diverged:
        print(f"{diverged.describe()}; try a smaller --lr", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(r: dict) -> str:
    acc = r["test_accuracy"]
    rows = [(f"{r['model']} (this run)", "diverged" if acc is None else f"{100 * acc:.1f}%")]
    rows += [(f"{k} (published)", f"{100 * v:.0f}%") for k, v in r["references"].items()]
    m = r["machine"]
    w = max(len(a) for a, _ in rows)
    line = "-" * (w + 12)
    out = [line, f"{'model':<{w}}  test acc", line]
    out += [f"{a:<{w}}  {b:>8}" for a, b in rows]
    out += [
        line,
        f"wall time {r['wall_seconds']:.1f} s (training {r['train_seconds']:.1f} s), "
        f"{r['parameters']:,} parameters, {_plural(r['config']['epochs'], 'epoch')}, "
        f"{_plural(m['workers'], 'tile worker')} on {_plural(m['usable_cpus'], 'usable CPU')}",
        f"target >= {100 * r['target_accuracy']:.0f}%: {_verdict(r)}",
    ]
    return "\n".join(out)


def _verdict(r: dict) -> str:
    acc = r["test_accuracy"]
    if acc is None:
        return f"NOT met (training diverged at step {r['diverged_at']['step']})"
    if acc >= r["target_accuracy"]:
        return "met"
    if r.get("quick"):
        return "NOT met (a --quick smoke run trains for too few steps to reach it)"
    return "NOT met"
