"""The demo's data: MNIST-1D generated locally, or scikit-learn's 8x8 digits.

Nothing is downloaded: MNIST-1D is built by ``mnist1d``'s ``make_dataset`` with its
default arguments (4000 train / 1000 test sequences of length 40), and the digits
ship inside scikit-learn.  Building MNIST-1D (and importing ``mnist1d``, which imports
matplotlib and SciPy) takes about 5 s, so the arrays are kept in a cache file after
the first run (see :func:`cache_dir`); the generation is deterministic, so the file
holds exactly what it would build.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

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


def cache_dir() -> Path | None:
    """Where MNIST-1D's generated arrays are kept: ``$CONVOLAB_CACHE_DIR`` (empty: no
    cache), else ``$XDG_CACHE_HOME/convolab``, else ``~/.cache/convolab``."""
    env = os.environ.get("CONVOLAB_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convolab"


def _mnist1d_cache_file() -> Path | None:
    from importlib import metadata

    where = cache_dir()
    if where is None:
        return None
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return None
    # the package's default arguments, so its version names the data
    return where / f"mnist1d-{version}-defaults.npz"


_FIELDS = ("x", "y", "x_test", "y_test")


def _read_cached(path: Path | None) -> dict | None:
    """The cached arrays, or None when there is no usable file (missing, unreadable,
    or not the four arrays of the right shapes: then it is built and written again)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in _FIELDS}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    ok = (d["x"].ndim == 2 and d["x_test"].ndim == 2 and d["y"].shape == d["x"].shape[:1]
          and d["y_test"].shape == d["x_test"].shape[:1]
          and d["x"].shape[1] == d["x_test"].shape[1] and d["x"].dtype.kind == "f"
          and d["y"].dtype.kind in "iu" and d["y_test"].dtype.kind in "iu")
    return d if ok else None


def _write_cached(path: Path | None, d: dict) -> None:
    """Best effort: a read-only home or a full disk leaves the run as it was."""
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # then renamed: never half a file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(d[k]) for k in _FIELDS})
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _generate_mnist1d() -> dict:
    import matplotlib

    matplotlib.use("Agg")  # mnist1d imports pyplot; never open a window
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds the global generators; leave the caller's state untouched
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def load_mnist1d() -> Dataset:
    """MNIST-1D with the package defaults (seed 42): from the cache file when there is
    one (:func:`cache_dir`), else generated (about 5 s) and written there."""
    path = _mnist1d_cache_file()
    d = _read_cached(path)
    if d is None:
        d = _generate_mnist1d()
        _write_cached(path, d)
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
