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
import contextlib
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._limits import short_repr
from ..spec import ConvSpec, _check_int, as_tuple, make_spec
from .geometry import (Axis, Frame, axes_of, forward_frames, input_grad_frames,
                       weight_grad_frames)

__all__ = ["PRESETS", "Drawing", "draw", "main"]

# Size limits.  Every frame is held in memory (RGB) until the GIF and the sheet are
# written, and each costs a full matplotlib draw, so a drawing past these is refused
# before anything is drawn.  The guide's figures need at most 49 frames on a 9x9 canvas.
MAX_FRAMES = 256  # e.g. a 16x16 output
MAX_CANVAS = 40  # cells per side of the (padded) input
MAX_BYTES = 2**30  # all frames together, 3 bytes a pixel

# Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", figure files
# (bin/generate_makefile of github.com/vdumoulin/conv_arithmetic): input size, kernel,
# stride, padding (and dilation).  A transposed preset takes the direct one's output
# as its input and gives back the direct one's input size (output_padding where the
# direct convolution rounded down, as the guide's padding_strides_odd_transposed).
# The guide has no figure for dilation_transposed: it is the same rule applied to
# dilation, an extra.
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

    @property
    def _show_kernel(self) -> bool:
        return self.x is not None or self.mode != "forward"

    def check_size(self, dpi: int = 72) -> None:
        """Raise ValueError if rendering at ``dpi`` would pass :data:`MAX_BYTES`."""
        from .render import layout  # no matplotlib needed

        lay = layout(self.axes, self.title, self.subtitle, self._show_kernel)
        w, h = int(lay.fig_w * dpi), int(lay.fig_h * dpi)
        need = 3 * w * h * len(self.frames)
        if need > MAX_BYTES:
            raise ValueError(
                f"{len(self.frames)} frames of {w}x{h} pixels at dpi={dpi} need "
                f"{need / 2**30:.2f} GiB of memory, more than draw's limit of "
                f"{MAX_BYTES / 2**30:.0f} GiB; lower dpi or draw a smaller input_size")

    def render(self, dpi: int = 72) -> list:
        """PIL images, one per frame (cached)."""
        if self._images is None:
            from .render import render

            self.check_size(dpi)
            show_vals = self.x is not None
            out_vals = self.grad_output if self.mode != "forward" else self.y
            self._images = render(
                self.axes, self.frames, title=self.title, subtitle=self.subtitle,
                canvas_values=self.canvas_values if show_vals else None,
                weight=self.weight if show_vals else None,
                out_values=out_vals if show_vals else None,
                out_label="grad_output" if self.mode != "forward" else "output",
                show_kernel=self._show_kernel,
                kernel_label="kernel w (used flipped)" if self.spec.transposed else "kernel w",
                dpi=dpi)
        return self._images

    def save(self, path: str, duration_ms: int = 800, dpi: int = 72) -> None:
        """The animation as a GIF at ``path`` (``*.gif``, checked first; an existing file
        is replaced only once the new one is written)."""
        from .render import save_gif

        path = _required_path("path", path, ".gif", "save writes the animated GIF; "
                              "contact_sheet writes the PNG")
        if _check_int("duration_ms", duration_ms) < 0:
            raise ValueError(f"duration_ms={duration_ms} must be >= 0 (milliseconds per frame)")
        self._check_dpi(dpi)
        images = self.render(dpi)
        _write_replacing(path, lambda f: save_gif(images, f, duration_ms))

    def contact_sheet(self, path: str, columns: int | None = None, scale: float = 1.0,
                      dpi: int = 72) -> None:
        """Every frame on one PNG at ``path`` (``*.png``, checked first; an existing file
        is replaced only once the new one is written)."""
        from .render import contact_sheet

        path = _required_path("path", path, ".png", "the contact sheet is a PNG; save "
                              "writes the GIF")
        if columns is not None and _check_int("columns", columns) <= 0:
            raise ValueError(f"columns={columns} must be positive (or None for a square sheet)")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (
                math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale={scale!r} must be a positive number")
        self._check_dpi(dpi)
        images = self.render(dpi)
        _write_replacing(path, lambda f: contact_sheet(images, f, columns, scale))

    def _check_dpi(self, dpi: int) -> None:
        if _check_int("dpi", dpi) <= 0:
            raise ValueError(f"dpi={dpi} must be positive")
        self.check_size(dpi)


def _parse_cell(cell: Any, rank: int, backward: Any) -> tuple[int, ...]:
    """The cell of ``backward`` (``'1,2'``, ``(1, 2)`` or ``1``) as ``rank`` ints."""
    if isinstance(cell, str):
        try:
            vals = tuple(int(v) for v in cell.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"backward={backward!r}: the cell must be comma-separated ints"
                             ) from None
    else:
        vals = tuple(cell) if isinstance(cell, (tuple, list, np.ndarray)) else (cell,)
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)
               for v in vals):
            raise TypeError(f"backward={backward!r}: the cell must be ints")
        vals = tuple(int(v) for v in vals)
    if len(vals) != rank:
        raise ValueError(f"backward={backward!r}: the cell must have {rank} index(es), "
                         "one per spatial dim")
    return vals


_GEOMETRY = {"input_size": 5, "kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1,
             "output_padding": 0}  # the defaults when no preset is given


def draw(op: str | None = None, input_size: Any = None, kernel_size: Any = None,
         stride: Any = None, padding: Any = None, dilation: Any = None,
         output_padding: Any = None, *, preset: str | None = None, values: bool = False,
         x: Any = None, weight: Any = None, seed: int = 0, backward: Any = None,
         out: str | None = None, sheet: str | None = None, dpi: int = 72,
         duration_ms: int = 800) -> Drawing:
    """Build (and with ``out=``/``sheet=`` save) the animation of one convolution.

    op: ``conv1d``, ``conv2d`` (the default), ``conv_transpose1d`` or ``conv_transpose2d``.
    Geometry defaults: input_size 5, kernel_size 3, stride 1, padding 0, dilation 1,
    output_padding 0.  padding: anything ``convolab.conv`` accepts (int, tuple,
    per-side pairs, ``'same'``/``'valid'``/``'causal'`` for convolutions).
    preset: the name of one of ``PRESETS`` (the guide's file names, plus
    ``dilation_transposed``, which the guide does not draw); it sets op and geometry,
    so giving them too is an error.
    values: True to draw numbers (random integers from ``seed``, or ``x`` / ``weight``;
    giving either draws both); outputs are computed with ``convolab.conv``/``conv_transpose``.
    backward: ``('input', (i, j))`` / ``'input:i,j'`` -- which outputs and weights sum
    into that input cell's gradient; ``('weight', (a, b))`` / ``'weight:a,b'`` -- which
    input/output pairs sum into that weight's gradient (values from ``convolab.vjp``).
    out: GIF path (``*.gif``); sheet: PNG contact-sheet path (``*.png``); both are
    checked before anything is drawn.  A drawing with more than ``MAX_FRAMES`` (256)
    frames, a canvas wider than ``MAX_CANVAS`` (40) cells or frames that would take more
    than ``MAX_BYTES`` (1 GiB) of memory is refused, before anything is built.

    Returns a ``Drawing``.  ``PRESETS``, ``MAX_FRAMES``, ``MAX_CANVAS``, ``MAX_BYTES``
    and ``Drawing`` belong to the module ``convolab.draw`` (``from convolab.draw import
    PRESETS``): ``convolab.draw`` itself is this function.
    """
    # Arguments that need no geometry first: a bad path fails before any drawing.
    out = _check_path("out", out, ".gif", "the animation is a GIF; the contact sheet is the PNG")
    sheet = _check_path("sheet", sheet, ".png", "the contact sheet is a PNG")
    if _check_int("duration_ms", duration_ms) < 0:
        raise ValueError(f"duration_ms={duration_ms} must be >= 0 (milliseconds per frame)")
    if _check_int("dpi", dpi) <= 0:
        raise ValueError(f"dpi={dpi} must be positive")
    if _check_int("seed", seed) < 0:
        raise ValueError(f"seed={seed} must be >= 0 (it seeds numpy's random generator)")

    geometry = dict(input_size=input_size, kernel_size=kernel_size, stride=stride,
                    padding=padding, dilation=dilation, output_padding=output_padding)
    if isinstance(values, (bool, np.bool_)) or (
            isinstance(values, numbers.Integral) and values in (0, 1)):
        values = bool(values)
    else:
        raise TypeError(f"values={short_repr(values)} must be True or False (to draw numbers "
                        f"of your own, pass x= and weight=), got {type(values).__name__}")
    if preset is not None:
        if not isinstance(preset, str):
            raise TypeError(f"preset={short_repr(preset)} must be the name of a preset (a str), "
                            f"got {type(preset).__name__}; one of {list(PRESETS)}")
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {list(PRESETS)}")
        p = PRESETS[preset]
        given = [f"{n}={v!r}" for n, v in geometry.items() if v is not None]
        if op is not None and op != p["op"]:
            given.insert(0, f"op={op!r}")
        if given:
            raise ValueError(f"preset={preset!r} sets the op and its geometry; drop "
                             f"{', '.join(given)} (or leave out preset)")
        op = p["op"]
        geometry = {n: p[n] for n in geometry}
    else:
        op = "conv2d" if op is None else op
        geometry = {n: _GEOMETRY[n] if v is None else v for n, v in geometry.items()}
    input_size, kernel_size, stride, padding, dilation, output_padding = geometry.values()
    if not isinstance(op, str) or op not in _OPS:
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
    # the canvas (geometry.make_axis) by arithmetic: its cells are built only once
    # the size is known to be drawable
    canvas = tuple(o + d * (kk - 1) if transposed else lo + n + hi for n, o, kk, d, (lo, hi)
                   in zip(size, outsz, k, spec.dilation, spec.padding))
    if max(canvas) > MAX_CANVAS:
        raise ValueError(f"{op}: the canvas (the input as the kernel sees it) is "
                         f"{_dims(canvas)} cells, more than draw's limit of {MAX_CANVAS} per "
                         "side; draw a smaller input_size ("
                         + ("or stride, kernel_size or dilation)" if transposed
                            else "or less padding)"))
    one_frame_per_output = backward is None or _parse_backward(backward, rank)[0] == "weight"
    if one_frame_per_output and math.prod(outsz) > MAX_FRAMES:  # checked before the frames
        raise ValueError(f"{op}: output {_dims(outsz)} needs {math.prod(outsz)} frames "
                         f"(one per output cell), more than draw's limit of {MAX_FRAMES}; "
                         "draw a smaller input_size or "
                         + ("stride" if transposed else "use a larger stride"))
    axes = axes_of(spec, size)
    assert tuple(a.length for a in axes) == canvas

    # Numbers.
    rng = np.random.default_rng(seed)
    want_values = values or x is not None or weight is not None or backward is not None
    xv = wv = yv = None
    if want_values:
        xv = (_random_ints(rng, 4, size) if x is None
              else _real_array("x", x, size, "input_size"))
        wv = (_random_ints(rng, 3, k) if weight is None
              else _real_array("weight", weight, k, "kernel_size"))
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
        products = [a * b for a, b in terms]
        total = sum(products, 0.0)
        if not np.isclose(total, grad):  # the picture must agree with the library
            raise AssertionError(f"drawn sum {total} != convolab.vjp {grad}")
        # Rounding noise of the running sum (1e-17 where the terms cancel) is shown as 0,
        # and the last total shown is convolab.vjp's value, so the caption states one total.
        tiny = 1e-12 * sum(abs(v) for v in products)
        running = 0.0
        for n, (f, (a, b), ab) in enumerate(zip(frames, terms, products), start=1):
            running += ab
            shown = grad if n == len(frames) else running
            f.caption = (f"{name} += {what} = {_num(a)}*{_num(b)}  ->  {_num(shown, tiny)}"
                         f"    (term {n}/{len(frames)})")
        if frames:
            frames[-1].caption += f"; convolab.vjp gives {_num(grad, tiny)}"
        else:  # only an input cell can have no term: it is unread or cropped away
            on_canvas = tuple(a.canvas_of(c) for a, c in zip(axes, cell))
            if None in on_canvas:
                frames = [Frame(None, [], [], caption=f"{name} = 0: the cell is cropped off "
                                "the canvas, no term reaches it")]
            else:
                frames = [Frame(None, [], [], caption=f"{name} = 0: no term reaches it",
                                mark=[on_canvas])]
        subtitle = (subtitle + "\n" if subtitle else "") + (
            f"backward: the terms of {name} (red); grad_y: random integers")
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"{op}: {len(frames)} frames is more than draw's limit of "
                         f"{MAX_FRAMES}; draw a smaller input_size or kernel_size")

    d = Drawing(op, spec, size, outsz, axes, frames, title, subtitle, mode,
                xv, wv, yv, gy, grad, notes)
    if out or sheet:
        d.check_size(dpi)  # before drawing anything
    if out:
        d.save(out, duration_ms, dpi)
    if sheet:
        d.contact_sheet(sheet, dpi=dpi)
    return d


def _random_ints(rng: np.random.Generator, high: int, shape: tuple[int, ...]) -> np.ndarray:
    """Integers ``0..high-1`` of ``shape`` (as the guide's numerical figures), drawn again
    while all are zero: a zero kernel (seed 0 gives one for every 3-tap 1-D drawing)
    makes every output and gradient term 0, a picture that shows nothing."""
    while True:
        a = rng.integers(0, high, size=shape)
        if a.any():
            return a.astype(np.float64)


def _check_path(arg: str, path: Any, suffix: str, why: str) -> str | None:
    """``path`` if it can be written as a ``suffix`` file, else a one-line error."""
    if path is None or path == "":
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg}={path!r} must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path.lower().endswith(suffix):
        raise ValueError(f"{arg}={path!r} must end in {suffix} ({why})")
    if os.path.isdir(path):
        raise ValueError(f"{arg}={path!r} is a folder; name a {suffix} file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{arg}={path!r}: folder {parent} does not exist")
    return path


def _required_path(arg: str, path: Any, suffix: str, why: str) -> str:
    """:func:`_check_path` for a path that must be given."""
    checked = _check_path(arg, path, suffix, why)
    if checked is None:
        raise ValueError(f"{arg}={path!r}: name a {suffix} file")
    return checked


def _write_replacing(path: str, write) -> None:
    """``write(f)`` to a new file beside ``path``, then moved over it: a save that fails
    halfway (a full disk, an error while encoding) leaves an existing file as it was."""
    import shutil
    import uuid

    target = os.path.realpath(path)  # through a link: the file it names is replaced
    folder, name = os.path.split(target)
    # the file's own kind last (the writer reads it), made by the writer (the usual
    # permissions, which a mkstemp file would not have)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{os.path.splitext(name)[1]}")
    try:
        write(tmp)
        if os.path.exists(target):
            shutil.copymode(target, tmp)  # an existing file keeps its permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _real_array(arg: str, value: Any, shape: tuple[int, ...], size_arg: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` with finite entries, else a one-line error."""
    try:
        a = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise TypeError(f"{arg} must be an array of numbers (a ragged list is not)") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{arg} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.shape != shape:
        raise ValueError(f"{arg}.shape={a.shape} must equal {size_arg}={shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{arg} has NaN or inf entries; draw shows finite numbers only")
    return a


def _num(v, tiny: float = 0.0) -> str:
    """A caption number: an int if whole, else 3 significant digits; ``|v| <= tiny`` is 0."""
    v = float(v)
    if abs(v) <= tiny:
        return "0"
    if not math.isfinite(v):
        return str(v)  # 'nan', 'inf' (an output can overflow)
    return str(int(v)) if v == int(v) else f"{v:.3g}"


def _idx(cell) -> str:
    return ", ".join(map(str, cell))


def _pads(spec: ConvSpec) -> str:
    if all(lo == hi for lo, hi in spec.padding):
        return _dims([lo for lo, _ in spec.padding])
    return " ".join(f"({lo},{hi})" for lo, hi in spec.padding)


def _parse_backward(backward: Any, rank: int) -> tuple[str, tuple[int, ...]]:
    rule = "must be 'input:i,j', 'weight:a,b' or a pair (kind, cell)"
    if isinstance(backward, str):
        kind, sep, rest = backward.partition(":")
        if not sep:
            raise ValueError(f"backward={backward!r} {rule}")
    elif isinstance(backward, (tuple, list)):
        if len(backward) != 2:
            raise ValueError(f"backward={backward!r} {rule}")
        kind, rest = backward
    else:
        raise TypeError(f"backward={backward!r} {rule}, got {type(backward).__name__}")
    if kind not in ("input", "weight"):
        raise ValueError(f"backward={backward!r}: the kind must be 'input' or 'weight'")
    return kind, _parse_cell(rest, rank, backward)


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
    p.add_argument("--preset", choices=list(PRESETS),
                   help="one of the guide's figures (dilation_transposed is an extra)")
    p.add_argument("--list-presets", action="store_true")
    # geometry defaults are filled in by draw() (None here: a --preset must not meet them)
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


def _check_cli(args) -> str | None:
    """A one-line reason the command line cannot work, before any drawing (draw() checks
    the rest: paths, --duration, --dpi, --seed, before it draws)."""
    if args.preset is not None:
        given = [f"--{n.replace('_', '-')}" for n in _GEOMETRY if getattr(args, n) is not None]
        if args.op is not None and args.op != PRESETS[args.preset]["op"]:
            given.insert(0, f"op {args.op}")
        if given:
            return (f"--preset {args.preset} sets the op and its geometry; drop "
                    f"{', '.join(given)} (or leave out --preset)")
    return None


def _as_flag(message: str, args) -> str:
    """draw()'s ``duration_ms=-5 must ...`` as the command line says it: ``--duration=-5 ...``."""
    name, sep, rest = message.partition("=")
    name = {"duration_ms": "duration"}.get(name, name)
    if sep and name != "op" and name in vars(args):
        return f"--{name.replace('_', '-')}={rest}"
    return message


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
    try:
        # geometry not given stays None: draw() fills in the defaults (or the preset's)
        geometry = {}
        for name in _GEOMETRY:
            text = getattr(args, name)
            if text is None:
                geometry[name] = None
            elif name == "padding":
                geometry[name] = _parse_padding(text)
            else:
                geometry[name] = _parse_ints(text, name)
        d = draw(args.op, **geometry, preset=args.preset, values=args.values,
                 seed=args.seed, backward=args.backward, out=args.out, sheet=args.sheet,
                 dpi=args.dpi, duration_ms=args.duration)
    except (ValueError, TypeError) as exc:
        print(f"convolab draw: {_as_flag(str(exc), args)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # the limits bound a drawing; a machine may have less
        print(f"convolab draw: out of memory ({exc or 'MemoryError'})", file=sys.stderr)
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
