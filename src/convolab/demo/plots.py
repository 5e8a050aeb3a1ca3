"""PNG figures of a run (matplotlib, Agg backend): curves, first-layer kernels, confusion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite_or(reduce, values, fallback: float) -> float:
    """``reduce(values)`` ignoring NaN (``np.nanmin``/``np.nanmax``), or ``fallback`` when
    that is not finite (no values, all NaN, or an infinity): matplotlib refuses NaN or
    infinite axis limits, and a run that diverged leaves such values behind."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(reduce(a)) if a.size else fallback


def curves(hist, path: Path, title: str) -> None:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    mark = "o" if len(hist.epoch) < 10 else None  # one epoch (--quick) is a single point
    a.plot(hist.epoch, hist.train_loss, label="train", marker=mark)
    a.plot(hist.epoch, hist.test_loss, label="test", marker=mark)
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.set_yscale("log")
    a.set_title("loss")
    a.legend()
    b.plot(hist.epoch, 100 * np.asarray(hist.train_acc), label="train", marker=mark)
    b.plot(hist.epoch, 100 * np.asarray(hist.test_acc), label="test", marker=mark)
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    low = _finite_or(np.nanmin, hist.test_acc + hist.train_acc, 0.0)
    b.set_ylim(max(0, 100 * low - 5), 100.5)
    final = hist.test_acc[-1]
    b.set_title(
        f"accuracy (final test {100 * final:.1f}%)"
        if math.isfinite(final)
        else "accuracy (no final test value: diverged)"
    )
    b.grid(alpha=0.3)
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kernels(weight: np.ndarray, path: Path, title: str) -> None:
    """First-layer weights ``(C_out, 1, k)`` as small line plots or ``(C_out, 1, kh, kw)``
    as images, one panel per output channel."""
    plt = _plt()
    w = np.asarray(weight, dtype=np.float64)[:, 0]
    n = w.shape[0]
    cols = min(16, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.6), squeeze=False)
    lim = _finite_or(np.nanmax, np.abs(w), 0.0) or 1.0  # NaN weights: empty panels
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        if w.ndim == 2:
            ax.axhline(0, color="0.8", lw=0.6)
            ax.plot(w[i], marker=".", lw=1.2, ms=3)
            ax.set_ylim(-lim * 1.1, lim * 1.1)
        else:
            ax.imshow(w[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(cm: np.ndarray, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(cm, cmap="Blues")
    k = cm.shape[0]
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                )
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
