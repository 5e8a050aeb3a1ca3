"""Cross-entropy from logits, as ``torch.nn.CrossEntropyLoss`` (class-index targets)."""

from __future__ import annotations

import numpy as np

from .module import Module

__all__ = ["CrossEntropyLoss", "log_softmax"]


def log_softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """``logits - logsumexp(logits)``, shifted by the maximum so nothing overflows."""
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


class CrossEntropyLoss(Module):
    """``loss = reduce_i[ (1-eps) * -log p[i, y_i]  +  eps/C * sum_c -log p[i, c] ]``.

    ``forward(input, target)``: input ``(N, C)`` or ``(N, C, *d)`` logits, target ``(N,)``
    or ``(N, *d)`` integer class indices; returns the loss (a 0-d array for ``'mean'``
    and ``'sum'``).  ``backward(grad=1.0)`` returns the gradient for the logits.
    ``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'``; ``label_smoothing``
    is ``eps`` above.
    """

    def __init__(self, weight=None, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        if weight is not None:
            raise ValueError("CrossEntropyLoss: weight= (class weights) is not supported")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"CrossEntropyLoss: reduction={reduction!r} must be 'mean', 'sum' or 'none'"
            )
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(
                f"CrossEntropyLoss: label_smoothing={label_smoothing!r} must be in [0, 1]"
            )
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self._cache = None

    def forward(self, input, target):
        z = np.asarray(input)
        t = np.asarray(target)
        if z.ndim < 2:
            raise ValueError(f"CrossEntropyLoss: input.shape={z.shape} must be (N, C, *d)")
        if not np.issubdtype(z.dtype, np.floating):
            raise TypeError(f"CrossEntropyLoss: input has dtype {z.dtype}, expected float")
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(
                f"CrossEntropyLoss: target has dtype {t.dtype}; expected integer class indices"
            )
        if t.shape != (z.shape[0],) + z.shape[2:]:
            raise ValueError(
                f"CrossEntropyLoss: target.shape={t.shape} must be input.shape without the "
                f"class dimension, {(z.shape[0],) + z.shape[2:]}"
            )
        C = z.shape[1]
        if t.size and (t.min() < 0 or t.max() >= C):
            raise ValueError(
                f"CrossEntropyLoss: target values must be in [0, {C}), got [{t.min()}, {t.max()}]"
            )
        logp = log_softmax(z, axis=1)
        nll = -np.take_along_axis(logp, t[:, None], axis=1)[:, 0]
        eps = self.label_smoothing
        per = nll if eps == 0 else (1 - eps) * nll - (eps / C) * logp.sum(axis=1)
        self._cache = (logp, t, per.size)
        if self.reduction == "none":
            return per
        total = per.sum()
        return np.asarray(total / per.size if self.reduction == "mean" else total)

    def backward(self, grad=1.0):
        """Gradient of the loss for the logits, times ``grad`` (scalar, or per-element
        for ``reduction='none'``)."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        logp, t, n = self._cache
        C = logp.shape[1]
        eps = self.label_smoothing
        g = np.exp(logp)
        if eps:
            g -= eps / C
        onehot = np.take_along_axis(g, t[:, None], axis=1) - (1 - eps)
        np.put_along_axis(g, t[:, None], onehot, axis=1)
        grad = np.asarray(grad)
        want = t.shape if self.reduction == "none" else ()
        if grad.shape != want:
            hint = (
                " (reduction='none' returns one loss per element: backward needs their "
                "gradient, torch's 'grad can be implicitly created only for scalar outputs')"
                if self.reduction == "none" and grad.ndim == 0
                else ""
            )
            raise ValueError(
                f"CrossEntropyLoss.backward: grad.shape={grad.shape} must equal the loss's "
                f"shape {want}{hint}"
            )
        grad = grad.astype(logp.dtype, copy=False)
        if self.reduction == "none":
            return g * grad[:, None]
        if self.reduction == "mean":
            grad = grad / n
        return g * grad
