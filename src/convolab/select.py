"""Which algorithm runs, and why.

Each algorithm module in :mod:`convolab.algorithms` provides up to three plain
functions with one signature per role:

* ``forward(x, w, spec, out_spatial=None) -> y``
* ``input_grad(gy, w, spec, in_spatial) -> gx``   (also the transposed conv forward)
* ``weight_grad(x, gy, spec) -> gw``

A module whose ``FORWARD_ADDS_BIAS`` is true (gemm, winograd) also takes
``forward(..., bias=b)`` and adds the bias to each tile's outputs as they are written
(one pass over the output less); one whose ``INPUT_GRAD_ADDS_BIAS`` is true (polyphase)
takes ``input_grad(..., bias=b)`` for the transposed convolution's forward.  The others'
results get the bias added afterwards (:func:`convolab.ops.conv._add_bias`).

Modules may provide ``applicable(role, spec, x_shape, w_shape, dtype) -> bool`` when it
only handles some configurations, and ``workspace(role, spec, problem, dtype)``
(bytes of scratch memory it allocates beyond its result) and
``cost(role, spec, problem, itemsize) -> (flops, bytes)`` for the cost model, where
``problem`` is the dict of sizes from :func:`problem`.

:func:`choose` returns the algorithm and a reason: a forced choice
(``options(algorithm=...)``, falling back to ``gemm`` where the forced algorithm does
not apply), the autotuned winner (``options(autotune=True)``: every applicable
candidate is timed once per (role, shapes, spec, dtype) and the fastest cached, like
cuDNN's benchmark mode), or the cheapest by :func:`estimate_seconds`, a cost model of
FLOPs at BLAS speed plus bytes moved at memory speed.

``x_shape`` is the shape of the role's first argument: ``x`` for forward and
weight_grad, ``gy`` for input_grad; ``w_shape`` is always the weight's shape.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .options import get_options
from .spec import ConvSpec, _conv_transpose_out

ROLES = ("forward", "input_grad", "weight_grad")

_REGISTRY: dict[str, str] = {
    "direct": "convolab.algorithms.direct",
    "gemm": "convolab.algorithms.gemm",
    "winograd": "convolab.algorithms.winograd",
    "fft": "convolab.algorithms.fft",
    "depthwise": "convolab.algorithms.depthwise",
    "polyphase": "convolab.algorithms.polyphase",
}
# Candidates of the automatic choice (direct is the reference: never picked by default).
_AUTO_ORDER: list[str] = ["gemm", "depthwise", "winograd", "fft", "polyphase"]
# the algorithms whose transforms spread rounding error (off with transforms=False)
TRANSFORMS = ("winograd", "fft")

# Rates of the cost model (the 2-core AVX2 machines of benchmarks/RESULTS.md):
# float32 GEMM FLOP/s, single-core copy bytes/s.  float64 halves the GEMM rate.
GEMM_FLOPS = 150e9
COPY_BYTES = 8e9

# Autotuned winners, (algorithm, why) per key, the least recently used dropped past
# AUTOTUNE_CACHE_SIZE (a service sees ever new shapes); one lock for reads and writes,
# since calls from several threads tune and read at once.
AUTOTUNE_CACHE_SIZE = 4096
_TUNED: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
_TUNED_LOCK = threading.Lock()
# One tuning at a time, the cache checked again under it: threads that missed the cache
# together each timed the candidates (against each other, on the same cores) and each
# used its own winner, the last one stored (in 36 of 40 trials of four threads, a first
# call ran another algorithm than the same call right after).  Re-entrant: a candidate
# timed may itself ask for a choice.
_TUNING_LOCK = threading.RLock()


def _after_fork_in_child() -> None:
    """A child forked while another thread tuned (or read the cache) would wait for
    that thread's lock for ever: it does not exist there."""
    global _TUNED_LOCK, _TUNING_LOCK
    _TUNED_LOCK, _TUNING_LOCK = threading.Lock(), threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _tuned_get(key: tuple) -> tuple[str, str] | None:
    with _TUNED_LOCK:
        hit = _TUNED.get(key)
        if hit is not None:
            _TUNED.move_to_end(key)
        return hit


def _tuned_put(key: tuple, winner: str, why: str) -> tuple[str, str]:
    with _TUNED_LOCK:
        _TUNED[key] = (winner, why)
        _TUNED.move_to_end(key)
        while len(_TUNED) > AUTOTUNE_CACHE_SIZE:
            _TUNED.popitem(last=False)
        return winner, why


def _tune_key(*parts) -> tuple:
    """A cache key: the call's parts, and the options the candidates depend on (the
    budget, the worker count and transforms= decide which algorithms apply)."""
    from .algorithms._threads import workers

    opts = get_options()
    return parts + (opts.workspace_bytes, workers(), opts.transforms)


def register(name: str, module: str, *, auto_rank: int | None = None) -> None:
    """Make an algorithm module selectable by name (and, with ``auto_rank``, by default)."""
    _REGISTRY[name] = module
    if auto_rank is not None and name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(auto_rank, name)
    _by_cost_model.cache_clear()
    _backward_by_cost_model.cache_clear()


def _module(name: str):
    return importlib.import_module(_REGISTRY[name])


@dataclass(frozen=True)
class Choice:
    algorithm: str
    reason: str

    @property
    def module(self):
        return _module(self.algorithm)


def _applicable(mod, role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> bool:
    if not hasattr(mod, role):
        return False
    check = getattr(mod, "applicable", None)
    return True if check is None else bool(check(role, spec, x_shape, w_shape, dtype))


def candidates(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> list[str]:
    """The automatic candidates that handle this role and configuration (without
    Winograd and FFT under ``options(transforms=False)``)."""
    dtype = np.dtype(dtype)
    skip = () if get_options().transforms else TRANSFORMS
    return [n for n in _AUTO_ORDER if n not in skip
            and _applicable(_module(n), role, spec, x_shape, w_shape, dtype)]


def problem(role: str, spec: ConvSpec, x_shape, w_shape) -> dict:
    """Sizes of the underlying forward convolution: N, C, K, in/out spatial, groups."""
    g = spec.groups
    if role == "input_grad":
        N, K = x_shape[0], x_shape[1]
        O = tuple(x_shape[2:])
        C = w_shape[1] * g
        # the smallest input size whose output is O: the transposed size without
        # output_padding, raised to 1 and to what the kernel needs where the padding is
        # large (it came out at -1 for k=3, stride 3, padding 2 on a length-1 input, and
        # autotune's timing of the input gradient failed); the true size can be larger
        # by up to the output_padding, which the cost model does not need
        S = tuple(
            max(_conv_transpose_out(o, k, s, lo, hi, d, 0), 1, d * (k - 1) + 1 - lo - hi)
            for o, k, s, (lo, hi), d in zip(O, spec.kernel_size, spec.stride, spec.padding,
                                            spec.dilation)
        )
    else:
        N, C = x_shape[0], x_shape[1]
        K = w_shape[0]
        S = tuple(x_shape[2:])
        O = spec.conv_out_shape(S)
    return dict(N=N, C=C, K=K, S=S, O=O, g=g)


def direct_flops(spec: ConvSpec, x_shape, w_shape, role: str = "forward") -> int:
    """Multiply-adds x 2 of the convolution written directly (the FLOP count of the suite)."""
    p = problem(role, spec, x_shape, w_shape)
    kk = math.prod(spec.kernel_size)
    return 2 * p["N"] * p["K"] * (p["C"] // p["g"]) * kk * math.prod(p["O"])


def estimate_seconds(name: str, role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> float:
    """The cost model: the algorithm module's ``cost`` (FLOPs at GEMM speed, bytes at copy
    speed) when it has one, else the direct FLOPs at GEMM speed; plus its fixed seconds
    per call (:func:`call_seconds`)."""
    dtype = np.dtype(dtype)
    mod = _module(name)
    p = problem(role, spec, x_shape, w_shape)
    if hasattr(mod, "cost"):
        flops, nbytes = mod.cost(role, spec, p, dtype.itemsize)
    else:
        flops, nbytes = direct_flops(spec, x_shape, w_shape, role), 0
    return seconds(flops, nbytes, dtype) + call_seconds(mod, role, spec, p, dtype.itemsize)


def seconds(flops: float, nbytes: float, dtype=None) -> float:
    """The cost model's time for FLOPs at GEMM speed (``dtype``'s rate; float32's when
    None, as the algorithms compare their own lowerings) and bytes at copy speed."""
    rate = GEMM_FLOPS if dtype is None else _gemm_rate(np.dtype(dtype))
    return flops / rate + nbytes / COPY_BYTES


def call_seconds(mod, role: str, spec: ConvSpec, p: dict, itemsize: int) -> float:
    """What one call of ``mod``'s ``role`` costs beyond its FLOPs and bytes (its Python
    steps: planning, transforms set up, tiles): the module's ``call_seconds(role, spec,
    p, itemsize)``, or its ``CALL_SECONDS[role]``, else 0.  Measured on tiny layers
    (one worker, medians): GEMM's plain lane 35-90 us, Winograd 130-560, FFT 160-410,
    depthwise 60-400, polyphase 80-180 (.dev/overhead.py).  Small calls are decided by
    these: without them Winograd, FFT or the fused backward were chosen for layers of a
    few hundred microseconds where GEMM's lane was 2-5x faster."""
    fn = getattr(mod, "call_seconds", None)
    if fn is not None:
        return fn(role, spec, p, itemsize)
    return getattr(mod, "CALL_SECONDS", {}).get(role, 0.0)


def _gemm_rate(dtype: np.dtype) -> float:
    """GEMM FLOP/s of the cost model for ``dtype``."""
    rate = GEMM_FLOPS / (2 if dtype in (np.float64, np.complex64) else 1)
    return rate / (4 if dtype == np.complex128 else 1)


def _autotuned(role, spec, x_shape, w_shape, dtype, names) -> tuple[str, str]:
    key = _tune_key(role, spec, tuple(x_shape), tuple(w_shape), dtype.str)
    hit = _tuned_get(key)
    if hit is not None and hit[0] in names:
        return hit
    with _TUNING_LOCK:
        hit = _tuned_get(key)
        if hit is not None and hit[0] in names:
            return hit
        times = {n: _time(n, role, spec, x_shape, w_shape, dtype) for n in names}
        desc = ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items())
        return _tuned_put(key, min(times, key=times.get), f"autotuned: fastest of {desc}")


def _time(name: str, role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> float:
    """Best of two runs (after one warm-up) of one candidate on random data."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    p = problem(role, spec, x_shape, w_shape)
    fn = getattr(_module(name), role)
    if role == "forward":
        call = lambda: fn(a, w, spec)  # noqa: E731
    elif role == "input_grad":
        call = lambda: fn(a, w, spec, p["S"])  # noqa: E731
    else:
        gy = rng.standard_normal((p["N"], p["K"]) + p["O"]).astype(dtype)
        call = lambda: fn(a, gy, spec)  # noqa: E731
    return _best_of_two(call)


def _best_of_two(call) -> float:
    """Seconds of the faster of two calls after one warm-up."""
    best = math.inf
    for i in range(3):
        t0 = time.perf_counter()
        call()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def choose(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> Choice:
    """Pick the algorithm for one role of one convolution."""
    opts = get_options()
    dtype = np.dtype(dtype)
    if opts.algorithm != "auto":
        name = opts.algorithm
        if name not in _REGISTRY:
            raise ValueError(f"algorithm={name!r} is not available in this installation")
        if _applicable(_module(name), role, spec, x_shape, w_shape, dtype):
            return Choice(name, f"forced by options(algorithm={name!r})")
        return Choice("gemm", f"{name!r} does not handle {role} here; fell back to 'gemm'")
    if opts.autotune:
        names = candidates(role, spec, x_shape, w_shape, dtype)
        if len(names) > 1:
            return Choice(*_autotuned(role, spec, x_shape, w_shape, dtype, names))
    return _by_cost_model(role, spec, tuple(x_shape), tuple(w_shape), dtype,
                          opts.workspace_bytes, opts.workers, opts.transforms)


@functools.lru_cache(maxsize=4096)
def _by_cost_model(role, spec, x_shape, w_shape, dtype, workspace, workers,
                   transforms) -> Choice:
    """The automatic choice, cached per (role, spec, shapes, dtype, workspace budget,
    workers, transforms): ranking the candidates costs ~0.1 ms, which a training loop of
    small convolutions would pay on every call.  (The options are part of the key
    because the candidates and the estimates of tiled algorithms read them.)"""
    names = candidates(role, spec, x_shape, w_shape, dtype)
    if not names:
        return Choice("gemm", "general fallback")
    p = problem(role, spec, x_shape, w_shape)
    if 0 in (p["N"], p["C"], p["K"], math.prod(p["S"]), math.prod(p["O"])):
        # the estimates divide by these sizes; an empty call has nothing to rank
        return Choice("gemm", "an empty problem: nothing to compute")
    if len(names) == 1:
        return Choice(names[0], f"the only applicable algorithm among {_AUTO_ORDER}")
    est = {n: estimate_seconds(n, role, spec, x_shape, w_shape, dtype) for n in names}
    best = min(est, key=est.get)
    desc = ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in sorted(est.items(), key=lambda kv: kv[1]))
    return Choice(best, f"cheapest by the cost model (estimated {desc})")


def choose_backward(spec: ConvSpec, x_shape, w_shape, dtype) -> Choice:
    """How a backward pass that needs both gradients runs: ``'fused'`` (both from one
    column copy of the output gradient, :mod:`convolab.algorithms.fused`) or
    ``'separate'`` (each gradient by its own :func:`choose`).  ``x_shape`` is the
    input's shape (of the transposed convolution, for a transposed ``spec``: there
    fused means GEMM for both gradients, see :func:`_transposed_backward`).

    Fused runs only under the automatic choice: a forced ``options(algorithm=...)``
    keeps every role on the forced algorithm.  The cost model compares its estimate with
    the sum of the two gradients' estimates; with ``autotune`` both ways are timed once
    per shape and the faster is cached."""
    opts = get_options()
    dtype = np.dtype(dtype)
    if opts.algorithm != "auto":
        return Choice("separate", f"forced by options(algorithm={opts.algorithm!r})")
    args = (spec, tuple(x_shape), tuple(w_shape), dtype)
    if opts.autotune:
        settled = _backward_settled(*args)
        if isinstance(settled, Choice):
            return settled
        return _autotuned_backward(*args, *settled)
    return _backward_by_cost_model(*args, opts.workspace_bytes, opts.workers,
                                   opts.transforms)


def _backward_settled(spec, x_shape, w_shape, dtype) -> Choice | tuple[Choice, Choice]:
    """The backward's choice where no estimate or timing is needed; else the two
    gradients' own choices, to be weighed against the fused path."""
    from .algorithms import fused

    if spec.transposed:
        return _transposed_backward(spec, x_shape, w_shape, dtype)
    if not fused.applicable(spec, x_shape, w_shape):
        return Choice("separate", "fused needs a stride-1 convolution with padding >= 0 "
                                  "and more than one tap")
    gy_shape = (x_shape[0], w_shape[0]) + spec.conv_out_shape(x_shape[2:])
    ig = choose("input_grad", spec, gy_shape, w_shape, dtype)
    wg = choose("weight_grad", spec, x_shape, w_shape, dtype)
    if spec.rank == 1 and spec.kernel_size[0] == 3 and wg.algorithm == "winograd":
        # 1-D 3-tap kernels: F(6, 3) cuts the FLOPs least, and the two Winograd gradients
        # ran slower than fused on 43 of 44 recorded 3-tap layers (1.1-2.1x; N32 C64 ->
        # K64 on 1024 samples 21.4 against 16.4 ms); over three sets of 70 1-D layers
        # the plan's loss 7.6 / 16.5 / 12.0 -> 6.5 / 16.1 / 10.8 % (.dev/evalbwd.py)
        return Choice("fused", "fused: a 1-D 3-tap kernel, whose Winograd weight gradient "
                               "saves the least")
    if wg.algorithm == "winograd" and w_shape[0] // spec.groups >= w_shape[1]:
        # its transforms cut the FLOPs of both gradients; measured faster than fused on
        # every such layer in the suite (fused / separate, ms: 3x3 C64 56x56 50.2 / 42.1,
        # 3x3 C256 14x14 50.5 / 41.5, conv3d 16.4 / 13.4, 1-D k7 29.2 / 19.9, 1-D k5
        # 19.9 / 18.2).  With fewer output than input channels per group the fused path's
        # columns of gy are the smaller copy, and fused won on the recorded 2-D layers
        # (N32 C128 -> K16 3x3 on 32x32: 20.9 / 34.8; N16 C32 -> K16 on 28x28: 2.7 / 6.0;
        # C256 -> K32 on 56x56: 17.0 / 22.7): there the cost model weighs the two (over
        # 78 + 44 recorded layers the plan's loss went 2.8 -> 0.9 % and 6.3 -> 5.6 %).
        # Where only the input gradient takes Winograd, GEMM's weight
        # gradient still copies x's columns and fused won: the dilated 1-D k3 13.1 /
        # 14.1 (measured when its input gradient took Winograd; since the sixteenth
        # pass's 1-D refit it takes polyphase, and fused still wins), the demo's
        # undilated k3 layer 3.5 / 4.3.
        return Choice("separate", f"{ig.algorithm} + {wg.algorithm}: Winograd needs "
                                  "fewer FLOPs than the fused GEMMs")
    return ig, wg


def _transposed_backward(spec, x_shape, w_shape, dtype) -> Choice:
    """A transposed convolution's gradients are ``conv(gy, w)`` and ``corr(gy, x)``:
    when GEMM's plain im2col runs both, the fused path copies gy's columns once for the
    two products (the same GEMMs: it does strictly less)."""
    from .algorithms import fused

    gy_shape = (x_shape[0], w_shape[1] * spec.groups) + spec.transpose_out_shape(x_shape[2:])
    fw = choose("forward", spec, gy_shape, w_shape, dtype)
    wg = choose("weight_grad", spec, gy_shape, w_shape, dtype)
    if (fw.algorithm, wg.algorithm) != ("gemm", "gemm"):
        return Choice("separate", f"{fw.algorithm} + {wg.algorithm}: the fused path "
                                  "shares GEMM's columns only")
    if not fused.applicable_transposed(spec, gy_shape, w_shape, x_shape[2:]):
        return Choice("separate", "GEMM runs a 1x1, flat, MEC or slab lowering here, "
                                  "which the fused path does not")
    return Choice("fused", "gemm + gemm on the same columns of gy: copied once")


@functools.lru_cache(maxsize=4096)
def _backward_by_cost_model(spec, x_shape, w_shape, dtype, workspace, workers,
                            transforms) -> Choice:
    """The automatic backward choice, cached like :func:`_by_cost_model` (a training loop
    asks on every step; the options it reads are in the key)."""
    from .algorithms import fused

    settled = _backward_settled(spec, x_shape, w_shape, dtype)
    if isinstance(settled, Choice):
        return settled
    ig, wg = settled
    gy_shape = (x_shape[0], w_shape[0]) + spec.conv_out_shape(x_shape[2:])
    sep = (estimate_seconds(ig.algorithm, "input_grad", spec, gy_shape, w_shape, dtype)
           + estimate_seconds(wg.algorithm, "weight_grad", spec, x_shape, w_shape, dtype))
    flops, nbytes = fused.cost(spec, problem("weight_grad", spec, x_shape, w_shape),
                               dtype.itemsize)
    est = seconds(flops, nbytes, dtype) + fused.CALL_SECONDS
    desc = (f"estimated fused {est * 1e3:.2f} ms, separate {sep * 1e3:.2f} ms "
            f"({ig.algorithm} + {wg.algorithm})")
    return Choice("fused" if est < sep else "separate", f"cheapest by the cost model ({desc})")


def _autotuned_backward(spec, x_shape, w_shape, dtype, ig: Choice, wg: Choice) -> Choice:
    key = _tune_key("backward", spec, x_shape, w_shape, dtype.str, ig.algorithm, wg.algorithm)
    hit = _tuned_get(key)
    if hit is None:
        with _TUNING_LOCK:
            hit = _tuned_get(key) or _time_backward(key, spec, x_shape, w_shape, dtype, ig, wg)
    return Choice(*hit)


def _time_backward(key, spec, x_shape, w_shape, dtype, ig: Choice, wg: Choice) -> tuple:
    """Times fused against separate for :func:`_autotuned_backward` and stores the winner."""
    from .algorithms import fused

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    gy = rng.standard_normal((x_shape[0], w_shape[0]) + spec.conv_out_shape(x_shape[2:]))
    gy = gy.astype(dtype)
    calls = {"fused": lambda: fused.backward(x, gy, w, spec),
             "separate": lambda: (ig.module.input_grad(gy, w, spec, x_shape[2:]),
                                  wg.module.weight_grad(x, gy, spec))}
    times = {n: _best_of_two(c) for n, c in calls.items()}
    desc = ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items())
    return _tuned_put(key, min(times, key=times.get),
                     f"autotuned: fastest of {desc} ({ig.algorithm} + {wg.algorithm})")


def workspace_bytes(role: str, spec: ConvSpec, x_shape, w_shape, dtype) -> int:
    """Extra memory (bytes, beyond inputs and result) the chosen algorithm allocates."""
    choice = choose(role, spec, x_shape, w_shape, dtype)
    mod = choice.module
    est = getattr(mod, "workspace", None)
    if est is None:
        return 0
    return int(est(role, spec, problem(role, spec, x_shape, w_shape), np.dtype(dtype)))


def clear_autotune_cache() -> None:
    """Forget every autotuned winner (e.g. after the machine's load changed)."""
    with _TUNED_LOCK:
        _TUNED.clear()
