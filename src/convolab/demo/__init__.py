"""``convolab demo``: train a convolutional network in pure NumPy with convolab.

``main(argv)`` parses the options, trains (MNIST-1D by default, or ``--dataset
digits``), prints a summary beside the published reference numbers, and writes
plots and a JSON record to ``--out``.  ``--check-torch`` instead trains the same
network in convolab and PyTorch side by side and compares them.
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
