"""Convolution and transposed convolution, forward and vector-Jacobian product.

Gradients are written as other convolutions (as JAX does), so every fast path of
the forward speeds up the backward too:

* conv:            ``gx = conv_transpose(gy, w)``, ``gw = corr(x, gy)``, ``gb = sum(gy)``
* conv_transpose:  ``gx = conv(gy, w)`` (its first ``S`` positions), ``gw = corr(gy, x)``,
  ``gb = sum(gy)``

When a conv's backward needs both ``gx`` and ``gw``, :func:`convolab.select.choose_backward`
may compute them together from one column copy of ``gy``
(:mod:`convolab.algorithms.fused`).

For complex dtypes the gradients follow torch's convention (conjugate Wirtinger):
``gx = conv_transpose(gy, conj(w))`` and ``gw = corr(conj(x), gy)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from .. import select
from .._limits import check_size
from ..algorithms import direct, fused
from ..algorithms._finite import all_finite
from ..algorithms._threads import _blas_single_thread
from ..dtypes import as_array, check_dtypes, compute_dtype
from ..options import held, one_worker
from ..spec import ConvSpec, IntOrTuple, PaddingArg, make_spec


@dataclass
class Prepared:
    x: np.ndarray  # batched, in compute dtype
    w: np.ndarray
    b: np.ndarray | None
    spec: ConvSpec
    unbatched: bool
    dtype: np.dtype  # the caller's dtype
    out_spatial: tuple[int, ...]


def _rank_of(weight: np.ndarray, rank: int | None, what: str, transposed: bool) -> int:
    layout = (
        ("in_channels, out_channels/groups", "in, out/groups")
        if transposed
        else ("out_channels, in_channels/groups", "out, in/groups")
    )
    if weight.ndim < 3:
        raise ValueError(
            f"weight must have shape ({layout[0]}, *kernel_size) with "
            f"at least one spatial dimension; got weight.shape={weight.shape}"
        )
    r = weight.ndim - 2
    if rank is not None and r != rank:
        raise ValueError(
            f"{what} expects a {rank + 2}-D weight ({layout[1]}, {rank} kernel dims); "
            f"got weight.shape={weight.shape}"
        )
    return r


def _idle_strides(spec: ConvSpec, spatial, out_spatial) -> ConvSpec:
    """The same convolution with each stride that moves nothing made small.

    A conv dimension with one output, or a transposed one with one input, never steps
    by its stride, so any stride that still gives that size computes the same thing.
    The fast paths build arrays and loops from the stride (views with ``stride`` as a
    C long, one phase per residue of the stride), which a huge stride would overflow or
    run for ages; there, ``min(stride, padded size)`` (conv) and ``output_padding + 1``
    (transposed) keep the shapes and the result."""
    new = list(spec.stride)
    if spec.transposed:
        for i, (n, s) in enumerate(zip(spatial, spec.stride)):
            if n == 1:
                new[i] = min(s, spec.output_padding[i] + 1)
    else:
        for i, (o, p) in enumerate(zip(out_spatial, spec.padded_shape(spatial))):
            if o == 1:
                new[i] = min(new[i], max(p, 1))
    if tuple(new) == spec.stride:
        return spec
    return dataclasses.replace(spec, stride=tuple(new))


def _operand(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in the compute dtype, C-contiguous and aligned: a Fortran-ordered, strided,
    broadcast or unaligned operand reached BLAS as it was and rounded differently (1 ulp)
    from a contiguous copy of the same values, where torch makes its operands contiguous
    first.  A no-op for the usual C-contiguous array; the algorithms copied other layouts
    anyway."""
    return np.require(a, dtype, ["C", "A"])


# A call validates the same way as an earlier one with the same shapes, dtype and
# settings: a training loop or a service repeats a few layers, and the checks and the
# spec cost ~30 us per call (a 3x3 layer's whole forward on one 16x16 plane took ~150).
# Where the arrays are plain C-contiguous, aligned ndarrays in their compute dtype and
# the settings plain ints, strings and tuples of ints, the outcome is kept per such
# call (:func:`_checked_key`); anything else (lists, NumPy integers, bools, float16,
# other layouts) takes the full checks every time, as do calls that fail them.
_CHECKED: dict = {}
_CHECKED_MAX = 1024
_FAST_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.complex64,
                                               np.complex128))


def _plain_array(a) -> bool:
    return (type(a) is np.ndarray and a.dtype in _FAST_DTYPES and a.flags.c_contiguous
            and a.flags.aligned)


def _plain_setting(v) -> bool:
    t = type(v)
    if t is int or t is str or v is None:
        return True
    return t is tuple and all(type(e) is int or (type(e) is tuple and all(
        type(f) is int for f in e)) for e in v)


def _checked_key(x, w, b, settings: tuple, call: tuple) -> tuple | None:
    """The cache key of a call (``settings``: the user's stride, padding, ...; ``call``:
    the op's own), or None where the full checks must run."""
    if not (_plain_array(x) and _plain_array(w) and (b is None or _plain_array(b))
            and all(_plain_setting(v) for v in settings)):
        return None
    return (x.shape, w.shape, None if b is None else b.shape, x.dtype, w.dtype,
            None if b is None else b.dtype) + settings + call


def prepare(
    input,
    weight,
    bias,
    stride,
    padding,
    dilation,
    groups,
    output_padding=None,
    *,
    transposed: bool,
    rank: int | None = None,
    what: str = "conv",
    shape_only: str | None = None,
) -> Prepared:
    """Validate everything once; return batched arrays and the spec.

    The arrays come back C-contiguous (see :func:`_operand`), except the one named by
    ``shape_only`` (``"input"`` or ``"weight"``): :mod:`convolab.grad`'s zero-stride
    stand-in for the array it is given only the shape of, which is never read."""
    key = None if shape_only is not None else _checked_key(
        input, weight, bias, (stride, padding, dilation, groups, output_padding),
        (transposed, rank, what))
    hit = None if key is None else _CHECKED.get(key)
    if hit is not None:
        spec, unbatched, dtype, out_spatial = hit
        return Prepared(input[None] if unbatched else input, weight, bias, spec, unbatched,
                        dtype, out_spatial)
    p = _prepare(input, weight, bias, stride, padding, dilation, groups, output_padding,
                 transposed=transposed, rank=rank, what=what, shape_only=shape_only)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = (p.spec, p.unbatched, p.dtype, p.out_spatial)
    return p


def _prepare(input, weight, bias, stride, padding, dilation, groups, output_padding, *,
             transposed: bool, rank: int | None, what: str, shape_only: str | None
             ) -> Prepared:
    """:func:`prepare`'s checks, every one of them."""
    x = as_array("input", input)
    w = as_array("weight", weight)
    b = None if bias is None else as_array("bias", bias)
    dtype = check_dtypes(input=x, weight=w, bias=b)
    r = _rank_of(w, rank, what, transposed)
    if x.ndim not in (r + 1, r + 2):
        raise ValueError(
            f"{what}: expected a {r + 1}-D (unbatched) or {r + 2}-D (batched) input for a "
            f"{r}-D kernel, got input.shape={x.shape}"
        )
    spec = make_spec(
        tuple(w.shape[2:]),
        stride,
        padding,
        dilation,
        groups,
        output_padding,
        transposed=transposed,
    )
    if 0 in w.shape[:2]:
        # torch rejects a weight without output channels; without input channels every
        # algorithm would reshape empty channel blocks (and torch returns a wrong shape)
        raise ValueError(
            f"{what}: weight.shape={w.shape} has no channels; weight.shape[0] and "
            "weight.shape[1] must be positive"
        )
    unbatched = x.ndim == r + 1
    if unbatched:
        x = x[None]
    g = spec.groups
    C = x.shape[1]
    if transposed:
        if w.shape[0] != C:
            raise ValueError(
                f"{what}: weight.shape[0]={w.shape[0]} (in_channels) must equal the input's "
                f"channels={C} (input.shape={x.shape[1:] if unbatched else x.shape})"
            )
        if C % g:
            raise ValueError(f"groups={g} must divide in_channels={C}")
        out_channels = w.shape[1] * g
    else:
        if w.shape[1] * g != C:
            raise ValueError(
                f"{what}: input has {C} channels but weight.shape[1]*groups = "
                f"{w.shape[1]}*{g} = {w.shape[1] * g} (weight.shape={w.shape}, groups={g}); "
                "in_channels must equal weight.shape[1]*groups"
            )
        if w.shape[0] % g:
            raise ValueError(f"groups={g} must divide out_channels={w.shape[0]} (weight.shape[0])")
        out_channels = w.shape[0]
    if b is not None and b.shape != (out_channels,):
        raise ValueError(f"bias.shape={b.shape} must be (out_channels,) = ({out_channels},)")
    spatial = x.shape[2:]
    if 0 in spatial and x.shape[0]:
        raise ValueError(
            f"{what}: input.shape={x.shape[1:] if unbatched else x.shape} has an empty "
            "spatial dimension; as in torch, only the batch may be empty"
        )
    out_spatial = spec.out_shape(spatial)
    # torch gives an empty batch's transposed convolution an empty output dimension
    empty_ok = transposed and x.shape[0] == 0 and all(o >= 0 for o in out_spatial)
    if any(o <= 0 for o in out_spatial) and not empty_ok:
        if transposed:
            raise ValueError(
                f"{what}: input spatial size {spatial} gives output size {out_spatial}; "
                f"(in-1)*stride - pad_lo - pad_hi + dilation*(k-1) + output_padding + 1 must "
                f"be positive (stride={spec.stride}, padding={spec.padding}, "
                f"dilation={spec.dilation}, kernel_size={spec.kernel_size})"
            )
        raise ValueError(
            f"{what}: kernel_size={spec.kernel_size} with dilation={spec.dilation} "
            f"(effective {spec.effective_kernel}) is larger than the padded input "
            f"{spec.padded_shape(spatial)} (input {spatial}, padding {spec.padding}); "
            "the effective kernel size must not exceed the padded input size"
        )
    cdt = compute_dtype(dtype)
    check_size(what, "an output", (x.shape[0], out_channels) + out_spatial, cdt,
               lambda: f"input.shape={x.shape} with stride={spec.stride}, padding="
               f"{spec.padding}, dilation={spec.dilation}"
               + (f", output_padding={spec.output_padding}" if transposed else ""))
    check_size(what, "a padded input", x.shape[:2] + spec.padded_shape(spatial), cdt,
               lambda: f"padding={spec.padding}")
    spec = _idle_strides(spec, spatial, out_spatial)
    return Prepared(
        x.astype(cdt, copy=False) if shape_only == "input" else _operand(x, cdt),
        w.astype(cdt, copy=False) if shape_only == "weight" else _operand(w, cdt),
        None if b is None else _operand(b, cdt),
        spec,
        unbatched,
        dtype,
        out_spatial,
    )


def _add_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def _bias_grad(gy: np.ndarray) -> np.ndarray:
    """``gy`` summed over the batch and the positions, per channel: one matrix-vector
    product with ones (on one BLAS thread, see :func:`convolab.algorithms._threads.matmul`)
    and a sum over the batch.  ``gy.sum(axis=(0, 2, 3))`` reduces with strided inner
    loops: 0.55 ms against 0.23 for a 16 x 256 x 28 x 28 float32 ``gy``."""
    N, K = gy.shape[:2]
    P = math.prod(gy.shape[2:])
    with _blas_single_thread():
        per = gy.reshape(N * K, P) @ np.ones(P, dtype=gy.dtype)
    return per.reshape(N, K).sum(axis=0)


def _finish(y: np.ndarray, p: Prepared) -> np.ndarray:
    if p.unbatched:
        y = y[0]
    return y.astype(p.dtype, copy=False)


def _input_grad(gy: np.ndarray, w: np.ndarray, spec: ConvSpec, in_spatial,
                bias: np.ndarray | None = None) -> np.ndarray:
    """The input-gradient role (also the transposed conv's forward) on the chosen
    algorithm, plus ``bias`` per channel if given: inside the algorithm's tiles where it
    takes one (``INPUT_GRAD_ADDS_BIAS``: polyphase), else as a pass of its own.

    A weight holding NaN or inf runs on ``direct``, which adds exactly the products of
    ``w`` and ``gy`` that the convolution pairs, as PyTorch does.  The fast paths also
    multiply ``w`` by zeros (the border of a padded or spread ``gy``), and ``inf * 0``
    there made NaN where PyTorch's gradient is finite or infinite."""
    if w.size and not all_finite(w):
        return _add_bias(direct.input_grad(gy, w, spec, in_spatial), bias)
    algo = select.choose("input_grad", spec, gy.shape, w.shape, gy.dtype).module
    if bias is not None and getattr(algo, "INPUT_GRAD_ADDS_BIAS", False):
        return algo.input_grad(gy, w, spec, in_spatial, bias=bias)
    return _add_bias(algo.input_grad(gy, w, spec, in_spatial), bias)


def _out_channels(p: Prepared) -> int:
    return p.w.shape[1] * p.spec.groups if p.spec.transposed else p.w.shape[0]


def _one_call(fn):
    """Runs ``fn`` as one call: the options in force at its start held for all of it
    (:func:`convolab.options.held`) and BLAS on one thread throughout
    (:func:`convolab.algorithms._threads._blas_single_thread`), so that its result does not
    depend on what other threads do meanwhile.  NaN and inf propagate silently, as in
    torch and whichever algorithm runs: NumPy's ufuncs (the depthwise and direct tap
    loops) would warn of ``inf * 0``, or raise under ``np.errstate``, where BLAS does not."""

    @functools.wraps(fn)
    def run(p: Prepared, *args, **kwargs):
        with held() as opts, _blas_single_thread(), np.errstate(invalid="ignore", over="ignore"):
            if opts.workers != 1 and _too_small_to_share(p):
                with one_worker():
                    return fn(p, *args, **kwargs)
            return fn(p, *args, **kwargs)

    return run


# A call below both sizes runs in the calling thread whatever ``workers`` says: handing
# tiles to the worker threads and waiting for them costs ~90 us on the 2-core machine
# (an empty two-item parallel_map), more than sharing such a call saves.  Measured
# (float32, auto, medians, workers=1 / workers=2): a 3.6 MFLOP 3x3 layer 0.18 / 0.35 ms
# (fwd+bwd 0.44 / 0.81), a 5.2 MFLOP 1-D k5 layer 0.21 / 0.60, 14.5 MFLOP 3x3 on 7x7
# planes 0.58 / 0.91, 19.7 MFLOP 7x7 0.55 / 0.81; above them two workers won (a 16.8
# MFLOP 1x1 stride-2 layer with 262144 outputs 0.94 / 0.64, memory-bound depthwise and
# 1x1 layers on large planes 1.3-1.6x).
SMALL_CALL_FLOPS = 25e6
SMALL_CALL_ELEMENTS = 2**18


def _too_small_to_share(p: Prepared) -> bool:
    return small_call(p.x.shape, p.w.size, _out_channels(p), p.out_spatial, p.spec.transposed)


def small_call(x_shape, w_size: int, out_channels: int, out_spatial, transposed: bool) -> bool:
    """Whether a call (batched input shape, weight size, output channels and spatial
    size) has direct FLOPs under :data:`SMALL_CALL_FLOPS` and an input and output of
    under :data:`SMALL_CALL_ELEMENTS` elements each: then it runs in the calling thread."""
    N = x_shape[0]
    outputs = N * out_channels * math.prod(out_spatial)
    if max(outputs, math.prod(x_shape)) >= SMALL_CALL_ELEMENTS:
        return False
    positions = math.prod(x_shape[2:] if transposed else out_spatial)
    return 2 * N * w_size * positions < SMALL_CALL_FLOPS


@_one_call
def _run_forward(p: Prepared) -> np.ndarray:
    x, w, spec = p.x, p.w, p.spec
    if 0 in p.out_spatial or x.shape[0] == 0:
        # an empty output: an empty batch (whose planes torch lets be empty too, for a
        # transposed layer) has nothing to compute, and the cost model divides by sizes
        return np.zeros((x.shape[0], _out_channels(p)) + p.out_spatial, dtype=x.dtype)
    if spec.transposed:
        return _input_grad(x, w, spec, p.out_spatial, p.b)
    algo = select.choose("forward", spec, x.shape, w.shape, x.dtype).module
    if p.b is not None and getattr(algo, "FORWARD_ADDS_BIAS", False):
        # added in the tiles, while each is in the cache: a pass over the output less
        return algo.forward(x, w, spec, bias=p.b)
    return _add_bias(algo.forward(x, w, spec), p.b)


@_one_call
def grads(
    p: Prepared, gy: np.ndarray, wanted: tuple[str, ...] = ("input", "weight", "bias")
) -> dict[str, np.ndarray | None]:
    """Gradients of a prepared call for the output gradient ``gy`` (caller's layout);
    only the ``wanted`` ones are computed."""
    x, w, spec = p.x, p.w, p.spec
    if x.dtype == np.float16:  # a pullback keeps float16 arrays: compute in float32
        x, w = x.astype(np.float32), w.astype(np.float32)
    if np.iscomplexobj(x):
        x, w = np.conj(x), np.conj(w)
    if p.unbatched:
        gy = gy[None]
    gy = _operand(gy, x.dtype)  # as the operands: the same bits whatever its layout
    spatial = x.shape[2:]
    gx = gw = gb = None
    both = "input" in wanted and "weight" in wanted
    if 0 in p.out_spatial or x.shape[0] == 0:  # nothing flowed through: zero gradients
        gx, gw = np.zeros_like(x), np.zeros_like(w)
        both = False
        wanted = tuple(n for n in wanted if n == "bias")
    if spec.transposed:
        # y = conv^T(x): gx = conv(gy), gw = corr(gy, x)
        if both and select.choose_backward(spec, x.shape, w.shape, x.dtype).algorithm == "fused":
            gx, gw = fused.forward_and_weight_grad(gy, w, x, spec, spatial)
        else:
            if "input" in wanted:
                fwd = select.choose("forward", spec, gy.shape, w.shape, x.dtype).module
                gx = fwd.forward(gy, w, spec, out_spatial=spatial)
            if "weight" in wanted:
                wg = select.choose("weight_grad", spec, gy.shape, w.shape, x.dtype).module
                gw = wg.weight_grad(gy, x, spec)
    elif both and select.choose_backward(spec, x.shape, w.shape, x.dtype).algorithm == "fused":
        gx, gw = fused.backward(x, gy, w, spec)  # non-finite values: see its fallback
    else:
        if "input" in wanted:
            gx = _input_grad(gy, w, spec, spatial)
        if "weight" in wanted:
            wg = select.choose("weight_grad", spec, x.shape, w.shape, x.dtype).module
            gw = wg.weight_grad(x, gy, spec)
    if p.b is not None and "bias" in wanted:
        gb = _bias_grad(gy)
    if p.unbatched and gx is not None:
        gx = gx[0]
    cast = lambda a: None if a is None else a.astype(p.dtype, copy=False)  # noqa: E731
    return {"input": cast(gx), "weight": cast(gw), "bias": cast(gb)}


# ---------------------------------------------------------------------------
# Public functional API (mirrors torch.nn.functional)


def _prepared(transposed: bool, rank, what: str, a: dict) -> Prepared:
    """``prepare`` from a call's bound arguments (``a``: name -> value, defaults applied)."""
    return prepare(
        a["input"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"],
        a["groups"], a.get("output_padding"), transposed=transposed, rank=rank, what=what,
    )  # fmt: skip


def _conv(rank, what):
    def fn(
        input: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
    ) -> np.ndarray:
        p = _prepared(False, rank, what, locals())
        return _finish(_run_forward(p), p)

    return fn


def _conv_transpose(rank, what):
    def fn(
        input: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        output_padding: IntOrTuple = 0,
        groups: int = 1,
        dilation: IntOrTuple = 1,
    ) -> np.ndarray:
        p = _prepared(True, rank, what, locals())
        return _finish(_run_forward(p), p)

    return fn


def _vjp_of(fn, transposed: bool, rank, what):
    """The VJP of a public function: its own signature binds the arguments, so the
    argument order is written once."""
    sig = inspect.signature(fn)

    def vjp_impl(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        p = _prepared(transposed, rank, what, bound.arguments)
        out = _finish(_run_forward(p), p)
        if p.x.dtype != p.dtype:  # float16 computed in float32: keep the half-size arrays
            half = dict(x=p.x.astype(p.dtype), w=p.w.astype(p.dtype),
                        b=None if p.b is None else p.b.astype(p.dtype))
            p = dataclasses.replace(p, **half)
        return out, lambda gy: grads(p, gy)

    return vjp_impl


_DOC = """{what}(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)

{rank_text} convolution, as ``torch.nn.functional.{what}``.

input: ``(N, C_in, *S)`` or unbatched ``(C_in, *S)``; weight: ``(C_out, C_in/groups, *k)``;
bias: ``(C_out,)`` or None.  padding: int, tuple, ``'valid'``, ``'same'``, and as
convolab extensions ``'causal'`` and per-side pairs ``[(lo, hi), ...]``.
Returns ``(N, C_out, *O)`` with ``O = floor((S + lo + hi - dilation*(k-1) - 1)/stride) + 1``.
"""

_TDOC = """{what}(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
    dilation=1)

{rank_text} transposed convolution, as ``torch.nn.functional.{what}``: the gradient
of ``conv`` with respect to its input.

input: ``(N, C_in, *S)`` or ``(C_in, *S)``; weight: ``(C_in, C_out/groups, *k)``;
padding: int, tuple, or per-side pairs (a convolab extension: ``(lo, hi)`` is removed
from the low/high end of the full output).
Returns ``(N, C_out, *O)`` with
``O = (S-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1``.
"""

conv = _conv(None, "conv")
conv1d = _conv(1, "conv1d")
conv2d = _conv(2, "conv2d")
conv3d = _conv(3, "conv3d")
conv_transpose = _conv_transpose(None, "conv_transpose")
conv_transpose1d = _conv_transpose(1, "conv_transpose1d")
conv_transpose2d = _conv_transpose(2, "conv_transpose2d")
conv_transpose3d = _conv_transpose(3, "conv_transpose3d")

VJPS: dict[Callable, Callable] = {}
for _fn, _r, _t in [
    (conv, None, False),
    (conv1d, 1, False),
    (conv2d, 2, False),
    (conv3d, 3, False),
    (conv_transpose, None, True),
    (conv_transpose1d, 1, True),
    (conv_transpose2d, 2, True),
    (conv_transpose3d, 3, True),
]:
    _name = ("conv_transpose" if _t else "conv") + (f"{_r}d" if _r else "")
    _fn.__name__ = _fn.__qualname__ = _name
    _fn.__module__ = "convolab"
    _rank_text = f"{_r}-D" if _r else "N-D (rank = weight.ndim - 2)"
    _fn.__doc__ = (_TDOC if _t else _DOC).format(what=_name, rank_text=_rank_text)
    VJPS[_fn] = _vjp_of(_fn, _t, _r, _name)
