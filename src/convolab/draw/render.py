"""Turn :class:`~convolab.draw.geometry.Frame` lists into images (matplotlib Agg + Pillow).

One figure is built once; each frame only recolours and moves its artists, so a
36-frame animation renders in about a second.  Colours follow the guide: blue
input, white dashed padding, teal output, a dark shade for the kernel footprint.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .geometry import INPUT, PAD, ZERO, Axis, Frame

BLUE = "#268bd2"
TEAL = "#2aa198"
DARK_TEAL = "#145650"
SHADE = (0.05, 0.05, 0.1, 0.55)
RED = "#dc322f"
GREY = "#93a1a1"
CELL_IN = 0.42  # inches per cell


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)  # an output can overflow to inf
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.2g}"


def _grid2(axes: tuple[Axis, ...]):
    """(rows, cols) of the canvas and of the output; a 1-D picture is one row."""
    if len(axes) == 1:
        return (1, axes[0].length), (1, axes[0].out), (1, axes[0].k)
    return ((axes[0].length, axes[1].length), (axes[0].out, axes[1].out),
            (axes[0].k, axes[1].k))


def _rc(idx: tuple[int, ...]) -> tuple[int, int]:
    return (0, idx[0]) if len(idx) == 1 else (idx[0], idx[1])


def cell_kind(kinds: list[str]) -> str:
    """The kind of a canvas cell from its kind along each axis.  Padding along any axis
    is padding (outside the zero-inserted input); otherwise a zero line along any axis
    makes an inserted zero."""
    if all(k == INPUT for k in kinds):
        return INPUT
    return PAD if PAD in kinds else ZERO


@dataclass(frozen=True)
class Layout:
    """Where the panels go, in cell units (y downwards), and the figure size in inches."""

    cx: float  # canvas (top-left corner)
    cy: float
    ox: float  # output
    oy: float
    kx: float  # kernel panel
    ky: float
    width: float  # extent of the panels
    height: float
    top_pad: float  # room for the title and subtitle
    bottom_pad: float  # room for the caption
    fig_w: float
    fig_h: float


def layout(axes: tuple[Axis, ...], title: str, subtitle: str, show_kernel: bool) -> Layout:
    """The picture's layout; needs no matplotlib (``draw`` uses it to size a drawing)."""
    (ch, cw), (oh, ow), (kh, kw) = _grid2(axes)
    if len(axes) == 1:
        cx, cy = 0.0, 2.6
        ox, oy = 0.0, 0.0
        width = max(cw, ow)
        height = cy + 1
        kx, ky = width + 1.0, cy
        if show_kernel:
            width = kx + kw
            height = cy + 1.6
    else:
        cx, cy = 0.0, 0.0
        ox, oy = cw + 1.5, (ch - oh) / 2
        width = ox + ow
        height = ch
        kx, ky = ox, oy + oh + 1.2
        if show_kernel:
            height = max(height, ky + kh + 0.6)
            width = max(width, kx + kw)
    n_title = title.count("\n") + 1
    n_sub = subtitle.count("\n") + 1 if subtitle else 0
    top_pad = 0.55 * n_title + 0.45 * n_sub + 0.9
    bottom_pad = 0.9
    longest = max(len(t) for t in (title + "\n" + subtitle).split("\n"))
    fig_w = max((width + 1.0) * CELL_IN, 4.8, longest * 0.085 + 0.4)
    fig_h = (height + top_pad + bottom_pad) * CELL_IN
    return Layout(cx, cy, ox, oy, kx, ky, width, height, top_pad, bottom_pad, fig_w, fig_h)


def render(axes: tuple[Axis, ...], frames: list[Frame], *, title: str, subtitle: str = "",
           canvas_values: np.ndarray | None = None, weight: np.ndarray | None = None,
           out_values: np.ndarray | None = None, out_label: str = "output",
           show_kernel: bool = False, kernel_label: str = "kernel w", dpi: int = 72):
    """Render every frame; returns a list of ``PIL.Image`` (RGB)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import Rectangle
    from PIL import Image

    (ch, cw), (oh, ow), (kh, kw) = _grid2(axes)
    one_d = len(axes) == 1
    lay = layout(axes, title, subtitle, show_kernel)
    cx, cy, ox, oy, kx, ky = lay.cx, lay.cy, lay.ox, lay.oy, lay.kx, lay.ky
    width, height, top_pad, bottom_pad = lay.width, lay.height, lay.top_pad, lay.bottom_pad
    n_title = title.count("\n") + 1
    fig_w, fig_h = lay.fig_w, lay.fig_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    extra_w = fig_w / CELL_IN - width
    ax.set_xlim(-extra_w / 2, width + extra_w / 2)
    ax.set_ylim(height + bottom_pad, -top_pad)
    fs = 10
    ax.text(width / 2, -top_pad + 0.15, title, ha="center", va="top", fontsize=fs + 1,
            fontweight="bold", linespacing=1.3)
    if subtitle:
        ax.text(width / 2, -top_pad + 0.25 + 0.55 * n_title, subtitle, ha="center", va="top",
                fontsize=fs - 1, color="#444444", linespacing=1.3)
    caption = ax.text(width / 2, height + 0.3, "", ha="center", va="top", fontsize=fs - 1)

    # Canvas.
    kinds = [[None] * cw for _ in range(ch)]
    for idx in itertools.product(*(range(a.length) for a in axes)):
        r, c = _rc(idx)
        kind = cell_kind([a.kinds[i] for a, i in zip(axes, idx)])
        kinds[r][c] = kind
        if kind == INPUT:
            face, edge, ls = BLUE, "#1d6fa8", "-"
        elif kind == ZERO:
            face, edge, ls = "#e8eef2", GREY, ":"
        else:
            face, edge, ls = "white", GREY, "--"
        ax.add_patch(Rectangle((cx + c + 0.04, cy + r + 0.04), 0.92, 0.92, facecolor=face,
                               edgecolor=edge, linestyle=ls, linewidth=1.0))
        if canvas_values is not None:
            v = canvas_values[idx]
            ax.text(cx + c + 0.5, cy + r + 0.45, _fmt(v), ha="center", va="center",
                    fontsize=fs, color="white" if kind == INPUT else GREY)
    # Output cells.
    out_rects, out_texts = {}, {}
    for idx in itertools.product(*(range(a.out) for a in axes)):
        r, c = _rc(idx)
        rect = Rectangle((ox + c + 0.04, oy + r + 0.04), 0.92, 0.92, facecolor="white",
                         edgecolor=TEAL, linewidth=1.0)
        ax.add_patch(rect)
        out_rects[idx] = rect
        if out_values is not None:
            out_texts[idx] = ax.text(ox + c + 0.5, oy + r + 0.45, "", ha="center",
                                     va="center", fontsize=fs, color="white")
    ax.text(ox + (ow if not one_d else max(ow, 1)) / 2, oy - 0.25, out_label, ha="center",
            va="bottom", fontsize=fs - 1, color=DARK_TEAL)
    ax.text(cx + cw / 2, cy - 0.25, "input (as the kernel sees it)", ha="center",
            va="bottom", fontsize=fs - 1, color="#1d6fa8")
    # Kernel panel.
    k_rects = {}
    if show_kernel:
        for idx in itertools.product(*(range(a.k) for a in axes)):
            r, c = _rc(idx)
            rect = Rectangle((kx + c + 0.04, ky + r + 0.04), 0.92, 0.92, facecolor="#fdf6e3",
                             edgecolor="#b58900", linewidth=1.0)
            ax.add_patch(rect)
            k_rects[idx] = rect
            if weight is not None:
                ax.text(kx + c + 0.5, ky + r + 0.45, _fmt(weight[idx]), ha="center",
                        va="center", fontsize=fs - 1)
        ax.text(kx + kw / 2, ky + kh + 0.1, kernel_label, ha="center", va="top",
                fontsize=fs - 2, color="#b58900")

    # Per-frame artists (a pool, reused).
    n_cells = max(len(f.cells) for f in frames) if frames else 0
    shades = [Rectangle((0, 0), 1, 1, facecolor=SHADE, edgecolor="black", linewidth=1.6,
                        visible=False) for _ in range(n_cells)]
    for s in shades:
        ax.add_patch(s)
    tap_texts = []
    if weight is not None:
        tap_texts = [ax.text(0, 0, "", ha="right", va="bottom", fontsize=fs - 3,
                             color="#ffe08a", visible=False) for _ in range(n_cells)]
    marks = [Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=RED, linewidth=2.6,
                       visible=False) for _ in range(2)]
    for m in marks:
        ax.add_patch(m)

    images = []
    for f in frames:
        done = set(f.done)
        for idx, rect in out_rects.items():
            if idx == f.output:
                rect.set_facecolor(DARK_TEAL)
                rect.set_linewidth(2.2)
                rect.set_edgecolor("black")
            elif idx in done:
                rect.set_facecolor(TEAL)
                rect.set_linewidth(1.0)
                rect.set_edgecolor(TEAL)
            else:
                rect.set_facecolor("white")
                rect.set_linewidth(1.0)
                rect.set_edgecolor(TEAL)
            if out_values is not None:
                shown = idx == f.output or idx in done
                out_texts[idx].set_text(_fmt(out_values[idx]) if shown else "")
        for j, s in enumerate(shades):
            if j < len(f.cells):
                r, c = _rc(f.cells[j][0])
                s.set_xy((cx + c, cy + r))
                s.set_visible(True)
                if tap_texts:
                    tap_texts[j].set_position((cx + c + 0.95, cy + r + 0.97))
                    tap_texts[j].set_text(_fmt(weight[f.cells[j][1]]))
                    tap_texts[j].set_visible(True)
            else:
                s.set_visible(False)
                if tap_texts:
                    tap_texts[j].set_visible(False)
        for m in marks:
            m.set_visible(False)
        if f.mark:
            r, c = _rc(f.mark[0])
            marks[0].set_xy((cx + c, cy + r))
            marks[0].set_visible(True)
        for idx, rect in k_rects.items():
            used = any(t == idx for _, t in f.cells)
            rect.set_facecolor("#e6c35c" if used else "#fdf6e3")
        if f.weight_mark is not None and k_rects:
            r, c = _rc(f.weight_mark)
            marks[1].set_xy((kx + c, ky + r))
            marks[1].set_visible(True)
        caption.set_text(f.caption)
        fig.canvas.draw()
        arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        images.append(Image.fromarray(arr))
    return images


def save_gif(images, path, duration_ms: int = 800) -> None:
    """Animated GIF with one shared palette (deterministic for fixed frames)."""
    from PIL import Image

    if not images:
        raise ValueError("no frames to save")
    probe = Image.new("RGB", (images[0].width * 2, images[0].height))
    probe.paste(images[0], (0, 0))
    probe.paste(images[-1], (images[0].width, 0))
    pal = probe.quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    frames = [im.quantize(palette=pal, dither=Image.Dither.NONE) for im in images]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms,
                   loop=0, optimize=True, disposal=1)


def contact_sheet(images, path, columns: int | None = None, scale: float = 1.0) -> None:
    """All frames on one PNG, row-major."""
    from PIL import Image

    if not images:
        raise ValueError("no frames to save")
    n = len(images)
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    w2, h2 = max(1, int(w * scale)), max(1, int(h * scale))
    sheet = Image.new("RGB", (cols * w2, rows * h2), "white")
    for i, im in enumerate(images):
        if scale != 1.0:
            im = im.resize((w2, h2), Image.Resampling.LANCZOS)
        sheet.paste(im, ((i % cols) * w2, (i // cols) * h2))
    sheet.save(path, optimize=True)
