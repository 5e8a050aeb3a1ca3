"""``convolab bench``: the fixed speed and memory suite, convolab against PyTorch.

For every case: forward and forward+backward (grad input, weight, bias) of convolab's
automatic choice and of each applicable algorithm, PyTorch CPU in the same process
(threads = cores), the straightforward NumPy im2col (``sliding_window_view`` +
``tensordot``) and SciPy for forward where it applies.  Contenders are interleaved
with ~0.2 s sleeps (OpenBLAS threads spin for ~0.1 s after a call and would slow the
next contender); medians are reported, with the ratio to PyTorch, effective GFLOP/s
(direct-convolution FLOPs / time; fwd+bwd counts 3x) against the GEMM peak measured
at the start (sgemm for float32 rows, dgemm for float64 rows), and the tracemalloc peak
of one convolab fwd+bwd.  Values that do not exist (no PyTorch: no ratios) are ``null``
in ``bench.json`` and ``n/a`` in ``bench.md`` / ``bench.csv``.

Writes ``bench.md``, ``bench.csv`` and ``bench.json`` into ``--out`` (default
``benchmarks/``).  Tests never assert times; run this by hand.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from . import _records, ops, select
from .algorithms import _threads
from .autodiff import vjp
from .options import options
from .spec import make_spec


@dataclass
class Case:
    name: str
    x: tuple
    w: tuple
    kw: dict = field(default_factory=dict)
    transposed: bool = False
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.w) - 2

    def spec(self):
        kw = self.kw
        return make_spec(tuple(self.w[2:]), kw.get("stride", 1), kw.get("padding", 0),
                         kw.get("dilation", 1), kw.get("groups", 1),
                         kw.get("output_padding"), transposed=self.transposed)


def suite(quick: bool = False) -> list[Case]:
    """The fixed suite (``quick``: a few cases at a quarter of the batch)."""
    cases = [
        Case("conv1d k7 N32 C64 L1024 K64", (32, 64, 1024), (64, 64, 7), dict(padding=3)),
        Case("conv1d k3 d4 N16 C64 L2048 K64", (16, 64, 2048), (64, 64, 3),
             dict(padding=4, dilation=4)),
        Case("conv1d k63 N4 C16 L16384 K16", (4, 16, 16384), (16, 16, 63), dict(padding=31)),
        Case("conv2d 3x3 N16 C64 56x56 K64", (16, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
        Case("conv2d 3x3 N16 C128 28x28 K128", (16, 128, 28, 28), (128, 128, 3, 3),
             dict(padding=1)),
        Case("conv2d 3x3 N16 C256 14x14 K256", (16, 256, 14, 14), (256, 256, 3, 3),
             dict(padding=1)),
        Case("conv2d 1x1 N16 C256 28x28 K128", (16, 256, 28, 28), (128, 256, 1, 1)),
        Case("conv2d 3x3 s2 N16 C128 28x28 K256", (16, 128, 28, 28), (256, 128, 3, 3),
             dict(stride=2, padding=1)),
        Case("stem 7x7 s2 N8 C3 224x224 K64", (8, 3, 224, 224), (64, 3, 7, 7),
             dict(stride=2, padding=3)),
        Case("depthwise 3x3 N16 C256 28x28", (16, 256, 28, 28), (256, 1, 3, 3),
             dict(padding=1, groups=256)),
        Case("grouped g32 3x3 N16 C256 28x28 K256", (16, 256, 28, 28), (256, 8, 3, 3),
             dict(padding=1, groups=32)),
        Case("conv3d 3x3x3 N4 C32 16^3 K32", (4, 32, 16, 16, 16), (32, 32, 3, 3, 3),
             dict(padding=1)),
        Case("conv_transpose2d 4x4 s2 N16 C128 14x14 K64", (16, 128, 14, 14), (128, 64, 4, 4),
             dict(stride=2, padding=1), transposed=True),
        Case("f64 conv2d 3x3 N8 C64 56x56 K64", (8, 64, 56, 56), (64, 64, 3, 3),
             dict(padding=1), dtype="float64"),
        Case("f64 conv1d k7 N32 C64 L1024 K64", (32, 64, 1024), (64, 64, 7), dict(padding=3),
             dtype="float64"),
        Case("f64 conv2d 1x1 N16 C256 28x28 K128", (16, 256, 28, 28), (128, 256, 1, 1),
             dtype="float64"),
    ]
    if quick:
        keep = (0, 2, 3, 6, 9, 12)
        cases = [cases[i] for i in keep]
        for c in cases:
            c.x = (max(1, c.x[0] // 4),) + c.x[1:]
            # the name describes the shape that runs: "N16" becomes "N4"
            c.name = re.sub(r"\bN\d+\b", f"N{c.x[0]}", c.name)
    return cases


def flops(case: Case) -> int:
    """Direct-convolution FLOPs (2 per multiply-add) of the forward; a transposed
    convolution does the work of the convolution whose input gradient it is."""
    role = "input_grad" if case.transposed else "forward"
    return select.direct_flops(case.spec(), case.x, case.w, role)


PEAK_N = 2048
#: the GEMM whose peak a row's "% peak" is measured against, by the row's dtype
PEAK_KIND = {"float32": "sgemm", "float64": "dgemm"}


def gemm_peak(dtype="float32", n: int = PEAK_N, reps: int = 5) -> float:
    """FLOP/s of NumPy's ``n``-square matrix product in ``dtype`` (median of ``reps``)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    b = a.T.copy()
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(ts))


def sgemm_peak(n: int = PEAK_N, reps: int = 5) -> float:
    return gemm_peak("float32", n, reps)


def _fn(case: Case):
    name = ("conv_transpose" if case.transposed else "conv") + f"{case.rank}d"
    return getattr(ops.conv, name)


def _arrays(case: Case):
    rng = np.random.default_rng(0)
    dt = np.dtype(case.dtype)
    x = rng.standard_normal(case.x).astype(dt)
    w = rng.standard_normal(case.w).astype(dt)
    ch = case.w[1] * case.kw.get("groups", 1) if case.transposed else case.w[0]
    b = rng.standard_normal(ch).astype(dt)
    y = _fn(case)(x, w, b, **case.kw)
    gy = rng.standard_normal(y.shape).astype(dt)
    return x, w, b, gy


def _convolab(case, x, w, b, gy, algorithm):
    fn = _fn(case)

    def fwd():
        with options(algorithm=algorithm):
            fn(x, w, b, **case.kw)

    def fb():
        with options(algorithm=algorithm):
            _, pb = vjp(fn, x, w, b, **case.kw)
            pb(gy)

    return fwd, fb


def _naive_im2col(case, x, w):
    """The straightforward NumPy im2col: pad, ``sliding_window_view``, ``tensordot``
    (one per group for a grouped convolution; a transposed convolution as the forward
    convolution of the stride-dilated, padded input with the flipped kernel)."""
    from numpy.lib.stride_tricks import sliding_window_view

    spec = case.spec()
    r = case.rank
    g = case.kw.get("groups", 1)
    if case.transposed:
        op = spec.output_padding or (0,) * r
        ext = [d * (k - 1) for d, k in zip(spec.dilation, spec.kernel_size)]
        pads = [(e - lo, e - hi + o) for e, (lo, hi), o in zip(ext, spec.padding, op)]
        Cin, Kg = w.shape[:2]
        wf = w.reshape((g, Cin // g, Kg) + w.shape[2:]).swapaxes(1, 2)
        wf = wf.reshape((g * Kg, Cin // g) + w.shape[2:])[
            (Ellipsis,) + (slice(None, None, -1),) * r]
        stride, dil = (1,) * r, spec.dilation
    else:
        pads, wf, stride, dil = list(spec.padding), w, spec.stride, spec.dilation
    eff = tuple(d * (k - 1) + 1 for d, k in zip(dil, spec.kernel_size))

    def fwd():
        src = x
        if case.transposed:
            up = np.zeros(x.shape[:2] + tuple(s * (n - 1) + 1 for s, n in
                                              zip(spec.stride, x.shape[2:])), x.dtype)
            up[(Ellipsis,) + tuple(slice(None, None, s) for s in spec.stride)] = x
            src = up
        crop = tuple(slice(max(0, -lo), n - max(0, -hi)) for (lo, hi), n in
                     zip(pads, src.shape[2:]))
        xp = np.pad(src[(Ellipsis,) + crop],
                    [(0, 0), (0, 0)] + [(max(0, lo), max(0, hi)) for lo, hi in pads])
        out = tuple((n - e) // s + 1 for n, e, s in zip(xp.shape[2:], eff, stride))
        win = sliding_window_view(xp, eff, axis=tuple(range(2, 2 + r)))
        sl = tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(stride, out))
        sl += tuple(slice(None, None, d) for d in dil)
        win = win[(slice(None), slice(None)) + sl]
        Cg, Kg = win.shape[1] // g, wf.shape[0] // g
        ys = [np.tensordot(win[:, j * Cg:(j + 1) * Cg], wf[j * Kg:(j + 1) * Kg],
                           axes=([1] + list(range(2 + r, 2 + 2 * r)),
                                 [1] + list(range(2, 2 + r))))
              for j in range(g)]
        y = ys[0] if g == 1 else np.concatenate(ys, axis=-1)
        return np.moveaxis(y, -1, 1)

    return fwd


def _scipy(case, x, w):
    """SciPy forward (``fftconvolve`` over channel pairs, then a channel sum) where it
    applies: one group, stride 1, dilation 1, and the pairwise product fits 256 MB."""
    try:
        from scipy.signal import fftconvolve
    except ImportError:  # pragma: no cover
        return None
    kw = case.kw
    r = case.rank
    if case.transposed or kw.get("groups", 1) != 1 or kw.get("stride", 1) != 1 \
            or kw.get("dilation", 1) != 1:
        return None
    N, C = case.x[:2]
    if N * case.w[0] * C * math.prod(case.x[2:]) * x.itemsize > 256 * 2**20:
        return None
    spec = case.spec()
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * r

    def fwd():
        xp = np.pad(x, [(0, 0), (0, 0)] + list(spec.padding))
        y = fftconvolve(xp[:, None], w[flip][None], mode="valid",
                        axes=tuple(range(3, 3 + r)))
        y.sum(axis=2)

    return fwd


def _torch(case, x, w, b, gy):
    try:
        import torch
    except ImportError:
        return None, None
    # as many threads as the CPUs this process may use (taskset, cpusets), like the
    # tile workers; os.cpu_count() would count CPUs it cannot run on
    torch.set_num_threads(len(_threads._usable_cpus()))
    F = torch.nn.functional
    fn = getattr(F, ("conv_transpose" if case.transposed else "conv") + f"{case.rank}d")
    xt, wt, bt, gyt = (torch.from_numpy(a) for a in (x, w, b, gy))
    kw = dict(case.kw)
    if not case.transposed:
        kw.pop("output_padding", None)
    xg, wg, bg = (a.clone().requires_grad_() for a in (xt, wt, bt))

    def fwd():
        with torch.no_grad():
            fn(xt, wt, bt, **kw)

    def fb():
        xg.grad = wg.grad = bg.grad = None
        y = fn(xg, wg, bg, **kw)
        y.backward(gyt)

    return fwd, fb


def _median_times(contenders: dict, reps: int, sleep: float) -> dict:
    for f in contenders.values():  # warm-up (allocators, FFT plans, imports)
        f()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for k, f in contenders.items():
            time.sleep(sleep)
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return ({k: float(np.median(v)) for k, v in times.items()},
            {k: float(np.min(v)) for k, v in times.items()})


def _peak_bytes(f) -> int:
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _algorithms(case: Case, within: float = 4.0) -> list[str]:
    """GEMM (the general path) and the applicable algorithms whose cost-model estimate is
    within ``within`` x of the cheapest (an FFT of a 3x3 layer with 256 channels would
    take most of the run)."""
    spec = case.spec()
    dt = np.dtype(case.dtype)
    role = "input_grad" if case.transposed else "forward"
    names = select.candidates(role, spec, case.x, case.w, dt)
    est = {n: select.estimate_seconds(n, role, spec, case.x, case.w, dt) for n in names}
    best = min(est.values(), default=0.0)
    return [n for n in ("gemm", "winograd", "fft", "depthwise", "polyphase")
            if n in est and (n == "gemm" or est[n] <= within * best)]


def run_case(case: Case, peak, reps: int, sleep: float, log=print) -> dict:
    """Time one case.  ``peak``: FLOP/s, either one number (the sgemm peak, used for
    every dtype) or a mapping ``{dtype: peak}`` such as ``{"float32": sgemm,
    "float64": dgemm}``; the row records which one its "% peak" uses."""
    if isinstance(peak, dict):
        peak_kind, peak = PEAK_KIND.get(case.dtype, case.dtype), peak[case.dtype]
    else:
        peak_kind = "sgemm"
    x, w, b, gy = _arrays(case)
    contenders: dict = {}
    tf, tfb = _torch(case, x, w, b, gy)
    if tf is not None:
        contenders["torch fwd"], contenders["torch fwd+bwd"] = tf, tfb
    algos = ["auto"] + _algorithms(case)
    for a in algos:
        contenders[f"{a} fwd"], contenders[f"{a} fwd+bwd"] = _convolab(case, x, w, b, gy, a)
    naive = _naive_im2col(case, x, w)
    if naive is not None:
        contenders["numpy im2col fwd"] = naive
    sp = _scipy(case, x, w)
    if sp is not None:
        contenders["scipy fwd"] = sp
    med, best = _median_times(contenders, reps, sleep)
    fl = flops(case)
    spec = case.spec()
    role = "input_grad" if case.transposed else "forward"
    choice = select.choose(role, spec, case.x, case.w, np.dtype(case.dtype))
    row = dict(case=case.name, dtype=case.dtype, gflop=fl / 1e9, auto=choice.algorithm,
               peak=peak_kind, **{"peak GFLOP/s": peak / 1e9},
               times_ms={k: v * 1e3 for k, v in med.items()},
               best_ms={k: v * 1e3 for k, v in best.items()})
    for kind, mult in (("fwd", 1), ("fwd+bwd", 3)):
        ours = med[f"auto {kind}"]
        row[f"gflops {kind}"] = mult * fl / ours / 1e9
        row[f"peak frac {kind}"] = mult * fl / ours / peak
        if f"torch {kind}" in med:
            row[f"ratio {kind}"] = med[f"torch {kind}"] / ours
            # best-of-reps ratio: robust to other processes stealing a core mid-call
            row[f"best ratio {kind}"] = best[f"torch {kind}"] / best[f"auto {kind}"]
    if "numpy im2col fwd" in med:
        row["speedup vs numpy im2col fwd"] = med["numpy im2col fwd"] / med["auto fwd"]
    row["tracemalloc peak MiB"] = _peak_bytes(contenders["auto fwd+bwd"]) / 2**20
    row["input MiB"] = x.nbytes / 2**20
    log(_line(row))
    return row


NA = "n/a"  # a value that does not exist (no PyTorch: no ratio), in Markdown and CSV


def _fmt(v, spec: str, suffix: str = "") -> str:
    """``v`` formatted, or ``n/a`` where it does not exist (None, NaN, inf)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return NA
    return format(v, spec) + suffix


def _line(row: dict) -> str:
    t = row["times_ms"]
    return (f"{row['case']:<44} auto={row['auto']:<9} fwd {t['auto fwd']:8.1f} ms "
            f"(torch {_fmt(t.get('torch fwd'), '7.1f')}, "
            f"x{_fmt(row.get('ratio fwd'), '.2f')})  fwd+bwd "
            f"{t['auto fwd+bwd']:8.1f} ms (torch {_fmt(t.get('torch fwd+bwd'), '7.1f')}, "
            f"x{_fmt(row.get('ratio fwd+bwd'), '.2f')})")


def _geomean(vals) -> float | None:
    """Geometric mean of the positive finite values; None when there are none."""
    vals = [v for v in vals if v and v > 0 and math.isfinite(v)]
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals))) if vals else None


def _min(rows: list[dict], key: str) -> float | None:
    """Smallest ``key`` over the rows that have it; None when no row has it."""
    return min((r[key] for r in rows if r.get(key) is not None), default=None)


def summary(rows: list[dict]) -> dict:
    """Geomeans and minima of the ratios (float32 rows) and of the im2col speedup (all
    rows); a value that does not exist (no PyTorch, no rows) is None."""
    f32 = [r for r in rows if r["dtype"] == "float32"]
    return {
        "geomean ratio fwd (f32)": _geomean(r.get("ratio fwd") for r in f32),
        "geomean ratio fwd+bwd (f32)": _geomean(r.get("ratio fwd+bwd") for r in f32),
        "geomean best-of-reps ratio fwd (f32)": _geomean(r.get("best ratio fwd") for r in f32),
        "geomean best-of-reps ratio fwd+bwd (f32)": _geomean(
            r.get("best ratio fwd+bwd") for r in f32),
        "min ratio fwd (f32)": _min(f32, "ratio fwd"),
        "min ratio fwd+bwd (f32)": _min(f32, "ratio fwd+bwd"),
        "min speedup vs numpy im2col fwd": _min(rows, "speedup vs numpy im2col fwd"),
    }


def _peak_cell(r: dict, kind: str) -> str:
    pk = r.get("peak", "sgemm")
    of = "" if pk == "sgemm" else f" of {pk}"
    return f"{r[f'gflops {kind}']:.0f} ({_fmt(100 * r[f'peak frac {kind}'], '.0f')}%{of})"


def markdown(rows: list[dict], meta: dict, summ: dict) -> str:
    peaks = (f"sgemm peak (NumPy, {meta['sgemm n']}^3 float32): "
             f"**{meta['sgemm GFLOP/s']:.0f} GFLOP/s**; ")
    if "dgemm GFLOP/s" in meta:
        peaks += (f"dgemm peak (NumPy, {meta['dgemm n']}^3 float64): "
                  f"**{meta['dgemm GFLOP/s']:.0f} GFLOP/s**; ")
    lines = [
        peaks +
        f"{meta['machine']}; NumPy {meta['numpy']}, PyTorch {meta.get('torch', 'absent')}; "
        f"{meta.get('workers', '?')} tile workers"
        f"{'' if meta.get('threadpoolctl', True) else ' (no threadpoolctl: tiles run in order)'}; "
        f"{meta['reps']} interleaved repetitions, medians.",
        "",
        "| case | auto | fwd ms | torch fwd ms | ratio fwd | GFLOP/s fwd (% peak) | "
        "fwd+bwd ms | torch fwd+bwd ms | ratio fwd+bwd | GFLOP/s fwd+bwd (% peak) | "
        "best-of ratio fwd / fwd+bwd | vs NumPy im2col fwd | peak MiB (input) | "
        "other algorithms fwd / fwd+bwd ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["times_ms"]
        others = []
        for k in sorted(t):
            if k.endswith(" fwd") and not k.startswith(("auto", "torch")):
                base = k[: -len(" fwd")]
                fb = t.get(f"{base} fwd+bwd")
                others.append(f"{base} {t[k]:.1f}" + (f" / {fb:.1f}" if fb else ""))
        lines.append(
            f"| {r['case']} | {r['auto']} | {t['auto fwd']:.1f} | "
            f"{_fmt(t.get('torch fwd'), '.1f')} | {_fmt(r.get('ratio fwd'), '.2f')} | "
            f"{_peak_cell(r, 'fwd')} | "
            f"{t['auto fwd+bwd']:.1f} | {_fmt(t.get('torch fwd+bwd'), '.1f')} | "
            f"{_fmt(r.get('ratio fwd+bwd'), '.2f')} | {_peak_cell(r, 'fwd+bwd')} | "
            f"{_fmt(r.get('best ratio fwd'), '.2f')} / "
            f"{_fmt(r.get('best ratio fwd+bwd'), '.2f')} | "
            f"{_fmt(r.get('speedup vs numpy im2col fwd'), '.1f', 'x')} | "
            f"{r['tracemalloc peak MiB']:.0f} ({r['input MiB']:.0f}) | {'; '.join(others)} |"
        )
    lines += ["", "Ratios are PyTorch time / convolab time (> 1: convolab faster)."]
    kinds = sorted({r.get("peak", "sgemm") for r in rows})
    if kinds == ["sgemm"]:
        lines.append("% peak: effective GFLOP/s against the sgemm (float32) peak.")
    else:
        lines.append("% peak: effective GFLOP/s against the sgemm (float32) peak, or, where "
                     "the cell says so (\"of dgemm\"), against the dgemm (float64) peak.")
    if any(v is None for v in summ.values()) or any("ratio fwd" not in r for r in rows):
        lines.append(f"{NA}: the value does not exist (no PyTorch timing for the ratios, "
                     "or no float32 row for the f32 summaries).")
    lines.append("")
    lines += [f"- {k}: {_fmt(v, '.2f')}" if v is None or isinstance(v, float) else f"- {k}: {v}"
              for k, v in summ.items()]
    return "\n".join(lines) + "\n"


def _csv_cell(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return NA
    return v


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {len(_threads._usable_cpus())} cores"


MAX_SLEEP = 60.0


def _sleep_seconds(text: str) -> float:
    """``--sleep``: a finite number of seconds from 0 to ``MAX_SLEEP`` (``time.sleep``
    refuses NaN and overflows on inf or ~1e10, after the peak has been measured)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and 0 <= v <= MAX_SLEEP):
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be a finite number of seconds from 0 to {MAX_SLEEP:g}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="convolab bench",
                                 description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("--quick", action="store_true",
                    help="a few cases at a quarter of the batch (names give that batch)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, quick 3)")
    ap.add_argument("--sleep", type=_sleep_seconds, default=0.2,
                    help=f"seconds to sleep before each call (0 to {MAX_SLEEP:g})")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--out", default="benchmarks", help="folder for bench.md/.csv/.json")
    ap.add_argument("--survey", type=int, default=None, metavar="N",
                    help="instead of the suite, N random layer shapes against PyTorch "
                         "(survey.md/.json in --out; see convolab.survey)")
    ap.add_argument("--seed", type=int, default=None, help="the survey's draw (default 0)")
    args = ap.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        ap.error(f"--reps={args.reps} must be at least 1")
    if args.survey is not None:
        return _survey(ap, args)
    if args.seed is not None:
        ap.error("--seed draws the layers of --survey; the suite has fixed layers")
    # every "nothing to do" refusal comes before anything is created or measured
    cases = suite(args.quick)
    if args.only is not None:
        if not args.only.strip():
            ap.error(f"--only={args.only!r} is empty (it would select every case)")
        cases = [c for c in cases if args.only in c.name]
        if not cases:
            full = [c for c in suite() if args.only in c.name] if args.quick else []
            ap.error(f"--only={args.only!r} matches no case"
                     + (f" of the --quick suite (whose names give its batch size); "
                        f"{len(full)} of the full suite" if full else ""))
    try:  # before the cases run, not after
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        ap.error(f"--out={args.out!r}: cannot create that folder ({exc.strerror})")
    reps = args.reps or (3 if args.quick else 5)
    peaks = {"float32": sgemm_peak()}
    from .algorithms._threads import threading_info

    meta = {"machine": machine(), "numpy": np.__version__, "sgemm n": PEAK_N,
            "sgemm GFLOP/s": peaks["float32"] / 1e9}
    if any(c.dtype == "float64" for c in cases):  # only paid when float64 rows run
        peaks["float64"] = gemm_peak("float64", PEAK_N, reps=3)
        meta.update({"dgemm n": PEAK_N, "dgemm GFLOP/s": peaks["float64"] / 1e9})
    for dt in {c.dtype for c in cases} - set(peaks):  # pragma: no cover (not in the suite)
        peaks[dt] = gemm_peak(dt, PEAK_N, reps=3)
    meta.update({"reps": reps, "load average": os.getloadavg(), **threading_info()})
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    print("; ".join(f"{PEAK_KIND.get(dt, dt)} peak {p / 1e9:.0f} GFLOP/s"
                    for dt, p in peaks.items()) + f" on {meta['machine']}", flush=True)
    rows = [run_case(c, peaks, reps, args.sleep, log=lambda s: print(s, flush=True))
            for c in cases]
    meta["load average after"] = os.getloadavg()
    summ = summary(rows)
    os.makedirs(args.out, exist_ok=True)
    md = markdown(rows, meta, summ)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        f.write(_records.dumps({"meta": meta, "summary": summ, "rows": rows}, indent=1))
    keys = sorted({k for r in rows for k in r if k not in ("times_ms", "best_ms")})
    tkeys = sorted({k for r in rows for k in r["times_ms"]})
    with open(os.path.join(args.out, "bench.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(keys + [f"{k} ms" for k in tkeys])
        for r in rows:
            wr.writerow([_csv_cell(r.get(k)) for k in keys]
                        + [_csv_cell(r["times_ms"].get(k)) for k in tkeys])
    print(md)
    print(f"wrote {', '.join(os.path.join(args.out, f'bench.{e}') for e in ('md', 'csv', 'json'))}")
    return 0


def _survey(ap: argparse.ArgumentParser, args) -> int:
    """``--survey N``: every refusal before anything is created or measured."""
    if args.survey < 1:
        ap.error(f"--survey={args.survey} must be at least 1")
    if args.quick or args.only is not None:
        ap.error("--survey draws its own layers: it takes neither --quick nor --only")
    try:
        import torch  # noqa: F401
    except ImportError:
        ap.error("--survey compares with PyTorch, which is not installed "
                 "(pip install torch)")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        ap.error(f"--out={args.out!r}: cannot create that folder ({exc.strerror})")
    from . import survey

    summ = survey.run(args.survey, args.seed or 0, args.reps or 5, args.out,
                      log=lambda s: print(s, flush=True))
    print("; ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in summ.items()))
    print(f"wrote {os.path.join(args.out, 'survey.md')}, {os.path.join(args.out, 'survey.json')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
