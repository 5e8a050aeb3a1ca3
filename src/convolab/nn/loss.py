"""Cross-entropy from logits, as ``torch.nn.CrossEntropyLoss`` (class-index targets)."""

from __future__ import annotations

import numpy as np

from .module import Module, check_real

__all__ = ["CrossEntropyLoss", "log_softmax"]


def log_softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """``logits - logsumexp(logits)``, shifted by the maximum so nothing overflows."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as torch
        z = logits - logits.max(axis=axis, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


class CrossEntropyLoss(Module):
    """Cross-entropy from logits with class-index targets, as ``torch.nn.CrossEntropyLoss``.

    Per element ``i`` with target ``y`` (``w``: the class weights, 1 if not given;
    ``eps``: ``label_smoothing``; ``C`` classes)::

        loss_i = (1 - eps) * w[y] * -log p[i, y]  +  eps/C * sum_c w[c] * -log p[i, c]

    and 0 where ``y == ignore_index``.  ``'mean'`` divides the sum by ``sum_i w[y_i]`` over
    the elements not ignored (their count without weights), as torch does; ``'sum'``
    adds; ``'none'`` returns ``loss_i``.

    ``forward(input, target)``: input ``(N, C)`` or ``(N, C, *d)`` logits, target ``(N,)``
    or ``(N, *d)`` integer class indices (unbatched: input ``(C,)``, target ``()``);
    returns the loss (a 0-d array for ``'mean'`` and ``'sum'``).  ``backward(grad=1.0)``
    returns the gradient for the logits (``grad`` has the loss's shape).  A float target
    of the input's shape holds class probabilities (soft labels, as torch):
    ``loss_i = -sum_c w[c] t'[i, c] log p[i, c]`` with ``t' = (1 - eps) t + eps/C``;
    ``'mean'`` divides by the number of elements, and ``ignore_index`` must be negative.
    """

    def __init__(
        self,
        weight=None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if size_average is not None or reduce is not None:
            raise ValueError(
                "CrossEntropyLoss: size_average= and reduce= are deprecated in torch; "
                "use reduction='mean' | 'sum' | 'none'"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"CrossEntropyLoss: reduction={reduction!r} must be 'mean', 'sum' or 'none'"
            )
        check_real("CrossEntropyLoss", label_smoothing=label_smoothing)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(
                f"CrossEntropyLoss: label_smoothing={label_smoothing!r} must be in [0, 1]"
            )
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
            ignore_index, (int, np.integer)
        ):
            raise TypeError(f"CrossEntropyLoss: ignore_index={ignore_index!r} must be an int")
        if weight is not None:
            weight = np.array(
                weight.detach().cpu().numpy() if hasattr(weight, "detach") else weight,
                copy=True,
            )
            if weight.ndim != 1 or not np.issubdtype(weight.dtype, np.floating):
                raise ValueError(
                    f"CrossEntropyLoss: weight must be a 1-D float array of one weight per "
                    f"class, got shape {weight.shape} and dtype {weight.dtype}"
                )
        self.register_buffer("weight", weight)  # in the state dict when given, as torch
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self._cache = None
        self._unbatched = False

    def forward(self, input, target):
        self._cache = None  # a forward that fails leaves nothing for backward to misuse
        z = np.asarray(input)
        t = np.asarray(target)
        if z.ndim < 1:
            raise ValueError(
                f"CrossEntropyLoss: input.shape={z.shape} must be (N, C, *d), or (C,) "
                "unbatched"
            )
        if not np.issubdtype(z.dtype, np.floating):
            raise TypeError(f"CrossEntropyLoss: input has dtype {z.dtype}, expected float")
        self._unbatched = z.ndim == 1
        if self._unbatched:  # one sample, as torch: target () or (C,) probabilities
            if t.shape not in ((), z.shape):
                raise ValueError(
                    f"CrossEntropyLoss: target.shape={t.shape} must be () (a class index) "
                    f"or {z.shape} (class probabilities) for an unbatched input.shape={z.shape}"
                )
            z, t = z[None], t[None]
        if np.issubdtype(t.dtype, np.floating) and t.shape == z.shape:
            return self._forward_probabilities(z, t)
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(
                f"CrossEntropyLoss: target has dtype {t.dtype}; expected integer class "
                "indices, or class probabilities of the input's shape"
            )
        if t.shape != (z.shape[0],) + z.shape[2:]:
            raise ValueError(
                f"CrossEntropyLoss: target.shape={t.shape} must be input.shape without the "
                f"class dimension, {(z.shape[0],) + z.shape[2:]}"
            )
        C = z.shape[1]
        w = self._class_weights(z)
        keep = t != self.ignore_index
        tk = t[keep]
        if tk.size and (tk.min() < 0 or tk.max() >= C):
            raise ValueError(
                f"CrossEntropyLoss: target values must be in [0, {C}) (or ignore_index="
                f"{self.ignore_index}), got [{tk.min()}, {tk.max()}]"
            )
        tt = np.where(keep, t, 0)[:, None]  # ignored elements read class 0, then count 0
        logp = log_softmax(z, axis=1)
        eps = self.label_smoothing
        # a[i, c]: the coefficient of -log p[i, c] in loss_i (for the backward)
        wy = (np.ones(t.shape, z.dtype) if w is None else w[tt[:, 0]]) * keep
        a = np.zeros_like(logp)
        np.put_along_axis(a, tt, ((1 - eps) * wy)[:, None], axis=1)
        # the loss as torch forms it, not as -(a * logp).sum(1): a class with log p =
        # -inf (a logit of -inf) would give 0 * -inf = NaN where torch reads only the
        # target's log p, and an ignored element is 0 whatever its logits hold
        picked = np.take_along_axis(logp, tt, axis=1)[:, 0]
        zero = np.zeros((), z.dtype)
        per = np.where(keep, -(wy * picked), zero)
        if eps:
            wc = (np.ones(C, z.dtype) if w is None else w).reshape((1, C) + (1,) * (z.ndim - 2))
            a += (eps / C) * wc * keep[:, None]
            with np.errstate(invalid="ignore"):  # -inf + inf, 0 * inf: NaN, as torch
                smooth = np.where(keep, -(logp * wc).sum(axis=1), zero)
                per = (1 - eps) * per + (eps / C) * smooth
        denom = wy.sum() if self.reduction == "mean" else None
        self._cache = (logp, a, denom, t.shape)
        if self.reduction == "none":
            return np.asarray(per[0]) if self._unbatched else per
        total = per.sum()
        if self.reduction == "sum":
            return np.asarray(total)
        with np.errstate(invalid="ignore", divide="ignore"):  # all ignored: NaN, as torch
            return np.asarray(total / denom)

    def _class_weights(self, z: np.ndarray) -> np.ndarray | None:
        w, C = self.weight, z.shape[1]
        if w is not None:
            if w.shape != (C,):
                raise ValueError(
                    f"CrossEntropyLoss: weight.shape={w.shape} must be (C,) = ({C},) for "
                    f"input.shape={z.shape}"
                )
            if w.dtype != z.dtype:
                raise TypeError(
                    f"CrossEntropyLoss: weight has dtype {w.dtype} but input {z.dtype}; "
                    "dtypes must match"
                )
        return w

    def _forward_probabilities(self, z: np.ndarray, t: np.ndarray):
        """Soft targets (torch's probability form): ``loss_i = -sum_c w[c] t'[i, c] log
        p[i, c]`` with ``t' = (1 - eps) t + eps/C``; ``'mean'`` divides by the number of
        elements (not by weights), and ``ignore_index`` does not apply (a non-negative
        one is refused, as torch)."""
        if self.ignore_index >= 0:
            raise ValueError(
                f"CrossEntropyLoss: ignore_index={self.ignore_index} does not apply to class "
                "probabilities (float targets); as torch, only a negative one is taken"
            )
        if t.dtype != z.dtype:
            raise TypeError(
                f"CrossEntropyLoss: probability targets have dtype {t.dtype} but the input "
                f"{z.dtype}; dtypes must match"
            )
        C = z.shape[1]
        w = self._class_weights(z)
        eps = self.label_smoothing
        a = (1 - eps) * t + eps / C if eps else t.copy()
        if w is not None:
            a = a * w.reshape((1, C) + (1,) * (z.ndim - 2))
        logp = log_softmax(z, axis=1)
        with np.errstate(invalid="ignore"):  # torch's own form: 0 * -inf is NaN there too
            per = -(a * logp).sum(axis=1)
        n = per.size
        self._cache = (logp, a, n if self.reduction == "mean" else None, per.shape)
        if self.reduction == "none":
            return np.asarray(per[0]) if self._unbatched else per
        total = per.sum()
        if self.reduction == "sum":
            return np.asarray(total)
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty batch: NaN, as torch
            return np.asarray(total / n)

    def backward(self, grad=1.0):
        """Gradient of the loss for the logits, times ``grad`` (scalar, or per-element
        for ``reduction='none'``)."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        logp, a, denom, tshape = self._cache
        grad = np.asarray(grad)
        unbatched = self._unbatched
        want = (tshape[1:] if unbatched else tshape) if self.reduction == "none" else ()
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
        # d/dz of -sum_c a_c log p_c = (sum_c a_c) p - a
        with np.errstate(invalid="ignore", over="ignore"):  # NaN logits: NaN, as torch
            g = a.sum(axis=1, keepdims=True) * np.exp(logp) - a
            if self.reduction == "none":
                g = g * (grad[None] if unbatched else grad)[:, None]
            else:
                if self.reduction == "mean":
                    # every target ignored: no element counts, so no gradient (torch: zeros)
                    grad = grad / denom if denom else np.zeros_like(grad)
                g = g * grad
        return g[0] if unbatched else g
