"""``convolab bench --survey N``: convolab against PyTorch on N random layer shapes.

The suite (:mod:`convolab.bench`) times thirteen fixed, mostly large layers; a user's
layers are often smaller, thinner or odder.  The survey draws float32 layers the way
small networks have them (1-D, 2-D and 3-D; batch 1-32; 1-256 channels; kernels 1-63;
stride and dilation 1-2; dense, grouped, depthwise and a few transposed), keeps those
of 2 MFLOP to 1.5 GFLOP, and times each call's forward and forward+backward (both
gradients) with the automatic choice against PyTorch in the same process, interleaved,
medians.  It writes ``survey.md`` and ``survey.json``: every layer with its ratios
(PyTorch time / convolab time), the geometric means and the layers below 0.5x.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _records


@dataclass(frozen=True)
class Layer:
    rank: int
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    stride: int
    dilation: int
    padding: int
    size: int
    transposed: bool
    kind: str  # dense, grouped or depthwise

    @property
    def flops(self) -> int:
        """Direct multiply-add FLOPs (x2) of the forward."""
        r, k = self.rank, self.kernel
        if self.transposed:
            return (2 * self.batch * self.in_channels * (self.out_channels // self.groups)
                    * k**r * self.size**r)
        o = (self.size + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1
        return 2 * self.batch * self.out_channels * (self.in_channels // self.groups) * k**r * o**r

    @property
    def name(self) -> str:
        t = " transposed" if self.transposed else ""
        return (f"{self.kind}{t} conv{self.rank}d N{self.batch} C{self.in_channels} "
                f"K{self.out_channels} g{self.groups} k{self.kernel} s{self.stride} "
                f"d{self.dilation} p{self.padding} {self.size}^{self.rank}")


def draw(rng: np.random.Generator) -> Layer:
    """One random layer of 2 MFLOP to 1.5 GFLOP (see the module docstring)."""
    while True:
        r = int(rng.choice([1, 2, 2, 2, 3]))
        n = int(rng.choice([1, 2, 4, 8, 16, 32]))
        c = int(rng.choice([1, 3, 8, 16, 32, 64, 128, 256]))
        k_out = int(rng.choice([8, 16, 32, 64, 128, 256]))
        kind = str(rng.choice(["dense", "dense", "dense", "depthwise", "grouped"]))
        g = 1
        if kind == "depthwise":
            g, k_out = c, c
        elif kind == "grouped":
            div = [d for d in (2, 4, 8, 16, 32) if c % d == 0 and k_out % d == 0]
            g = int(rng.choice(div)) if div else 1
        if g == 1:
            kind = "dense"
        ks = int(rng.choice([1, 3, 3, 3, 5, 7] if r > 1 else [1, 3, 5, 7, 9, 15, 31, 63]))
        s = int(rng.choice([1, 1, 1, 2]))
        d = int(rng.choice([1, 1, 1, 2])) if ks > 1 else 1
        size = int(rng.choice({1: [64, 256, 1024, 4096, 16384],
                               2: [7, 14, 28, 32, 56, 64, 112], 3: [8, 12, 16, 24]}[r]))
        p = (d * (ks - 1)) // 2 if rng.random() < 0.7 else 0
        transposed = bool(rng.random() < 0.12) and s == 2
        if d * (ks - 1) + 1 > size + 2 * p:
            continue
        layer = Layer(r, n, c, k_out, g, ks, s, d, p, size, transposed, kind)
        if 2e6 <= layer.flops <= 1.5e9:
            return layer


def _median_pair(a, b, reps: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed alternately, after one call of each."""
    a()
    b()
    ta, tb = [], []
    for _ in range(reps):
        for f, ts in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def measure(layer: Layer, rng: np.random.Generator, reps: int) -> dict:
    """Forward and forward+backward of ``layer``: convolab (auto) and torch, in seconds."""
    import torch
    import torch.nn.functional as F

    import convolab as cl

    r = layer.rank
    x = rng.standard_normal((layer.batch, layer.in_channels) + (layer.size,) * r)
    if layer.transposed:
        wshape = (layer.in_channels, layer.out_channels // layer.groups)
        op, top = getattr(cl, f"conv_transpose{r}d"), getattr(F, f"conv_transpose{r}d")
    else:
        wshape = (layer.out_channels, layer.in_channels // layer.groups)
        op, top = getattr(cl, f"conv{r}d"), getattr(F, f"conv{r}d")
    w = rng.standard_normal(wshape + (layer.kernel,) * r) / math.sqrt(
        wshape[1] * layer.kernel**r)
    x, w = x.astype(np.float32), w.astype(np.float32)
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
              groups=layer.groups)
    gy = rng.standard_normal(op(x, w, **kw).shape).astype(np.float32)
    tx, tw, tgy = (torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True),
                   torch.tensor(gy))

    def t_fwd():
        with torch.no_grad():
            top(tx, tw, **kw)

    def t_both():
        tx.grad = tw.grad = None
        top(tx, tw, **kw).backward(tgy)

    def c_both():
        cl.vjp(op, x, w, **kw)[1](gy)

    fwd, tfwd = _median_pair(lambda: op(x, w, **kw), t_fwd, reps)
    both, tboth = _median_pair(c_both, t_both, reps)
    return {"fwd_s": fwd, "torch_fwd_s": tfwd, "fwd_bwd_s": both, "torch_fwd_bwd_s": tboth}


def run(n: int, seed: int, reps: int, out: str, log=print) -> dict:
    """Draw ``n`` layers from ``seed``, time them, write ``survey.md``/``.json`` in ``out``."""
    import torch

    from .algorithms import _threads
    from .bench import machine

    torch.set_num_threads(len(_threads._usable_cpus()))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        layer = draw(rng)
        t = measure(layer, rng, reps)
        row = {"name": layer.name, **asdict(layer), "flops": layer.flops, **t,
               "ratio_fwd": t["torch_fwd_s"] / t["fwd_s"],
               "ratio_fwd_bwd": t["torch_fwd_bwd_s"] / t["fwd_bwd_s"]}
        rows.append(row)
        log(f"{i + 1:3d}/{n} {layer.name}: fwd {row['ratio_fwd']:.2f}x "
            f"({t['fwd_s'] * 1e3:.2f} vs {t['torch_fwd_s'] * 1e3:.2f} ms), fwd+bwd "
            f"{row['ratio_fwd_bwd']:.2f}x")
    summary = {
        "layers": n, "seed": seed, "reps": reps,
        "geomean ratio fwd": _geomean([r["ratio_fwd"] for r in rows]),
        "geomean ratio fwd+bwd": _geomean([r["ratio_fwd_bwd"] for r in rows]),
        "below 0.5 fwd": sum(r["ratio_fwd"] < 0.5 for r in rows),
        "below 0.5 fwd+bwd": sum(r["ratio_fwd_bwd"] < 0.5 for r in rows),
    }
    meta = {"machine": machine(), "numpy": np.__version__, "torch": torch.__version__,
            **_threads.threading_info()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "survey.json"), "w") as f:
        f.write(_records.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    with open(os.path.join(out, "survey.md"), "w") as f:
        f.write(markdown(rows, meta, summary))
    return summary


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values)))) if len(values) else math.nan


def markdown(rows: list[dict], meta: dict, summary: dict) -> str:
    lines = [f"# convolab survey: {summary['layers']} random float32 layers (seed "
             f"{summary['seed']}, {summary['reps']} reps)", "",
             f"{meta['machine']}; numpy {meta['numpy']}, torch {meta['torch']}, "
             f"{meta['workers']} tile workers.  Ratio = PyTorch time / convolab time.", "",
             f"- geometric mean: forward {summary['geomean ratio fwd']:.2f}x, forward+backward "
             f"{summary['geomean ratio fwd+bwd']:.2f}x",
             f"- below 0.5x: forward {summary['below 0.5 fwd']}, forward+backward "
             f"{summary['below 0.5 fwd+bwd']} of {summary['layers']}", "",
             "| layer | MFLOP | fwd ms | torch fwd ms | ratio fwd | fwd+bwd ms | "
             "torch fwd+bwd ms | ratio fwd+bwd |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["ratio_fwd"]):
        lines.append(f"| {r['name']} | {r['flops'] / 1e6:.1f} | {r['fwd_s'] * 1e3:.2f} | "
                     f"{r['torch_fwd_s'] * 1e3:.2f} | {r['ratio_fwd']:.2f} | "
                     f"{r['fwd_bwd_s'] * 1e3:.2f} | {r['torch_fwd_bwd_s'] * 1e3:.2f} | "
                     f"{r['ratio_fwd_bwd']:.2f} |")
    return "\n".join(lines) + "\n"
