"""``convolab draw``: animate a 1-D or 2-D (transposed) convolution like the arithmetic guide.

``convolab.draw("conv2d", input_size=5, kernel_size=3, stride=2, padding=1,
out="padding_strides.gif")`` or ``convolab.draw(preset="padding_strides_odd", out=...)``.
The geometry (which cells each frame highlights) is computed first, without any
plotting (:mod:`convolab.draw.geometry`); matplotlib and Pillow are only imported
when images are rendered.  Values (``values=True``) and gradients (``backward=``)
are computed by convolab itself (``conv``/``conv_transpose``/``vjp``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import ConvSpec, as_tuple, make_spec
from .geometry import (Axis, Frame, axes_of, forward_frames, input_grad_frames,
                       weight_grad_frames)

__all__ = ["PRESETS", "Drawing", "draw", "main"]

# Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", figure files
# (bin/generate_makefile of github.com/vdumoulin/conv_arithmetic): input size, kernel,
# stride, padding (and dilation).  A transposed preset takes the direct one's output
# as its input and gives back the direct one's input size (output_padding where the
# direct convolution rounded down, as the guide's padding_strides_odd_transposed).
_DIRECT = {
    "no_padding_no_strides": dict(input_size=4, kernel_size=3, stride=1, padding=0),
    "arbitrary_padding_no_strides": dict(input_size=5, kernel_size=4, stride=1, padding=2),
    "same_padding_no_strides": dict(input_size=5, kernel_size=3, stride=1, padding=1),
    "full_padding_no_strides": dict(input_size=5, kernel_size=3, stride=1, padding=2),
    "no_padding_strides": dict(input_size=5, kernel_size=3, stride=2, padding=0),
    "padding_strides": dict(input_size=5, kernel_size=3, stride=2, padding=1),
    "padding_strides_odd": dict(input_size=6, kernel_size=3, stride=2, padding=1),
    "dilation": dict(input_size=7, kernel_size=3, stride=1, padding=0, dilation=2),
}


def _transposed_preset(p: dict) -> dict:
    n, k, s, pad = p["input_size"], p["kernel_size"], p["stride"], p["padding"]
    d = p.get("dilation", 1)
    spec = make_spec((k, k), s, pad, d)
    (out, _) = spec.conv_out_shape((n, n))
    k_eff = d * (k - 1) + 1
    return dict(op="conv_transpose2d", input_size=out, kernel_size=k, stride=s, padding=pad,
                dilation=d, output_padding=(n + 2 * pad - k_eff) % s)


PRESETS: dict[str, dict] = {}
for _name, _p in _DIRECT.items():
    PRESETS[_name] = {"op": "conv2d", "dilation": 1, "output_padding": 0, **_p}
    PRESETS[_name + "_transposed"] = _transposed_preset(_p)
PRESETS = {k: PRESETS[k] for k in sorted(PRESETS)}

_OPS = {"conv1d": (1, False), "conv2d": (2, False), "conv_transpose1d": (1, True),
        "conv_transpose2d": (2, True)}


def _dims(vals) -> str:
    return "x".join(str(v) for v in vals)


@dataclass
class Drawing:
    """The frames of one animation and the numbers behind them; render on demand."""

    op: str
    spec: ConvSpec
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    axes: tuple[Axis, ...]
    frames: list[Frame]
    title: str
    subtitle: str
    mode: str = "forward"  # 'forward', 'input_grad' or 'weight_grad'
    x: np.ndarray | None = None  # input values (spatial)
    weight: np.ndarray | None = None
    y: np.ndarray | None = None  # output values computed by convolab
    grad_output: np.ndarray | None = None
    grad: np.ndarray | None = None  # gradient of the chosen cell/weight, from convolab.vjp
    notes: list[str] = field(default_factory=list)
    _images: list | None = field(default=None, repr=False)

    @property
    def canvas_values(self) -> np.ndarray | None:
        """The values on the canvas: input values, zeros for padding / inserted cells."""
        if self.x is None:
            return None
        cv = np.zeros(tuple(a.length for a in self.axes))
        idx = [np.array(a.index) for a in self.axes]
        ok = [i >= 0 for i in idx]
        sel = np.ix_(*[np.flatnonzero(m) for m in ok])
        cv[sel] = self.x[np.ix_(*[i[m] for i, m in zip(idx, ok)])]
        return cv

    def render(self, dpi: int = 72) -> list:
        """PIL images, one per frame (cached)."""
        if self._images is None:
            from .render import render

            show_vals = self.x is not None
            out_vals = self.grad_output if self.mode != "forward" else self.y
            self._images = render(
                self.axes, self.frames, title=self.title, subtitle=self.subtitle,
                canvas_values=self.canvas_values if show_vals else None,
                weight=self.weight if show_vals else None,
                out_values=out_vals if show_vals else None,
                out_label="grad_output" if self.mode != "forward" else "output",
                show_kernel=show_vals or self.mode != "forward",
                kernel_label="kernel w (used flipped)" if self.spec.transposed else "kernel w",
                dpi=dpi)
        return self._images

    def save(self, path: str, duration_ms: int = 800, dpi: int = 72) -> None:
        from .render import save_gif

        save_gif(self.render(dpi), path, duration_ms)

    def contact_sheet(self, path: str, columns: int | None = None, scale: float = 1.0,
                      dpi: int = 72) -> None:
        from .render import contact_sheet

        contact_sheet(self.render(dpi), path, columns, scale)


def _parse_cell(text: Any, rank: int, what: str) -> tuple[int, ...]:
    if isinstance(text, str):
        try:
            vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{what}={text!r} must be comma-separated ints") from None
    else:
        vals = tuple(int(v) for v in np.atleast_1d(text))
    if len(vals) != rank:
        raise ValueError(f"{what}={text!r} must have {rank} index(es), one per spatial dim")
    return vals


def draw(op: str = "conv2d", input_size: Any = 5, kernel_size: Any = 3, stride: Any = 1,
         padding: Any = 0, dilation: Any = 1, output_padding: Any = 0, *,
         preset: str | None = None, values: bool = False, x: Any = None, weight: Any = None,
         seed: int = 0, backward: Any = None, out: str | None = None,
         sheet: str | None = None, dpi: int = 72, duration_ms: int = 800) -> Drawing:
    """Build (and with ``out=``/``sheet=`` save) the animation of one convolution.

    op: ``conv1d``, ``conv2d``, ``conv_transpose1d`` or ``conv_transpose2d``.
    padding: anything ``convolab.conv`` accepts (int, tuple, per-side pairs,
    ``'same'``/``'valid'``/``'causal'`` for convolutions).
    preset: one of :data:`PRESETS` (the guide's file names); sets op and parameters.
    values: draw numbers (random integers from ``seed``, or ``x`` / ``weight``);
    outputs are computed with ``convolab.conv``/``conv_transpose``.
    backward: ``('input', (i, j))`` / ``'input:i,j'`` -- which outputs and weights sum
    into that input cell's gradient; ``('weight', (a, b))`` / ``'weight:a,b'`` -- which
    input/output pairs sum into that weight's gradient (values from ``convolab.vjp``).
    out: GIF path; sheet: PNG contact-sheet path.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {list(PRESETS)}")
        p = PRESETS[preset]
        op, input_size, kernel_size = p["op"], p["input_size"], p["kernel_size"]
        stride, padding, dilation = p["stride"], p["padding"], p["dilation"]
        output_padding = p["output_padding"]
    if op not in _OPS:
        raise ValueError(f"op={op!r} must be one of {list(_OPS)} (draw shows 1-D and 2-D)")
    rank, transposed = _OPS[op]
    size = as_tuple("input_size", input_size, rank)
    k = as_tuple("kernel_size", kernel_size, rank)
    if any(v <= 0 for v in size):
        raise ValueError(f"input_size={size} must be positive")
    spec = make_spec(k, stride, padding, dilation, 1,
                     output_padding if transposed else None, transposed=transposed)
    if not transposed and any(v != 0 for v in as_tuple("output_padding", output_padding, rank)):
        raise ValueError(f"output_padding={output_padding!r} applies to conv_transpose only")
    outsz = spec.out_shape(size)
    if any(o <= 0 for o in outsz):
        raise ValueError(f"{op}: input_size={size}, kernel_size={k}, stride={spec.stride}, "
                         f"padding={spec.padding}, dilation={spec.dilation} give output size "
                         f"{outsz}; it must be positive (see convolab explain)")
    axes = axes_of(spec, size)

    # Numbers.
    rng = np.random.default_rng(seed)
    want_values = values or x is not None or weight is not None or backward is not None
    xv = wv = yv = None
    if want_values:
        xv = (rng.integers(0, 4, size=size).astype(np.float64) if x is None
              else np.asarray(x, dtype=np.float64))
        wv = (rng.integers(0, 3, size=k).astype(np.float64) if weight is None
              else np.asarray(weight, dtype=np.float64))
        if xv.shape != size:
            raise ValueError(f"x.shape={xv.shape} must equal input_size={size}")
        if wv.shape != k:
            raise ValueError(f"weight.shape={wv.shape} must equal kernel_size={k}")
        yv = _run(op, spec, xv, wv)

    title = (f"{op}: input {_dims(size)}  ->  output {_dims(outsz)}\n"
             f"kernel {_dims(k)}, stride {_dims(spec.stride)}, padding {_pads(spec)}"
             + (f", dilation {_dims(spec.dilation)}" if any(v != 1 for v in spec.dilation) else "")
             + (f", output_padding {_dims(spec.output_padding)}"
                if transposed and any(spec.output_padding) else ""))
    if transposed:
        inner = " x ".join(f"({a.d * (a.k - 1) - a.lo}, {a.d * (a.k - 1) - a.hi + a.op})"
                           for a in axes)
        subtitle = ("drawn as the equivalent direct convolution (stride 1, flipped kernel)\n"
                    f"over the input with {_dims([s - 1 for s in spec.stride])} zero(s) "
                    f"inserted between cells, padded {inner}")
    else:
        left = [a.length - 1 - ((a.out - 1) * a.s + (a.k - 1) * a.d) for a in axes]
        subtitle = ("never read: the last " + " / ".join(
            f"{n} {w}" for n, w in zip(left, ["row(s)", "column(s)"][-rank:] if rank == 2
                                       else ["cell(s)"]) if n)
            + " of the padded input") if any(left) else ""
    notes = []
    if any(a.cropped for a in axes):
        notes.append("some input cells fall outside the canvas (padding larger than "
                     "dilation*(k-1)): they never reach the output")

    mode = "forward"
    gy = grad = None
    if backward is None:
        frames = forward_frames(axes)
        for f in frames:
            oi = ", ".join(map(str, f.output))
            f.caption = (f"y[{oi}] = sum of {len(f.cells)} products"
                         + (f" = {_num(yv[f.output])}" if yv is not None else "")
                         + f"    (frame {len(f.done) + 1}/{len(frames)})")
    else:
        kind, cell = _parse_backward(backward, rank)
        gy = rng.integers(1, 4, size=outsz).astype(np.float64)
        gx_all, gw_all = _grads(op, spec, xv, wv, gy)
        if kind == "input":
            if any(not 0 <= c < n for c, n in zip(cell, size)):
                raise ValueError(f"backward input cell {cell} is outside input_size={size}")
            mode = "input_grad"
            frames = input_grad_frames(axes, cell)
            grad = gx_all[cell]
            name, what = f"grad_x[{_idx(cell)}]", "grad_y[o] * w[t]"
            terms = [(gy[f.output], wv[f.cells[0][1]]) for f in frames]
        else:
            if any(not 0 <= c < kk for c, kk in zip(cell, k)):
                raise ValueError(f"backward weight {cell} is outside kernel_size={k}")
            mode = "weight_grad"
            frames = weight_grad_frames(axes, cell)
            grad = gw_all[cell]
            name, what = f"grad_w[{_idx(cell)}]", "x[cell] * grad_y[o]"
            cv = Drawing(op, spec, size, outsz, axes, [], "", "", x=xv).canvas_values
            terms = [(cv[f.cells[0][0]], gy[f.output]) for f in frames]
        total = 0.0
        for f, (a, b) in zip(frames, terms):
            total += a * b
            f.caption = (f"{name} += {what} = {_num(a)}*{_num(b)}  ->  {_num(total)}"
                         f"    (term {len(f.done) + 1}/{len(frames)})")
        if frames:
            frames[-1].caption += f"; convolab.vjp gives {_num(grad)}"
        else:
            frames = [Frame(None, [], [], caption=f"{name} = 0: no term reaches it")]
        if not np.isclose(total, grad):  # the picture must agree with the library
            raise AssertionError(f"drawn sum {total} != convolab.vjp {grad}")
        subtitle = (subtitle + "\n" if subtitle else "") + (
            f"backward: the terms of {name} (red); grad_y: random integers")

    d = Drawing(op, spec, size, outsz, axes, frames, title, subtitle, mode,
                xv if (values or x is not None or backward is not None) else None,
                wv, yv, gy, grad, notes)
    if out:
        d.save(out, duration_ms, dpi)
    if sheet:
        d.contact_sheet(sheet, dpi=dpi)
    return d


def _num(v) -> str:
    v = float(v)
    return str(int(v)) if v == int(v) else f"{v:.3g}"


def _idx(cell) -> str:
    return ", ".join(map(str, cell))


def _pads(spec: ConvSpec) -> str:
    if all(lo == hi for lo, hi in spec.padding):
        return _dims([lo for lo, _ in spec.padding])
    return " ".join(f"({lo},{hi})" for lo, hi in spec.padding)


def _parse_backward(backward: Any, rank: int) -> tuple[str, tuple[int, ...]]:
    if isinstance(backward, str):
        kind, sep, rest = backward.partition(":")
        if not sep:
            raise ValueError(f"backward={backward!r} must be 'input:i,j' or 'weight:a,b'")
    else:
        kind, rest = backward
    if kind not in ("input", "weight"):
        raise ValueError(f"backward={backward!r}: the kind must be 'input' or 'weight'")
    return kind, _parse_cell(rest, rank, "backward")


def _call_args(op, spec):
    pad = [list(p) for p in spec.padding]
    kw = dict(stride=spec.stride, padding=pad, dilation=spec.dilation)
    if op.startswith("conv_transpose"):
        kw["output_padding"] = spec.output_padding
    return kw


def _fn(op):
    from ..ops import conv as C

    return getattr(C, op)


# Pictures are tiny: the numbers come from the reference algorithm (``direct``), the one
# every fast path is tested against.
def _run(op, spec, x, w) -> np.ndarray:
    from ..options import options

    with options(algorithm="direct"):
        return _fn(op)(x[None, None], w[None, None], **_call_args(op, spec))[0, 0]


def _grads(op, spec, x, w, gy):
    from ..autodiff import vjp
    from ..options import options

    with options(algorithm="direct"):
        y, pb = vjp(_fn(op), x[None, None], w[None, None], **_call_args(op, spec))
        gx, gw = pb(gy[None, None])[:2]
    return gx[0, 0], gw[0, 0]


# ---------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convolab draw",
        description="Animate a 1-D/2-D convolution or transposed convolution in the style of "
                    "Dumoulin & Visin's guide (GIF, optional PNG contact sheet).")
    p.add_argument("op", nargs="?", default=None, choices=list(_OPS))
    p.add_argument("--preset", choices=list(PRESETS), help="one of the guide's figures")
    p.add_argument("--list-presets", action="store_true")
    # geometry defaults are filled in by main (None here: a --preset must not meet them)
    p.add_argument("--input-size", default=None, help="e.g. 5 or 5x7 (default 5)")
    p.add_argument("--kernel-size", default=None, help="default 3")
    p.add_argument("--stride", default=None, help="default 1")
    p.add_argument("--padding", default=None,
                   help="int, 1x2, same|valid|causal, or per side lo:hi per dim (0:1x1:1); "
                        "default 0")
    p.add_argument("--dilation", default=None, help="default 1")
    p.add_argument("--output-padding", default=None, help="default 0")
    p.add_argument("--values", action="store_true", help="draw numbers computed by convolab")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backward", default=None, metavar="input:i,j|weight:a,b",
                   help="show the terms of one input cell's or one weight's gradient")
    p.add_argument("-o", "--out", default=None, help="output GIF")
    p.add_argument("--sheet", default=None, help="also write all frames as one PNG")
    p.add_argument("--dpi", type=int, default=72)
    p.add_argument("--duration", type=int, default=800, help="ms per frame")
    return p


_GEOMETRY = {"input_size": "5", "kernel_size": "3", "stride": "1", "padding": "0",
             "dilation": "1", "output_padding": "0"}


def _check_cli(args) -> str | None:
    """A one-line reason the command line cannot work, before any drawing."""
    if args.preset is not None:
        given = [f"--{n.replace('_', '-')}" for n in _GEOMETRY if getattr(args, n) is not None]
        if args.op is not None and args.op != PRESETS[args.preset]["op"]:
            given.insert(0, f"op {args.op}")
        if given:
            return (f"--preset {args.preset} sets the op and its geometry; drop "
                    f"{', '.join(given)} (or leave out --preset)")
    if args.duration < 0:
        return f"--duration={args.duration} must be >= 0 (milliseconds per frame)"
    if args.dpi <= 0:
        return f"--dpi={args.dpi} must be positive"
    if args.out and not args.out.lower().endswith(".gif"):
        return f"-o {args.out}: the animation is a GIF, name it *.gif (--sheet writes a PNG)"
    for path in (args.out, args.sheet):
        parent = os.path.dirname(os.path.abspath(path)) if path else None
        if parent and not os.path.isdir(parent):
            return f"cannot write {path}: folder {parent} does not exist"
    return None


def main(argv: list[str] | None = None) -> int:
    from ..explain import _parse_ints, _parse_padding

    args = _parser().parse_args(argv)
    if args.list_presets:
        for name, p in PRESETS.items():
            print(f"{name:<42} {p}")
        return 0
    if args.preset is None and args.op is None:
        print("convolab draw: give an op (conv2d, ...) or --preset NAME", file=sys.stderr)
        return 2
    if not args.out and not args.sheet:
        print("convolab draw: give -o OUT.gif and/or --sheet OUT.png", file=sys.stderr)
        return 2
    problem = _check_cli(args)
    if problem:
        print(f"convolab draw: {problem}", file=sys.stderr)
        return 2
    for name, default in _GEOMETRY.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        d = draw(args.op or "conv2d", _parse_ints(args.input_size, "input_size"),
                 _parse_ints(args.kernel_size, "kernel_size"),
                 _parse_ints(args.stride, "stride"), _parse_padding(args.padding),
                 _parse_ints(args.dilation, "dilation"),
                 _parse_ints(args.output_padding, "output_padding"), preset=args.preset,
                 values=args.values, seed=args.seed, backward=args.backward, out=args.out,
                 sheet=args.sheet, dpi=args.dpi, duration_ms=args.duration)
    except (ValueError, TypeError) as exc:
        print(f"convolab draw: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"convolab draw: cannot write {exc.filename or 'the output'}: {exc.strerror}",
              file=sys.stderr)
        return 2
    written = " and ".join(p for p in (args.out, args.sheet) if p)
    print(f"{d.title}\n{len(d.frames)} frames -> {written}")
    for n in d.notes:
        print(f"note: {n}")
    return 0
