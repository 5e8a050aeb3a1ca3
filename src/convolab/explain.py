"""Explain the arithmetic of a convolution, or of a stack of them.

``convolab.explain("conv2d", (1, 3, 32, 32), out_channels=16, kernel_size=3,
stride=2, padding=1)`` returns a :class:`LayerExplanation`: the output shape with
each dimension's output-size formula written out with the numbers filled in, the
padding applied on each side, warnings (input positions no kernel position ever
reads, ``output_padding`` effects, asymmetric ``'same'``), parameter count, FLOPs,
bytes, the workspace and algorithm of each role, and the receptive field.
``print()`` it for a table, ``.to_dict()`` / ``.to_json()`` for machines.

A stack (a ``convolab.nn.Sequential``, any iterable of conv layers, or a list of
layer specs such as ``"k=3,s=2,p=1"``) gives a :class:`StackExplanation` with the
same per layer and the receptive field accumulated through the stack.

Conventions
-----------
* Output sizes come from :mod:`convolab.spec` only (``ConvSpec.out_shape``).
* FLOPs = 2 x multiply-adds.  Every kernel tap counts, including taps that land on
  padding (the dense algorithms compute them).  conv: ``MACs = N*K*prod(O)*(C/g)*prod(k)``;
  conv_transpose: ``MACs = N*C_in*prod(S)*(C_out/g)*prod(k)``.  The input gradient and
  the weight gradient each cost the same MACs as the forward; the bias adds one
  FLOP per output element in the forward and one per output element in its gradient.
* Receptive field, jump and start offset per spatial dimension, in input cells
  (``start`` is the centre of the first output's field; 0 = centre of input cell 0)::

      conv:            jump' = jump*s
                       rf'   = rf + (k_eff-1)*jump
                       start'= start + ((k_eff-1)/2 - pad_lo)*jump
      conv_transpose:  jump' = jump/s
                       rf'   = rf + (k_eff-1)/s*jump
                       start'= start + (pad_lo - (k_eff-1)/2)/s*jump

  with ``k_eff = d*(k-1)+1``.  For a transposed convolution the outputs do not all
  read the same number of inputs (the checkerboard of strided upsampling), so its
  numbers are a bound on a regular lattice and may be fractional: output ``o``
  depends only on input cells within ``start + o*jump +- (rf-1)/2``.
* Workspace: ``convolab.select.workspace_bytes`` when the installed ``select`` has it;
  otherwise this module's estimate of the im2col column buffer that
  :mod:`convolab.algorithms.gemm` allocates (chunked over the batch within the
  ``workspace_bytes`` option) plus the zero-padded input copy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np

from . import select
from ._limits import short_repr
from .dtypes import SUPPORTED, SUPPORTED_NAMES, compute_dtype
from .options import get_options
from .spec import ConvSpec, as_tuple, make_spec, pool_output_size

__all__ = ["MAX_CHOOSE_ELEMENTS", "MAX_ELEMENTS", "MAX_POSITIONS", "MAX_PROBE_ELEMENTS",
           "LayerConfig", "LayerExplanation", "StackExplanation", "explain", "main",
           "parse_layer", "read_positions"]

OPS: dict[str, tuple[int | None, bool]] = {
    "conv": (None, False), "conv1d": (1, False), "conv2d": (2, False), "conv3d": (3, False),
    "conv_transpose": (None, True), "conv_transpose1d": (1, True),
    "conv_transpose2d": (2, True), "conv_transpose3d": (3, True),
}
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds, every kernel tap counted (also taps on padding); "
    "grad_input and grad_weight cost the forward's multiply-adds each; bias: 1 FLOP per "
    "output element forward and backward"
)

# Size limits.  The arithmetic (shapes, formulas, FLOPs, bytes, receptive field) is
# Python ints and has none; these bound what explain builds or runs to report the rest,
# so that it answers quickly for any sizes.  (``convolab.explain`` is the function; these
# are read as ``from convolab.explain import MAX_ELEMENTS``.)
MAX_ELEMENTS = 2**40  # per tensor (input, output, weight), 4 TiB at float32: more is refused
MAX_POSITIONS = 2**20  # per spatial dimension: which cells are read is checked cell by cell
MAX_CHOOSE_ELEMENTS = 2**32  # per tensor: convolab.select picks the algorithm and workspace
MAX_PROBE_ELEMENTS = 2**26  # one sample that a layer without a rule is run on, for its shape


def _limit(value: int) -> str:
    """A limit as written above: ``2**40``."""
    return f"2**{value.bit_length() - 1}" if value > 0 and not value & (value - 1) else f"{value:,}"


def dim_names(rank: int) -> list[str]:
    return {1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(rank, [f"d{i}" for i in range(rank)])


# ---------------------------------------------------------------------------
# Layer descriptions


@dataclass(frozen=True)
class LayerConfig:
    """One layer of a stack, as given (``padding`` unresolved).

    ``kind``: ``'conv'``, ``'pool'`` (a window op that keeps the channels, no weights)
    or ``'other'`` (assumed shape-preserving, e.g. an activation).
    """

    kind: str = "conv"
    transposed: bool = False
    kernel_size: Any = None
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    output_padding: Any = 0
    out_channels: int | None = None
    padding_mode: str = "zeros"
    bias: bool = True
    name: str = ""
    module: Any = None  # the layer object, for kind 'other' (Flatten, Linear, ...)
    in_channels: int | None = None  # a layer's own in_channels: the input must match
    ceil_mode: bool = False  # pooling only: round the output size up, as torch
    rank: int | None = None  # spatial dimensions the layer takes (type=conv2d), if it says


_KEYS = {
    "k": "kernel_size", "kernel": "kernel_size", "kernel_size": "kernel_size",
    "s": "stride", "stride": "stride", "p": "padding", "padding": "padding",
    "d": "dilation", "dilation": "dilation", "g": "groups", "groups": "groups",
    "op": "output_padding", "opad": "output_padding", "output_padding": "output_padding",
    "c": "out_channels", "out": "out_channels", "out_channels": "out_channels",
    "mode": "padding_mode", "padding_mode": "padding_mode", "bias": "bias",
    "t": "transposed", "transposed": "transposed", "type": "type", "name": "name",
}
LAYER_SYNTAX = (
    "comma-separated key=value: k=kernel_size s=stride p=padding d=dilation g=groups "
    "c=out_channels opad=output_padding mode=padding_mode bias=0|1 "
    "type=conv|conv_transpose|pool (a pool's stride defaults to its kernel size, as torch); "
    "several dimensions with 'x' (k=3x5); per-side padding "
    "as lo:hi per dimension (p=0:1x1:1); p=same|valid|causal"
)


def _parse_ints(text: str, what: str) -> Any:
    """``'3'`` -> 3; ``'3x5'`` or ``'3,5'`` -> (3, 5)."""
    parts = text.replace(",", "x").split("x")
    try:
        vals = tuple(int(t) for t in parts)  # '3x' or 'x3' has an empty part: refused
    except ValueError:
        also = (", same, valid, causal, or lo:hi per dimension (0:1x1:1)"
                if what == "padding" else "")
        raise ValueError(
            f"{what}={text!r} must be an int or ints joined by 'x' (e.g. 3x3){also}") from None
    if not vals:
        raise ValueError(f"{what}={text!r} is empty")
    return vals[0] if len(vals) == 1 else vals


def _parse_padding(text: str) -> Any:
    """``'1'``, ``'1x2'``, ``'same'``, or per side ``'0:1x1:1'`` (lo:hi per dimension)."""
    if text in ("same", "valid", "causal"):
        return text
    if ":" in text:
        pairs = []
        for part in text.replace(",", "x").split("x"):
            lo, sep, hi = part.partition(":")
            try:
                if not sep:
                    raise ValueError
                pairs.append((int(lo), int(hi)))
            except ValueError:
                raise ValueError(f"padding={text!r}: per-side padding is lo:hi (two ints) for "
                                 "every dimension, joined by 'x' (e.g. 0:1x1:1)") from None
        return tuple(pairs)
    return _parse_ints(text, "padding")


_TRUE, _FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n")


def parse_layer(text: str, default_transposed: bool = False) -> LayerConfig:
    """``"k=3,s=2,p=1"`` -> :class:`LayerConfig` (syntax: :data:`LAYER_SYNTAX`)."""
    items: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(f"layer {text!r}: {item!r} is not key=value with a known key; "
                             f"syntax: {LAYER_SYNTAX}")
        items[key.strip()] = val.strip()
    return _layer_config(items, f"layer {text!r}", default_transposed)


# LayerConfig's own field names, accepted in a dict beside the spec keys of _KEYS
_FIELDS = ("kind", "in_channels", "ceil_mode", "rank")


def _layer_config(items: dict, where: str, default_transposed: bool = False) -> LayerConfig:
    """A :class:`LayerConfig` from spec keys (``k``, ``kernel_size``, ``type``, ...) and
    values, given as the strings of the spec syntax or as Python values (a dict), with
    the same defaults either way (a pool's stride is its kernel size)."""
    kw: dict[str, Any] = {"transposed": default_transposed}
    for key, val in items.items():
        if not isinstance(key, str) or (key not in _KEYS and key not in _FIELDS):
            raise ValueError(f"{where}: {key!r} is not a known key; syntax: {LAYER_SYNTAX}")
        name = _KEYS.get(key, key)
        text = val.strip() if isinstance(val, str) else None
        if name == "padding":
            kw[name] = _parse_padding(text) if text is not None else val
        elif name in ("kernel_size", "stride", "dilation", "output_padding"):
            kw[name] = _parse_ints(text, name) if text is not None else val
        elif name in ("groups", "out_channels", "in_channels", "rank"):
            bad = ValueError(f"{where}: {name}={val!r} must be an int")
            if text is not None:
                try:
                    kw[name] = int(text)
                except ValueError:
                    raise bad from None
            elif isinstance(val, numbers.Integral) and not isinstance(val, (bool, np.bool_)):
                kw[name] = int(val)
            else:
                raise bad
        elif name in ("bias", "transposed", "ceil_mode"):
            if isinstance(val, (bool, np.bool_)) or (
                    isinstance(val, numbers.Integral) and val in (0, 1)):
                kw[name] = bool(val)
            elif text is None or text.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{where}: {name}={val!r} must be one of "
                                 f"{'/'.join(_TRUE)} or {'/'.join(_FALSE)}")
            else:
                kw[name] = text.lower() in _TRUE
        elif name == "type":
            if not isinstance(val, str) or (
                    val not in ("conv", "conv_transpose", "pool") and val not in OPS):
                raise ValueError(f"{where}: type={val!r} must be conv, "
                                 "conv_transpose or pool")
            kw["kind"] = "pool" if val == "pool" else "conv"
            kw["transposed"] = val.startswith("conv_transpose")
            kw["rank"] = OPS[val][0] if val in OPS else None
        elif name == "kind":
            if val not in ("conv", "pool"):
                raise ValueError(f"{where}: kind={val!r} must be conv or pool "
                                 "(type=conv_transpose for a transposed one)")
            kw[name] = val
        else:
            kw[name] = val
    if kw.get("kernel_size") is None:
        raise ValueError(f"{where} needs a kernel size (k=...)")
    if kw.get("kind") == "pool" and "stride" not in kw:
        kw["stride"] = kw["kernel_size"]  # torch's pooling default
    return LayerConfig(**kw)


def _layer_from(obj: Any, default_transposed: bool = False) -> LayerConfig:
    """A LayerConfig, dict, spec string, convolab/torch conv or pooling layer, or other
    (strings and dicts transposed by default when ``default_transposed``)."""
    if isinstance(obj, LayerConfig):
        return obj
    if isinstance(obj, str):
        return parse_layer(obj, default_transposed)
    if isinstance(obj, dict):
        return _layer_config(obj, f"layer {obj!r}", default_transposed)
    cls = type(obj).__name__
    if hasattr(obj, "kernel_size") and hasattr(obj, "weight") and hasattr(obj, "in_channels"):
        transposed = bool(getattr(obj, "_transposed", False) or getattr(obj, "transposed", False)
                          or "Transpose" in cls)
        return LayerConfig(
            "conv", transposed, tuple(obj.kernel_size), obj.stride, obj.padding, obj.dilation,
            obj.groups, getattr(obj, "output_padding", 0), obj.out_channels,
            getattr(obj, "padding_mode", "zeros"), getattr(obj, "bias", None) is not None, cls,
            in_channels=int(obj.in_channels),
        )
    if cls in POOLS and hasattr(obj, "kernel_size"):
        k = obj.kernel_size
        stride = getattr(obj, "stride", None)
        empty = stride is None or (isinstance(stride, (list, tuple)) and not stride)
        return LayerConfig("pool", False, k, k if empty else stride,
                           getattr(obj, "padding", 0), getattr(obj, "dilation", 1), name=cls,
                           module=obj, ceil_mode=bool(getattr(obj, "ceil_mode", False)))
    return LayerConfig("other", name=cls, module=obj)


# Layers that keep the shape and act on each position alone (their receptive field is
# the incoming one).  Normalisation statistics are not counted, as is usual for RFs.
POINTWISE = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
    "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
    "Softsign", "Softshrink", "Hardshrink", "Tanhshrink", "Threshold", "LogSigmoid",
    "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "FeatureAlphaDropout", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
    "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
})
POOLS = frozenset(f"{kind}Pool{r}d" for kind in ("Max", "Avg") for r in (1, 2, 3))


def _params_of(m: Any) -> int:
    """Parameter count of a convolab module (``num_parameters``) or a torch one."""
    if hasattr(m, "num_parameters"):
        return int(m.num_parameters())
    if hasattr(m, "parameters"):
        return int(sum(math.prod(int(v) for v in p.shape) for p in m.parameters()))
    return 0


def _probe(cfg: LayerConfig, shape: tuple[int, ...], dtype) -> tuple[int, ...]:
    """The output shape of a layer explain has no rule for: a copy of it (so that running
    statistics and the like stay as they are), in eval mode, run on zeros of one sample
    of ``shape`` (the whole batch if the layer changes the batch size)."""
    import copy

    m = cfg.module
    torch = sys.modules.get("torch")
    is_torch = torch is not None and isinstance(m, torch.nn.Module)

    def run(shp):
        mm = copy.deepcopy(m)
        if hasattr(mm, "eval"):
            mm.eval()
        if is_torch:
            first = next(iter(mm.parameters()), None)
            dt = torch.get_default_dtype() if first is None else first.dtype
            with torch.no_grad():
                return tuple(mm(torch.zeros(shp, dtype=dt)).shape)
        first = next(iter(getattr(mm, "parameters", lambda: [])()), None)
        dt = np.dtype(dtype) if first is None else np.asarray(first.data).dtype
        return tuple(np.shape(mm(np.zeros(shp, dtype=dt))))

    one = (min(shape[0], 1),) + tuple(shape[1:])

    def run_checked(shp):
        if math.prod(shp) > MAX_PROBE_ELEMENTS:
            raise ValueError(
                f"explain has no rule for {cfg.name}, and running a copy of it on zeros of "
                f"shape {shp} ({math.prod(shp):,} elements) to find its output shape is past "
                f"explain's limit of MAX_PROBE_ELEMENTS={_limit(MAX_PROBE_ELEMENTS)} elements")
        try:
            return run(shp)
        except Exception as exc:
            raise ValueError(
                f"explain has no rule for {cfg.name}, and running a copy of it on zeros of "
                f"shape {shp} to find its output shape failed ({type(exc).__name__}: {exc})"
            ) from None

    out = run_checked(one)
    if out[:1] != one[:1]:  # the layer changes the batch: run it on all of it
        out = run_checked(tuple(shape))
    elif shape[0] != one[0]:
        out = (shape[0],) + out[1:]
    return out


def _other_layer(cfg: LayerConfig, shape: tuple[int, ...], dtype,
                 ) -> tuple[tuple[int, ...], str, bool]:
    """Output shape of a non-window layer, a note, and whether the receptive field of the
    incoming positions goes on through it unchanged."""
    m = cfg.module
    if hasattr(m, "out_features") and hasattr(m, "in_features"):
        if shape[-1] != int(m.in_features):
            raise ValueError(f"input_shape={shape}: the last dimension must be the layer's "
                             f"in_features={m.in_features}")
        return shape[:-1] + (int(m.out_features),), "linear: last dimension -> out_features", False
    if cfg.name == "Flatten":
        a = getattr(m, "start_dim", 1) % len(shape)
        b = getattr(m, "end_dim", -1) % len(shape)
        flat = shape[:a] + (math.prod(shape[a:b + 1]),) + shape[b + 1:]
        return flat, "flatten: the spatial dimensions end here", False
    if cfg.name.startswith("Adaptive") and hasattr(m, "output_size"):
        size = m.output_size
        if isinstance(size, numbers.Integral) or size is None:
            size = (size,) * (len(shape) - 2)
        sp = tuple(n if o is None else int(o) for n, o in zip(shape[2:], size))
        return (shape[:2] + sp, "adaptive pooling: each output averages a bin of the input "
                "(bins of unequal size); the receptive field is not tracked past it", False)
    if cfg.name in POINTWISE:
        return shape, "keeps the shape, each position on its own", True
    out = _probe(cfg, shape, dtype)
    return out, (f"explain has no rule for {cfg.name}: its output shape is that of running "
                 "a copy of it on zeros; the receptive field is not tracked past it"), False


def _is_sequential(m: Any) -> bool:
    """A Sequential (torch's, convolab's, a subclass of either, or a duck type of that
    name): it runs its sub-modules in order."""
    return hasattr(m, "_modules") and any(c.__name__ == "Sequential" for c in type(m).__mro__)


def _iter_layers(model: Any) -> list[Any]:
    """Sequential (iterable, or duck-typed through ``_modules``), list, or a single layer;
    a Sequential inside is read layer by layer (it runs its layers in order)."""
    layers = _iter_top(model)
    out: list[Any] = []
    for m in layers:
        out.extend(_iter_layers(m) if _is_sequential(m) else [m])
    return out


def _iter_top(model: Any) -> list[Any]:
    if isinstance(model, (list, tuple)):
        return list(model)
    mods = getattr(model, "_modules", None)
    if hasattr(model, "kernel_size") or isinstance(model, (str, dict, LayerConfig)):
        return [model]
    try:
        return list(iter(model))
    except TypeError:
        pass
    if mods:
        return list(mods.values())
    raise TypeError(f"model={type(model).__name__} is not a layer, a list of layers or a "
                    "Sequential")


# ---------------------------------------------------------------------------
# Arithmetic (per spatial dimension)


def read_positions(n: int, k: int, s: int, lo: int, d: int, out: int,
                   transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Which input positions feed some output, and which outputs receive some input.

    conv: input ``i`` is read by output ``o`` with tap ``t`` when ``o*s + t*d - lo = i``;
    conv_transpose: input ``i`` feeds output ``o`` when ``i*s + t*d - lo = o``.
    Returns boolean masks ``(inputs_used (n,), outputs_reached (out,))``.

    Arrays of ``n`` and ``out`` entries and a few more of that size, whatever ``k``:
    :func:`explain` calls it up to :data:`MAX_POSITIONS` positions and parameters up to
    ``2**40`` (which keep the int64 arithmetic exact).
    """
    small, big = (n, out) if transposed else (out, n)
    # small index o links to the big indices a + t*d (t = 0..k-1) inside 0..big-1
    a = np.arange(small, dtype=np.int64) * s - lo
    first = np.maximum(0, -(a // d))  # the first tap at or past big index 0
    last = np.minimum(k - 1, (big - 1 - a) // d)  # the last tap before big index big
    small_mask = first <= last
    p0 = (a + first * d)[small_mask]
    p1 = (a + last * d)[small_mask]
    if d >= big:  # each window reaches at most one big index
        big_mask = np.zeros(big, bool)
        big_mask[p0] = True
    else:  # mark p0, p0+d, ..., p1: a difference array summed along each residue of d
        rows = -(-big // d) + 1
        diff = np.bincount(p0, minlength=rows * d)
        diff -= np.bincount(p1 + d, minlength=rows * d)
        big_mask = diff.reshape(rows, d).cumsum(axis=0).ravel()[:big] > 0
    return (small_mask, big_mask) if transposed else (big_mask, small_mask)


def _ranges(idx: Iterable[int], limit: int = 6) -> str:
    idx = np.unique(np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx,
                               dtype=np.int64))
    if not idx.size:
        return ""
    cut = np.flatnonzero(np.diff(idx) != 1)  # runs of consecutive indices
    starts, ends = idx[np.r_[0, cut + 1]], idx[np.r_[cut, idx.size - 1]]
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts[:limit], ends[:limit])]
    if starts.size > limit:
        parts.append(f"... ({starts.size - limit} more runs)")
    return ", ".join(parts)


def _fmt_frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _frac_json(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


def _formula(spec: ConvSpec, i: int, n: int, out: int, ceil: bool = False) -> str:
    k, s, (lo, hi), d = spec.kernel_size[i], spec.stride[i], spec.padding[i], spec.dilation[i]
    if spec.transposed:
        op = spec.output_padding[i] if spec.output_padding else 0
        return (f"({n} - 1)*{s} - {lo} - {hi} + {d}*({k} - 1) + {op} + 1 = {out}")
    num = n + lo + hi - d * (k - 1) - 1
    if ceil:  # torch's pooling with ceil_mode=True
        up = -(-num // s) + 1
        text = (f"ceil(({n} + {lo} + {hi} - {d}*({k} - 1) - 1) / {s}) + 1 "
                f"= ceil({num} / {s}) + 1 = {up}")
        if up != out:
            text += f"; that window would start in the right padding, so {out}"
        return text
    return (f"floor(({n} + {lo} + {hi} - {d}*({k} - 1) - 1) / {s}) + 1 "
            f"= floor({num} / {s}) + 1 = {out}")


FORMULA_CONV = "O = floor((S + pad_lo + pad_hi - dilation*(k - 1) - 1) / stride) + 1"
FORMULA_CEIL = ("O = ceil((S + pad_lo + pad_hi - dilation*(k - 1) - 1) / stride) + 1, less 1 "
                "if that last window would start in the right padding (ceil_mode=True)")
FORMULA_TRANSPOSED = ("O = (S - 1)*stride - pad_lo - pad_hi + dilation*(k - 1) "
                      "+ output_padding + 1")


def _workspace(role: str, spec: ConvSpec, x_shape, w_shape, dtype, algorithm: str,
               out_spatial) -> tuple[int | None, str]:
    est = getattr(select, "workspace_bytes", None)
    if est is not None:
        try:
            return int(est(role, spec, x_shape, w_shape, dtype)), "convolab.select.workspace_bytes"
        except (ImportError, ValueError, TypeError, AttributeError):
            pass  # fall back to the im2col estimate below
    item = np.dtype(dtype).itemsize
    N, C = x_shape[0], x_shape[1]
    padded = 0
    if any(lo or hi for lo, hi in spec.padding) and role != "input_grad":
        padded = N * C * math.prod(spec.padded_shape(x_shape[2:])) * item
    if algorithm == "direct":
        return padded, "estimate: zero-padded input copy (direct needs no column buffer)"
    kk = math.prod(spec.kernel_size)
    if role == "input_grad":  # x_shape is the gradient (N, K, *O); dcols is (n, C*kk, P)
        chans = w_shape[1] * spec.groups
        P = math.prod(x_shape[2:])
    else:
        chans, P = C, math.prod(out_spatial)
    per_sample = chans * kk * P * item
    one_to_one = kk == 1 and all(s == 1 for s in spec.stride) and role != "input_grad"
    if one_to_one:
        per_sample = 0
    step = max(1, min(N, get_options().workspace_bytes // max(1, per_sample))) if N else 0
    return per_sample * step + padded, (
        "estimate: im2col column buffer (gemm"
        + ("" if algorithm == "gemm" else f"; {algorithm!r} has no estimate, gemm's shown")
        + ") + padded copy")


# ---------------------------------------------------------------------------
# One layer


@dataclass
class LayerExplanation:
    """Everything ``explain`` knows about one layer; ``str()`` is a table."""

    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    spec: ConvSpec | None
    kind: str = "conv"
    weight_shape: tuple[int, ...] | None = None
    bias_shape: tuple[int, ...] | None = None
    formulas: list[str] = field(default_factory=list)
    padding_mode: str = "zeros"
    params: int = 0
    flops: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, Any] = field(default_factory=dict)
    algorithm: dict[str, dict[str, str]] = field(default_factory=dict)
    receptive_field: list[Fraction] = field(default_factory=list)
    jump: list[Fraction] = field(default_factory=list)
    start: list[Fraction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    ceil_mode: bool = False  # a pooling layer that rounds its output size up
    tracks_rf: bool = True  # False: the receptive field is not followed past this layer

    @property
    def formula(self) -> str:
        """The output-size formula, in symbols (the per-dimension ``formulas`` fill it in)."""
        if self.spec is not None and self.spec.transposed:
            return FORMULA_TRANSPOSED
        return FORMULA_CEIL if self.ceil_mode else FORMULA_CONV

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        d: dict[str, Any] = {
            "op": self.op, "kind": self.kind, "name": self.name,
            "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
        }
        if spec is not None:
            d.update({
                "weight_shape": None if self.weight_shape is None else list(self.weight_shape),
                "bias_shape": None if self.bias_shape is None else list(self.bias_shape),
                "kernel_size": list(spec.kernel_size), "stride": list(spec.stride),
                "dilation": list(spec.dilation), "groups": spec.groups,
                "padding": [list(p) for p in spec.padding], "padding_mode": self.padding_mode,
                "output_padding": list(spec.output_padding) if spec.transposed else None,
                "formula": self.formula,
                "formulas": self.formulas,
            })
        d.update({
            "params": self.params, "flops": dict(self.flops), "bytes": self.bytes,
            "algorithm": self.algorithm,
            "receptive_field": [_frac_json(x) for x in self.receptive_field],
            "jump": [_frac_json(x) for x in self.jump],
            "start": [_frac_json(x) for x in self.start],
            "warnings": self.warnings, "notes": self.notes,
        })
        if self.flops:
            d["flops"]["convention"] = FLOP_CONVENTION
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        return "\n".join(_layer_lines(self))


def _human_bytes(b: int | None) -> str:
    if b is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b} B" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024  # type: ignore[assignment]
    return str(b)  # pragma: no cover


def _rf_text(e: LayerExplanation) -> str:
    names = dim_names(len(e.receptive_field))
    return "  ".join(f"{n}: {_fmt_frac(r)} / {_fmt_frac(j)} / {_fmt_frac(s)}"
                     for n, r, j, s in zip(names, e.receptive_field, e.jump, e.start))


def _layer_lines(e: LayerExplanation) -> list[str]:
    label = f"{e.op} ({e.name})" if e.name else e.op
    lines = [f"{label}: input {e.input_shape} -> output {e.output_shape}"]
    if e.spec is None:
        lines += [f"  {n}" for n in e.notes]
        return lines
    spec = e.spec
    names = dim_names(spec.rank)
    if e.weight_shape is not None:
        lines.append(f"  weight {e.weight_shape}, bias {e.bias_shape}, groups {spec.groups}")
    lines.append("  output size, per spatial dimension:")
    lines.append("    " + e.formula)
    lines += [f"    {n}: {f}" for n, f in zip(names, e.formulas)]
    pads = "  ".join(f"{n}: ({lo}, {hi})" for n, (lo, hi) in zip(names, spec.padding))
    what = ("padding (lo, hi), cropped from the full output" if spec.transposed
            else "padding applied (lo, hi)")
    lines.append(f"  {what}: {pads}"
                 + (f"  mode {e.padding_mode!r}" if e.padding_mode != "zeros" else ""))
    lines.append(f"  receptive field / jump / start: {_rf_text(e)}")
    if e.kind == "conv":
        f = e.flops
        lines.append(f"  params: {e.params:,}")
        lines.append(f"  FLOPs: forward {f['forward']:,} (+ bias {f['forward_bias']:,}), "
                     f"grad_input {f['input_grad']:,}, grad_weight {f['weight_grad']:,}, "
                     f"grad_bias {f['bias_grad']:,}")
        b = e.bytes
        ws = ", ".join(f"{r} {_human_bytes(v)}" for r, v in b["workspace"].items())
        lines.append(f"  bytes: input {_human_bytes(b['input'])}, output "
                     f"{_human_bytes(b['output'])}, weight+bias {_human_bytes(b['weight'])}")
        lines.append(f"  workspace ({b['workspace_source']}): {ws}")
        for role, a in e.algorithm.items():
            lines.append(f"  algorithm {role}: {a['name']} ({a['reason']})")
    elif e.kind == "pool":
        lines.append(f"  FLOPs (comparisons/adds): {e.flops.get('forward', 0):,}")
    for w in e.warnings:
        lines.append(f"  WARNING: {w}")
    for n in e.notes:
        lines.append(f"  note: {n}")
    return lines


def _check_pool(cfg: LayerConfig, C: int, r: int) -> None:
    """A pooling layer takes a kernel, stride, padding (at most half the kernel, as torch
    and :class:`convolab.nn.MaxPool2d`), dilation and ceil_mode; nothing else."""
    given = [f"{name}={value!r}" for name, value, default in (
        ("out_channels", cfg.out_channels, None), ("groups", cfg.groups, 1),
        ("padding_mode", cfg.padding_mode, "zeros"), ("transposed", cfg.transposed, False))
        if value != default and not (name == "out_channels" and value == C)]
    if given:
        raise ValueError(f"a pooling layer keeps the channels and takes no {', '.join(given)}")
    try:
        if isinstance(cfg.padding, str):
            raise TypeError
        p = as_tuple("padding", cfg.padding, r)
    except TypeError:
        raise ValueError(f"padding={cfg.padding!r}: a pooling layer takes one int padding "
                         "per dimension, applied on both sides (as torch)") from None
    k = as_tuple("kernel_size", cfg.kernel_size, r)
    if any(pi < 0 or pi > ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"padding={cfg.padding}: a pooling layer's padding must be "
                         f"non-negative and at most half the kernel_size={cfg.kernel_size} "
                         "(as torch)")


def _check_elements(what: str, shape: tuple[int, ...]) -> None:
    """Refuse a tensor of more than :data:`MAX_ELEMENTS` elements (``what``: the words
    that name it and the arguments that set its shape)."""
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{what} has {n:,} elements, more than explain's limit of "
            f"MAX_ELEMENTS={_limit(MAX_ELEMENTS)} elements per tensor")


def _explain_layer(cfg: LayerConfig, input_shape: tuple[int, ...], dtype,
                   rank: int | None, incoming: tuple[list, list, list] | None,
                   lost: str | None = None) -> LayerExplanation:
    """One layer; ``incoming``: the receptive field so far (None: start afresh), ``lost``:
    why an earlier layer of the stack ended the tracking (then no receptive field)."""
    if cfg.kind == "other":
        out_shape, note, spatial = _other_layer(cfg, tuple(input_shape), dtype)
        rf, jump, start = incoming if (incoming and spatial) else ([], [], [])
        e = LayerExplanation(cfg.name or "layer", input_shape, out_shape, None, "other",
                             params=_params_of(cfg.module), receptive_field=list(rf),
                             jump=list(jump), start=list(start), notes=[note], name=cfg.name,
                             tracks_rf=spatial)
        m = cfg.module
        if hasattr(m, "in_features") and hasattr(m, "out_features"):  # Linear: one GEMM
            rows = math.prod(input_shape[:-1])
            macs = rows * int(m.in_features) * int(m.out_features)
            bias = rows * int(m.out_features) if getattr(m, "bias", None) is not None else 0
            e.flops = {"forward": 2 * macs, "forward_bias": bias, "input_grad": 2 * macs,
                       "weight_grad": 2 * macs, "bias_grad": bias, "total": 6 * macs + 2 * bias}
        return e
    if len(input_shape) < 3:
        raise ValueError(f"input_shape={input_shape} must be (N, C, *spatial) with at least "
                         "one spatial dimension")
    r = len(input_shape) - 2
    if cfg.rank is not None and rank is None:
        rank = cfg.rank
    if rank is not None and rank != r:
        raise ValueError(f"input_shape={input_shape} has {r} spatial dimensions but the op is "
                         f"{rank}-D; give (N, C, *spatial) with {rank} spatial sizes")
    N, C, S = input_shape[0], input_shape[1], tuple(input_shape[2:])
    if N < 0 or C < 1 or any(n < 1 for n in S):
        raise ValueError(f"input_shape={tuple(input_shape)}: the batch must be >= 0 and the "
                         "channels and spatial sizes >= 1 (as the ops; only the batch may be "
                         "empty)")
    _check_elements(f"input_shape={tuple(input_shape)}", tuple(input_shape))
    if cfg.out_channels is not None:
        if isinstance(cfg.out_channels, (bool, np.bool_)) or not isinstance(
                cfg.out_channels, numbers.Integral):
            raise TypeError(f"out_channels={cfg.out_channels!r} must be an int (or None: as "
                            f"many as the input's), got {type(cfg.out_channels).__name__}")
        if cfg.out_channels < 1:
            raise ValueError(f"out_channels={cfg.out_channels} must be positive")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype={dtype!r} is not a dtype") from None
    if dt.type not in SUPPORTED:
        raise TypeError(f"dtype={dt.name} is not supported; convolab computes in "
                        f"{SUPPORTED_NAMES}")
    if cfg.kernel_size is None:
        raise ValueError("kernel_size is required")
    k = as_tuple("kernel_size", cfg.kernel_size, r)
    op_name = ("conv_transpose" if cfg.transposed else "conv") + f"{r}d"
    if cfg.kind == "pool":
        op_name = f"pool{r}d"
    if cfg.padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={cfg.padding_mode!r} must be one of {PADDING_MODES}")
    if cfg.transposed and cfg.padding_mode != "zeros":
        raise ValueError(f"padding_mode={cfg.padding_mode!r}: transposed convolutions support "
                         "only padding_mode='zeros' (as torch)")
    if not cfg.transposed and any(as_tuple("output_padding", cfg.output_padding, r)):
        raise ValueError(f"output_padding={cfg.output_padding}: only transposed convolutions "
                         "take an output_padding")
    if cfg.kind == "pool":
        _check_pool(cfg, C, r)
    spec = make_spec(k, cfg.stride, cfg.padding, cfg.dilation, cfg.groups,
                     cfg.output_padding if cfg.transposed else None, transposed=cfg.transposed)
    ceil = cfg.kind == "pool" and cfg.ceil_mode
    if ceil:
        out = tuple(pool_output_size(n, k_, s_, lo, d_, True) for n, k_, s_, (lo, _), d_
                    in zip(S, spec.kernel_size, spec.stride, spec.padding, spec.dilation))
    else:
        out = spec.out_shape(S)
    if any(o <= 0 for o in out):
        bad = [f"{n}: " + _formula(spec, i, S[i], out[i]) for i, n in enumerate(dim_names(r))
               if out[i] <= 0]
        raise ValueError(f"{op_name}: the output would be empty ({'; '.join(bad)}); the "
                         "effective kernel must fit in the padded input")
    g = spec.groups
    K = C if cfg.out_channels is None else int(cfg.out_channels)
    if cfg.kind == "conv":
        if cfg.in_channels is not None and cfg.in_channels != C:
            raise ValueError(f"input_shape={tuple(input_shape)} has {C} channels but the "
                             f"layer's in_channels={cfg.in_channels}")
        if C % g:
            raise ValueError(f"groups={g} must divide in_channels={C}")
        if K % g:
            raise ValueError(f"groups={g} must divide out_channels={K}")
    given = (f"input_shape={tuple(input_shape)}, kernel_size={cfg.kernel_size!r}, "
             f"stride={cfg.stride!r}, padding={cfg.padding!r}, dilation={cfg.dilation!r}"
             + (f", output_padding={cfg.output_padding!r}" if cfg.transposed else "")
             + (f", out_channels={K}" if cfg.kind == "conv" else ""))
    _check_elements(f"the output shape {(N, K) + out} (from {given})", (N, K) + out)
    if cfg.kind == "conv":
        w_shape = ((C, K // g) if cfg.transposed else (K, C // g)) + k
        _check_elements(f"the weight shape {w_shape} (from kernel_size={cfg.kernel_size!r}, "
                        f"out_channels={K}, groups={g}, in_channels={C})", w_shape)
    e = LayerExplanation(op_name, tuple(input_shape), (N, K) + out, spec, cfg.kind,
                         padding_mode=cfg.padding_mode, name=cfg.name, ceil_mode=ceil)
    e.formulas = [_formula(spec, i, S[i], out[i], ceil) for i in range(r)]
    names = dim_names(r)
    kk = math.prod(k)
    item = dt.itemsize

    # Warnings ----------------------------------------------------------
    if isinstance(cfg.padding, str) and cfg.padding == "same":
        for n_, (lo, hi) in zip(names, spec.padding):
            if lo != hi:
                e.warnings.append(
                    f"{n_}: padding='same' needs {lo + hi} = dilation*(k-1) cells in total, "
                    f"an odd number: applied ({lo}, {hi}), the extra cell on the high side "
                    "(as torch); the output is shifted by half a cell relative to the input")
    if isinstance(cfg.padding, str) and cfg.padding == "causal":
        e.notes.append("padding='causal': all dilation*(k-1) padding on the low side, so "
                       "output t sees only inputs <= t*stride")
    for i in range(r):
        lo = spec.padding[i][0]
        last = (out[i] - 1) * spec.stride[i] + spec.dilation[i] * (k[i] - 1)
        if max(S[i], out[i]) <= MAX_POSITIONS and max(
                k[i], spec.stride[i], spec.dilation[i], *spec.padding[i]) <= 2**40:
            used_in, reached = read_positions(S[i], k[i], spec.stride[i], lo,
                                              spec.dilation[i], out[i], spec.transposed)
            unread = np.flatnonzero(~used_in)
            missed = np.flatnonzero(~reached)
        else:  # no arrays of positions: only the cells past the last window, by arithmetic
            k_, s_, d_ = k[i], spec.stride[i], spec.dilation[i]
            if spec.transposed or not ((d_ == 1 and s_ <= k_) or (k_ == 1 and s_ == 1)):
                skipped = ("output positions that receive no input and input positions "
                           "cropped away are" if spec.transposed else "input positions "
                           "left between the windows by stride or dilation are")
                e.notes.append(
                    f"{names[i]}: {skipped} not looked for: explain checks that position by "
                    f"position up to MAX_POSITIONS={_limit(MAX_POSITIONS)} positions per "
                    f"dimension (here {S[i]:,} in, {out[i]:,} out) and kernel, stride, "
                    "dilation and padding up to 2**40")
            first = min(S[i], max(0, last - lo + 1))  # conv: the first input past the last window
            if not spec.transposed and first < S[i]:
                e.warnings.append(
                    f"{names[i]}: input positions "
                    + (f"{first}-{S[i] - 1}" if S[i] - first > 1 else f"{first}") + " "
                    f"({S[i] - first} of {S[i]}) are never read by any kernel position: "
                    f"the last window ends at padded index {last}; (S + pad_lo + pad_hi - "
                    f"k_eff) % stride = {(S[i] + sum(spec.padding[i]) - last - 1)} cell(s) "
                    "left over")
            unread = missed = np.arange(0)
        if unread.size:
            if spec.transposed:
                why = "they only reach cropped output positions (padding larger than the kernel)"
            elif unread.max() == S[i] - 1 and unread.size == S[i] - 1 - (last - lo):
                left = (S[i] + sum(spec.padding[i]) - spec.effective_kernel[i]) % spec.stride[i]
                why = (f"the last window ends at padded index {last}; "
                       f"(S + pad_lo + pad_hi - k_eff) % stride = {left} cell(s) left over")
            else:
                why = "stride and dilation leave gaps between the cells the kernel reads"
            e.warnings.append(
                f"{names[i]}: input positions {_ranges(unread)} ({unread.size} of {S[i]}) are "
                f"never read by any kernel position: {why}")
        if not spec.transposed:
            hi = spec.padding[i][1]
            never = min(hi, S[i] + lo + hi - 1 - last)
            if never > 0:  # harmless (only zeros go unread), hence a note
                e.notes.append(
                    f"{names[i]}: {never} of the {hi} high-side padding cell(s) are never read "
                    f"(the last window ends at padded index {last} of "
                    f"0..{S[i] + lo + hi - 1}); the padding that matters is "
                    f"({lo}, {hi - never}), as in the guide's padding_strides_odd")
        if spec.transposed:
            if missed.size:
                e.warnings.append(
                    f"{names[i]}: output positions {_ranges(missed)} ({missed.size} of {out[i]}) "
                    "receive no input contribution (only the bias)")
            s_, kd, (plo, phi) = spec.stride[i], spec.effective_kernel[i], spec.padding[i]
            opad = spec.output_padding[i]
            base = (S[i] - 1) * s_ + kd - plo - phi  # conv input sizes base..base+s-1 -> S[i]
            if base > 0 and opad < s_ and s_ > 1:
                msg = (f"{names[i]}: a conv with these parameters maps input sizes "
                       f"{base}..{base + s_ - 1} all to {S[i]}; output_padding={opad} picks "
                       f"{base + opad}")
                (e.warnings if opad else e.notes).append(msg)
            elif base > 0 and opad >= s_:  # allowed below the dilation: past every such size
                sizes = f"{base}..{base + s_ - 1}" if s_ > 1 else f"only {base}"
                e.warnings.append(
                    f"{names[i]}: output_padding={opad} is not below the stride {s_} (allowed "
                    f"as it is below the dilation {spec.dilation[i]}): the output, "
                    f"{base + opad}, is longer than any input that a conv with these "
                    f"parameters maps to {S[i]} ({sizes}); a conv of it gives "
                    f"{S[i] + opad // s_} outputs, and this transposed convolution is the "
                    f"adjoint of that conv keeping only its first {S[i]}")
            if opad:
                e.warnings.append(
                    f"{names[i]}: output_padding={opad} adds {opad} position(s) on the high "
                    f"side only (output {out[i]} instead of {out[i] - opad}); it does not pad "
                    "with zeros but extends the range the kernel writes to")
    if cfg.padding_mode != "zeros":
        e.notes.append(f"padding_mode={cfg.padding_mode!r}: the input is padded with "
                       f"pad(mode={cfg.padding_mode!r}) first, then a convolution without "
                       "padding runs")
        for n_, sz, (lo, hi) in zip(names, S, spec.padding):
            if cfg.padding_mode == "reflect" and max(lo, hi) >= sz:
                e.warnings.append(f"{n_}: reflect padding ({lo}, {hi}) must be smaller than "
                                  f"the input size {sz}; this call will fail")
            if cfg.padding_mode == "circular" and max(lo, hi) > sz:
                e.warnings.append(f"{n_}: circular padding ({lo}, {hi}) must be at most the "
                                  f"input size {sz}; this call will fail")

    if cfg.padding_mode in ("reflect", "circular", "replicate") and lost is None:
        e.notes.append(f"padding_mode={cfg.padding_mode!r}: the receptive field below holds "
                       "for outputs away from the borders; a border output also reads the "
                       "cells its padding copies (from the same edge, the far end for "
                       "circular), outside that interval")

    # Receptive field ---------------------------------------------------
    rf, jump, start = incoming if incoming else ([Fraction(1)] * r, [Fraction(1)] * r,
                                                 [Fraction(0)] * r)
    if lost is not None:
        e.notes.append(f"receptive field: not tracked ({lost})")
    for i in range(r if lost is None else 0):
        kd, s_, lo = spec.effective_kernel[i], spec.stride[i], spec.padding[i][0]
        if spec.transposed:
            e.receptive_field.append(rf[i] + Fraction(kd - 1, s_) * jump[i])
            e.start.append(start[i] + (Fraction(lo) - Fraction(kd - 1, 2)) / s_ * jump[i])
            e.jump.append(jump[i] / s_)
        else:
            e.receptive_field.append(rf[i] + (kd - 1) * jump[i])
            e.start.append(start[i] + (Fraction(kd - 1, 2) - lo) * jump[i])
            e.jump.append(jump[i] * s_)

    if cfg.kind == "pool":
        pool_flops = N * C * math.prod(out) * kk
        e.flops = {"forward": pool_flops, "total": pool_flops}
        e.bytes = {"input": N * C * math.prod(S) * item,
                   "output": N * C * math.prod(out) * item}
        return e

    # Cost ----------------------------------------------------------------
    if cfg.transposed:
        w_shape = (C, K // g) + k
        macs = N * C * math.prod(S) * (K // g) * kk
    else:
        w_shape = (K, C // g) + k
        macs = N * K * math.prod(out) * (C // g) * kk
    e.weight_shape = w_shape
    e.bias_shape = (K,) if cfg.bias else None
    e.params = math.prod(w_shape) + (K if cfg.bias else 0)
    n_out = N * K * math.prod(out)
    bias_flops = n_out if cfg.bias else 0
    e.flops = {"forward": 2 * macs, "forward_bias": bias_flops, "input_grad": 2 * macs,
               "weight_grad": 2 * macs, "bias_grad": bias_flops,
               "total": 6 * macs + 2 * bias_flops}
    cdt = compute_dtype(dt)
    y_shape = (N, K) + out
    # the convolution the op runs: padded first (a padding_mode other than zeros, as the
    # layers do) and with its idle strides made small (as convolab.ops.conv.prepare)
    from .ops.conv import _idle_strides

    S_run = S
    if cfg.padding_mode != "zeros":
        spec = make_spec(k, cfg.stride, 0, cfg.dilation, cfg.groups)
        S_run = tuple(n + lo + hi for n, (lo, hi) in zip(S, e.spec.padding))
    spec = _idle_strides(spec, S_run, out)
    x_shape = (N, C) + S_run
    # The roles and argument shapes exactly as convolab.ops.conv asks select.choose.
    if cfg.transposed:
        roles = {"forward": ("input_grad", x_shape), "input_grad": ("forward", y_shape),
                 "weight_grad": ("weight_grad", y_shape)}
    else:
        roles = {"forward": ("forward", x_shape), "input_grad": ("input_grad", y_shape),
                 "weight_grad": ("weight_grad", x_shape)}
    ws: dict[str, Any] = {"_source": ""}
    if max(math.prod(x_shape), math.prod(y_shape), math.prod(w_shape)) > MAX_CHOOSE_ELEMENTS:
        # select's cost model lays out the tiles of the whole problem: slow at this size
        why = ("not chosen: a tensor has more than MAX_CHOOSE_ELEMENTS="
               f"{_limit(MAX_CHOOSE_ELEMENTS)} elements")
        for public, (role, _) in roles.items():
            e.algorithm[public] = {"name": "unknown", "reason": why, "role": role}
            ws[public] = None
        e.algorithm["backward"] = {"name": "unknown", "reason": why, "role": "backward"}
        e.notes.append("algorithm and workspace: not chosen, as a tensor has more than "
                       f"MAX_CHOOSE_ELEMENTS={_limit(MAX_CHOOSE_ELEMENTS)} elements "
                       "(convolab.select's cost model "
                       "lays out the tiles of the whole problem, which takes long past that)")
        roles = {}
        ws["_source"] = "not estimated"
    from .ops.conv import small_call
    from .options import get_options, one_worker

    serial = contextlib.nullcontext()
    if roles and get_options().workers != 1 and small_call((N, C) + S, math.prod(w_shape), K,
                                                           out, cfg.transposed):
        serial = one_worker()  # as the call itself runs: choices, tiles and workspace
        e.notes.append("a small call (under convolab.ops.conv.SMALL_CALL_FLOPS and "
                       "SMALL_CALL_ELEMENTS): it runs in the calling thread whatever "
                       "options(workers=...) says")
    with serial:
        _choose_all(e, roles, spec, w_shape, cdt, ws, S_run, out, cfg, x_shape)
    e.bytes = {
        "input": N * C * math.prod(S) * item, "output": math.prod(y_shape) * item,
        "weight": (math.prod(w_shape) + (K if cfg.bias else 0)) * item,
        "dtype": dt.name, "workspace": ws, "workspace_source": ws.pop("_source", ""),
    }
    return e


# explain's note for each of GEMM's special lowerings (``gemm.lowering``)
_LOWERING_NOTES = {
    "plain": "as plain im2col: one copy into columns and one matrix product, without "
             "tiles (columns under convolab.algorithms.gemm.LANE_BYTES)",
    "products first": "products first: each tap's products w[:, :, t] @ x at every input "
                      "position, then summed over the taps, instead of copying "
                      "C*prod(k) columns per output (few output channels against the "
                      "input channels)",
    "open products first": "products first on the unpadded input: each tap's products "
                           "w[:, :, t] @ x at every input position, then each tap's "
                           "outputs summed (a small plane, whose padded grid would be "
                           "mostly padding), instead of copying C*prod(k) columns per "
                           "output",
    "channels-last columns": "columns copied from a channels-last copy of the input, "
                             "in runs of a kernel row's channels (output rows this "
                             "short would make the usual copy pay per run), then "
                             "transposed back",
    "row products": "as row products: each channel's padded rows times a band matrix per "
                    "kernel row (a depthwise kernel at least 5 wide on a narrow plane), "
                    "instead of columns",
}


def _space_to_depth_note(public: str, spec, shp, w_shape, cdt) -> str:
    """What polyphase's strided forward runs: the stride-1 layer and its algorithm."""
    from .algorithms import polyphase

    item = np.dtype(cdt).itemsize
    mod, sub, q = polyphase._s2d_problem(spec, select.problem("forward", spec, shp, w_shape),
                                         item)
    taps = "x".join(str(k) for k in sub.kernel_size)
    return (f"polyphase runs {public} as one stride-1 convolution (space to depth): the "
            f"input copied once with each (channel, stride phase) pair as a channel, "
            f"{q['C']} in all, and a {taps} kernel (the taps past the original kernel "
            f"zero), run on {mod.__name__.rsplit('.', 1)[-1]}")


def _choose_all(e, roles, spec, w_shape, cdt, ws, S_run, out, cfg, x_shape) -> None:
    """Each role's algorithm and workspace into ``e.algorithm`` and ``ws`` (its
    ``"_source"``: where the workspace numbers come from)."""
    from .algorithms import gemm

    ch = None
    runs: dict = {}  # GEMM's special lowering -> the roles it runs
    for public, (role, shp) in roles.items():
        try:
            ch = select.choose(role, spec, shp, w_shape, cdt)
        except (ImportError, ValueError) as exc:  # e.g. an optional algorithm missing
            ch = select.Choice("unknown", f"convolab.select.choose failed: {exc}")
        e.algorithm[public] = {"name": ch.algorithm, "reason": ch.reason, "role": role}
        if ch.algorithm == "gemm":
            how = gemm.lowering(role, spec, select.problem(role, spec, shp, w_shape),
                                np.dtype(cdt).itemsize)
            if how:
                runs.setdefault(how, []).append(public)
        if ch.algorithm == "polyphase" and role == "forward":
            e.notes.append(_space_to_depth_note(public, spec, shp, w_shape, cdt))
        # The conv that runs reads ``shp`` and slides over ``out`` (conv) or ``S`` (transposed).
        ws[public], ws["_source"] = _workspace(role, spec, shp, w_shape, cdt, ch.algorithm,
                                               S_run if cfg.transposed else out)
    for how, what in _LOWERING_NOTES.items():
        if how in runs:
            e.notes.append(f"GEMM runs {', '.join(runs[how])} {what}")
    # a backward pass that needs both gradients may fuse them
    if roles:
        try:
            ch = select.choose_backward(spec, x_shape, w_shape, cdt)
        except (ImportError, ValueError) as exc:
            ch = select.Choice("unknown", f"convolab.select.choose_backward failed: {exc}")
        e.algorithm["backward"] = {"name": ch.algorithm, "reason": ch.reason,
                                   "role": "forward + weight_grad of gy" if cfg.transposed
                                   else "input_grad + weight_grad"}
    if roles and ch.algorithm == "fused":
        if cfg.transposed:  # GEMM's weight-gradient tiles, which now also do the forward
            ws["backward"] = ws["weight_grad"]
        else:
            from .algorithms import fused

            ws["backward"] = fused.workspace(
                spec, select.problem("weight_grad", spec, x_shape, w_shape), cdt)


# ---------------------------------------------------------------------------
# Stacks


@dataclass
class StackExplanation:
    """Per-layer explanations of a stack, with the receptive field accumulated."""

    input_shape: tuple[int, ...]
    layers: list[LayerExplanation]
    notes: list[str] = field(default_factory=list)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def params(self) -> int:
        return sum(e.params for e in self.layers)

    @property
    def flops(self) -> dict[str, int]:
        keys = ("forward", "forward_bias", "input_grad", "weight_grad", "bias_grad", "total")
        return {k: sum(e.flops.get(k, 0) for e in self.layers) for k in keys}

    @property
    def receptive_field(self) -> list[Fraction]:
        for e in reversed(self.layers):
            if e.receptive_field:
                return e.receptive_field
        return []

    def to_dict(self) -> dict[str, Any]:
        rf = self.receptive_field
        last = next((e for e in reversed(self.layers) if e.receptive_field), None)
        return {
            "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "params": self.params, "flops": {**self.flops, "convention": FLOP_CONVENTION},
            "receptive_field": [_frac_json(x) for x in rf],
            "receptive_field_layer": None if last is None else self.layers.index(last),
            "jump": [_frac_json(x) for x in (last.jump if last else [])],
            "start": [_frac_json(x) for x in (last.start if last else [])],
            "padding": [[list(p) for p in e.spec.padding] if e.spec else None
                        for e in self.layers],
            "algorithm": [e.algorithm for e in self.layers],
            "warnings": [f"layer {i}: {w}" for i, e in enumerate(self.layers)
                         for w in e.warnings],
            "notes": list(self.notes) + [f"layer {i}: {n}" for i, e in enumerate(self.layers)
                                         for n in e.notes],
            "layers": [e.to_dict() for e in self.layers],
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        lines = [f"stack of {len(self.layers)} layers: input {self.input_shape} -> output "
                 f"{self.output_shape}"]
        lines += [f"  note: {n}" for n in self.notes]
        hdr = (f"  {'#':>2}  {'layer':<18} {'output shape':<22} {'params':>10} "
               f"{'fwd FLOPs':>14}  RF / jump / start (cumulative)")
        lines.append(hdr)
        for i, e in enumerate(self.layers):
            lines.append(f"  {i:>2}  {e.op:<18} {str(e.output_shape):<22} {e.params:>10,} "
                         f"{e.flops.get('forward', 0):>14,}  {_rf_text(e)}")
        f = self.flops
        lines.append(f"  total params {self.params:,}; FLOPs forward {f['forward']:,} "
                     f"(+ bias {f['forward_bias']:,}), forward+backward {f['total']:,}")
        for i, e in enumerate(self.layers):
            lines.append("")
            lines += [("  " if j else f"[{i}] ") + ln for j, ln in enumerate(_layer_lines(e))]
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Public entry points


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        v = _parse_ints(value, "input_shape")
        return v if isinstance(v, tuple) else (v,)
    if isinstance(value, np.ndarray) and (value.ndim != 1 or value.dtype.kind not in "iu"):
        # the data itself, not its shape: its repr in the message ran to pages
        raise TypeError(f"input_shape= an array of shape {value.shape} ({value.dtype}) must "
                        "be a tuple of ints or 'NxCxHxW': pass the array's .shape, e.g. "
                        "explain('conv2d', x.shape, ...)")
    try:
        vals = tuple(value)
    except TypeError:
        raise TypeError(f"input_shape={short_repr(value)} must be a tuple of ints or "
                        "'NxCxHxW'") from None
    for v in vals:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"input_shape={short_repr(value)} must be a tuple of ints or "
                            f"'NxCxHxW' (it holds {short_repr(v)}, a {type(v).__name__})")
    return tuple(int(v) for v in vals)


def explain(op: Any, input_shape: Any, *, out_channels: int | None = None,
            kernel_size: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
            groups: int = 1, output_padding: Any = 0, padding_mode: str = "zeros",
            bias: bool = True, dtype: Any = "float32", layers: Sequence[Any] | None = None,
            ) -> LayerExplanation | StackExplanation:
    """Explain one convolution, or a stack.

    op: ``'conv1d'..'conv3d'``, ``'conv_transpose1d'..'3d'`` (or ``'conv'`` /
    ``'conv_transpose'``, rank from ``input_shape``) with the parameters as keywords;
    or a model: a ``convolab.nn.Sequential``, a conv layer, or a list of layers /
    layer-spec strings (``"k=3,s=2,p=1"``) / dicts.  ``layers=`` with a string ``op``
    gives a stack whose specs default to that op.
    input_shape: ``(N, C, *spatial)`` (ints) or ``'1x3x32x32'``.
    out_channels: an int (None: as many as the input has).

    Returns a ``LayerExplanation`` (one layer) or a ``StackExplanation``, classes of
    the module ``convolab.explain`` (``from convolab.explain import LayerExplanation``:
    ``convolab.explain`` itself is this function).

    Sizes: the numbers reported are integer arithmetic, for any sizes up to
    ``MAX_ELEMENTS`` (2**40) elements per tensor (input, output, weight); a larger
    tensor is a ValueError.  Which cells are never read is checked position by position
    up to ``MAX_POSITIONS`` (2**20) per dimension (past it, only the cells after the
    last window, by arithmetic, and a note), the algorithm and workspace are asked of
    ``convolab.select`` up to ``MAX_CHOOSE_ELEMENTS`` (2**32) elements per tensor
    ("unknown" past it, with a note), and a layer without a rule is run on zeros of up
    to ``MAX_PROBE_ELEMENTS`` (2**26) elements.  These are constants of the module
    ``convolab.explain`` (``from convolab.explain import MAX_ELEMENTS``).
    """
    shape = _shape(input_shape)
    if isinstance(op, str):
        if op not in OPS:
            raise ValueError(f"op={op!r} must be one of {sorted(OPS)}")
        rank, transposed = OPS[op]
        if layers is not None:
            cfgs = [_layer_from(lay, transposed) for lay in layers]
            return _explain_stack(cfgs, shape, dtype)
        cfg = LayerConfig("conv", transposed, kernel_size, stride, padding, dilation, groups,
                          output_padding, out_channels, padding_mode, bias)
        return _explain_layer(cfg, shape, dtype, rank, None)
    if isinstance(op, np.ndarray) or (
            isinstance(op, (list, tuple)) and op
            and all(isinstance(v, numbers.Integral) for v in op)):
        what = f"an array of shape {op.shape}" if isinstance(op, np.ndarray) else repr(op)
        raise TypeError(
            f"op={what} looks like a shape or an array, not an operation or a model: call "
            "explain('conv2d', input_shape, out_channels=..., kernel_size=...) or pass "
            "a model / list of layers")
    cfgs = []
    for i, m in enumerate(_iter_layers(op)):
        if m is None or isinstance(m, (numbers.Number, np.ndarray, bytes)):
            what = f"an array of shape {m.shape}" if isinstance(m, np.ndarray) else repr(m)
            raise TypeError(f"layer {i} is {what} ({type(m).__name__}): a layer must be a "
                            "conv or pooling layer, a module, a spec string like "
                            "'k=3,s=2,p=1', a dict or a LayerConfig")
        cfgs.append(_layer_from(m))
    if not _is_custom(op):
        return _explain_stack(cfgs, shape, dtype)
    # a model that is not a Sequential: its sub-modules in the order they were registered
    # are a guess at what its forward does; running a copy of it checks the guess
    name = type(op).__name__
    guess = (f"model={name} is not a Sequential, so explain reads its sub-modules in the "
             "order they were registered")
    try:
        res = _explain_stack(cfgs, shape, dtype)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{guess}, and then {exc}; explain it part by part, or as a "
                        "Sequential") from None
    try:
        real = _probe(LayerConfig("other", name=name, module=op), shape, dtype)
    except ValueError as exc:  # a ModuleList, or a forward that needs more arguments
        res.notes.append(f"{guess}; running a copy of it to check that failed ({exc}), "
                         "so the order is not checked")
        return res
    if real != res.output_shape:
        raise ValueError(f"{guess}: that gives the output shape {res.output_shape}, but "
                         f"running a copy of the model on zeros gives {real}; its forward "
                         "does more than run them in order (a residual, a reshape, ...): "
                         "explain it part by part, or as a Sequential")
    res.notes.append(f"{guess}; running a copy of the model on zeros gives the same output "
                     "shape, but a forward that reuses or skips a layer would not show here")
    return res


def _is_custom(model: Any) -> bool:
    """A callable module with sub-modules that is neither a Sequential nor a layer of its
    own (a container that cannot run is read in order)."""
    return (callable(model) and bool(getattr(model, "_modules", None))
            and not _is_sequential(model)
            and not isinstance(model, (list, tuple)) and not hasattr(model, "kernel_size"))


def _explain_stack(cfgs: list[LayerConfig], shape: tuple[int, ...], dtype,
                   ) -> StackExplanation:
    out: list[LayerExplanation] = []
    incoming = None
    lost = None  # once a layer ends the tracking, no later layer restarts it
    cur = shape
    for i, cfg in enumerate(cfgs):
        try:
            e = _explain_layer(cfg, cur, dtype, None, incoming, lost)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"layer {i} ({cfg.name or cfg.kind}): {exc}") from None
        out.append(e)
        cur = e.output_shape
        incoming = (e.receptive_field, e.jump, e.start) if e.receptive_field else None
        if not e.tracks_rf and lost is None:
            lost = f"it ends at layer {i} ({e.name or e.op})"
    return StackExplanation(shape, out)


# ---------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convolab explain",
        description="Output shape (with the formula), padding per side, warnings, params, "
                    "FLOPs, bytes, algorithm and receptive field of a convolution or a "
                    "stack of them.")
    p.add_argument("op", choices=sorted(OPS), help="operation, as in the functional API")
    p.add_argument("--input", required=True, help="input shape NxCx... e.g. 1x3x32x32")
    p.add_argument("--out-channels", type=int, default=None,
                   help="output channels (default: the input's)")
    p.add_argument("--kernel-size", default=None, help="e.g. 3 or 3x5")
    p.add_argument("--stride", default="1")
    p.add_argument("--padding", default="0",
                   help="int, 1x2, same|valid|causal, or per side lo:hi per dim (0:1x1:1)")
    p.add_argument("--dilation", default="1")
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--output-padding", default="0")
    p.add_argument("--padding-mode", default="zeros", choices=PADDING_MODES)
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--layer", action="append", default=None, metavar="SPEC",
                   help="a layer of a stack (repeat): " + LAYER_SYNTAX)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.layer:
            single = {"--kernel-size": args.kernel_size is not None,
                      "--out-channels": args.out_channels is not None,
                      "--stride": args.stride != "1", "--padding": args.padding != "0",
                      "--dilation": args.dilation != "1", "--groups": args.groups != 1,
                      "--output-padding": args.output_padding != "0",
                      "--padding-mode": args.padding_mode != "zeros",
                      "--no-bias": args.no_bias}
            given = [flag for flag, on in single.items() if on]
            if given:
                raise ValueError(f"{', '.join(given)} describe one layer; with --layer (a "
                                 "stack) put them in each layer's spec (k=3,s=2,c=16,...)")
            res = explain(args.op, args.input, layers=args.layer, dtype=args.dtype)
        else:
            if args.kernel_size is None:
                raise ValueError("--kernel-size is required (or describe a stack with --layer)")
            res = explain(
                args.op, args.input, out_channels=args.out_channels,
                kernel_size=_parse_ints(args.kernel_size, "kernel_size"),
                stride=_parse_ints(args.stride, "stride"),
                padding=_parse_padding(args.padding),
                dilation=_parse_ints(args.dilation, "dilation"), groups=args.groups,
                output_padding=_parse_ints(args.output_padding, "output_padding"),
                padding_mode=args.padding_mode, bias=not args.no_bias, dtype=args.dtype)
    except (ValueError, TypeError) as exc:
        print(f"convolab explain: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # explain refuses sizes past its limits; a machine may have less
        print(f"convolab explain: out of memory ({exc or 'MemoryError'})", file=sys.stderr)
        return 2
    try:
        print(res.to_json(indent=2) if args.json else str(res), flush=True)
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
