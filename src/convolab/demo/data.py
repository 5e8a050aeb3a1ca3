"""The demo's data: MNIST-1D generated locally, or scikit-learn's 8x8 digits.

Nothing is downloaded: MNIST-1D is built by ``mnist1d``'s ``make_dataset`` with its
default arguments (4000 train / 1000 test sequences of length 40), and the digits
ship inside scikit-learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

DATASETS = ("mnist1d", "digits")


@dataclass
class Dataset:
    name: str
    title: str
    x: np.ndarray  # (N, 1, *spatial) float64
    y: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.x.shape[2:])
        return (
            f"{self.title}: {len(self.y)} train / {len(self.y_test)} test, "
            f"inputs {shape}, {self.classes} classes"
        )


def load_mnist1d() -> Dataset:
    """MNIST-1D with the package defaults (seed 42), generated in about a second."""
    import matplotlib

    matplotlib.use("Agg")  # mnist1d imports pyplot; never open a window
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds the global generators; leave the caller's state untouched
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Dataset(
        "mnist1d",
        "MNIST-1D",
        d["x"][:, None, :].astype(np.float64),
        d["y"].astype(np.int64),
        d["x_test"][:, None, :].astype(np.float64),
        d["y_test"].astype(np.int64),
    )


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images) scaled to [0, 1]; a fixed stratified
    75/25 split (``random_state=0``, independent of ``--seed``)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images / 16.0)[:, None].astype(np.float64)
    y = d.target.astype(np.int64)
    x, x_test, y, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return Dataset("digits", "scikit-learn digits (8x8)", x, y, x_test, y_test)


def load(name: str) -> Dataset:
    if name == "mnist1d":
        return load_mnist1d()
    if name == "digits":
        return load_digits()
    raise ValueError(f"dataset={name!r} must be one of {DATASETS}")
