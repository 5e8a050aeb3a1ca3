"""convolab.draw: the frames show exactly what the convolution computes."""

import importlib
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convolab as cl
from convolab.options import options

dr = importlib.import_module("convolab.draw")

# The guide's table (vdumoulin/conv_arithmetic, bin/generate_makefile):
# name -> (input size, output size) of the direct convolution; plus the dilation figure.
GUIDE = {
    "no_padding_no_strides": (4, 2), "arbitrary_padding_no_strides": (5, 6),
    "same_padding_no_strides": (5, 5), "full_padding_no_strides": (5, 7),
    "no_padding_strides": (5, 2), "padding_strides": (5, 3), "padding_strides_odd": (6, 3),
    "dilation": (7, 3),
}


def test_every_guide_figure_has_a_preset():
    names = set(GUIDE) | {n + "_transposed" for n in GUIDE}
    assert names == set(dr.PRESETS)


@pytest.mark.parametrize("name", sorted(dr.PRESETS))
def test_preset_grid_sizes_and_frame_counts(name):
    d = dr.draw(preset=name)
    base = name.removesuffix("_transposed")
    n_in, n_out = GUIDE[base]
    p = dr.PRESETS[name]
    k_eff = p["dilation"] * (p["kernel_size"] - 1) + 1
    if name.endswith("_transposed"):  # the guide swaps the sizes
        n_in, n_out = n_out, n_in
        canvas = n_out + k_eff - 1  # guide: total_input_size = output_size + k - 1
    else:
        canvas = n_in + 2 * p["padding"]
    assert d.input_size == (n_in, n_in) and d.output_size == (n_out, n_out)
    assert tuple(a.length for a in d.axes) == (canvas, canvas)
    assert len(d.frames) == n_out * n_out  # one frame per output cell, as the guide
    assert [f.output for f in d.frames] == list(itertools.product(range(n_out), repeat=2))
    k = p["kernel_size"]
    assert all(len(f.cells) == k * k for f in d.frames)
    # the output size is the library's
    y = _run(d, np.ones(d.input_size), np.ones((k, k)))
    assert y.shape == d.output_size


def _run(d, x, w):
    fn = getattr(cl, d.op)
    kw = dict(stride=d.spec.stride, padding=[list(p) for p in d.spec.padding],
              dilation=d.spec.dilation)
    if d.spec.transposed:
        kw["output_padding"] = d.spec.output_padding
    with options(algorithm="direct"):
        return fn(x[None, None], w[None, None], **kw)[0, 0]


def _check_against_unfold(d):
    """Every highlighted (canvas cell, weight tap) is a term the convolution really sums."""
    spec, axes = d.spec, d.axes
    k = spec.kernel_size
    pads = [list(p) for p in spec.padding]
    if not spec.transposed:
        # index-valued input: unfold[tap, o] = 1 + flat input index read, 0 on padding
        idx = (np.arange(math.prod(d.input_size), dtype=float) + 1).reshape(d.input_size)
        cols = cl.unfold(idx[None, None], k, spec.dilation, pads, spec.stride)[0]
        cols = cols.reshape(k + d.output_size)
        for f in d.frames:
            for cell, tap in f.cells:
                inp = tuple(a.index[c] for a, c in zip(axes, cell))
                want = cols[tap + f.output]
                if all(i >= 0 for i in inp):
                    assert want == 1 + np.ravel_multi_index(inp, d.input_size)
                else:
                    assert want == 0
    else:
        # x_i feeds y_o through tap t  <=>  the forward conv (of which this is the transpose)
        # reads y_o at tap t for its output i: unfold an index-valued *output*.
        idx = (np.arange(math.prod(d.output_size), dtype=float) + 1).reshape(d.output_size)
        L = spec.conv_out_shape(d.output_size)
        cols = cl.unfold(idx[None, None], k, spec.dilation, pads, spec.stride)[0]
        cols = cols.reshape(k + L)[(Ellipsis,) + tuple(slice(0, n) for n in d.input_size)]
        drawn = set()
        for f in d.frames:
            for cell, tap in f.cells:
                inp = tuple(a.index[c] for a, c in zip(axes, cell))
                if all(i >= 0 for i in inp):
                    assert cols[tap + inp] == 1 + np.ravel_multi_index(f.output, d.output_size)
                    drawn.add(tap + inp)
        assert drawn == {tuple(t) for t in np.argwhere(cols > 0)}  # and none is missing


@pytest.mark.parametrize("name", sorted(dr.PRESETS))
def test_preset_highlights_match_unfold(name):
    _check_against_unfold(dr.draw(preset=name))


@st.composite
def draw_configs(draw):
    transposed = draw(st.booleans())
    rank = draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    s = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    d = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    pad = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(rank))
    op = tuple(draw(st.integers(0, max(a, b) - 1)) for a, b in zip(s, d)) if transposed else 0
    eff = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    n = tuple(draw(st.integers(max(1, e - 2), e + 4)) for e in eff)
    op_name = ("conv_transpose" if transposed else "conv") + f"{rank}d"
    return op_name, n, k, s, pad, d, op


def _try_draw(*args, **kw):
    try:
        return dr.draw(*args, **kw)
    except ValueError as exc:  # the kernel does not fit, or the drawing is too large
        assert "must be positive" in str(exc) or "draw's limit" in str(exc)
        return None


@settings(max_examples=30, deadline=None)
@given(draw_configs())
def test_highlights_match_unfold_and_values_match_the_op(cfg):
    op, n, k, s, pad, d, opad = cfg
    dd = _try_draw(op, n, k, s, pad, d, opad, values=True, seed=1)
    if dd is None:
        return
    assert len(dd.frames) == math.prod(dd.output_size)
    _check_against_unfold(dd)
    # the numbers drawn in a frame sum to the output convolab computes
    cv = dd.canvas_values
    for f in dd.frames:
        total = sum(cv[c] * dd.weight[t] for c, t in f.cells)
        assert np.isclose(total, dd.y[f.output])


@settings(max_examples=25, deadline=None)
@given(draw_configs(), st.integers(0, 10**6), st.booleans())
def test_backward_terms_sum_to_vjp(cfg, pick, of_input):
    op, n, k, s, pad, d, opad = cfg
    if of_input:
        cell = np.unravel_index(pick % math.prod(n), n)
        kind = "input"
    else:
        cell = np.unravel_index(pick % math.prod(k), k)
        kind = "weight"
    # draw() itself raises if its drawn sum differs from convolab.vjp
    dd = _try_draw(op, n, k, s, pad, d, opad, backward=(kind, tuple(int(c) for c in cell)))
    if dd is None:
        return
    assert dd.mode == ("input_grad" if of_input else "weight_grad")
    if kind == "weight":
        assert len(dd.frames) == math.prod(dd.output_size)


def test_backward_input_frames_name_the_terms():
    d = dr.draw("conv2d", 5, 3, 2, 1, backward="input:1,1")
    # padded index 2 is read by (o=0, t=2) and (o=1, t=0) in each dimension
    assert sorted(f.output for f in d.frames) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(f.mark == [(2, 2)] for f in d.frames)
    assert "convolab.vjp gives" in d.frames[-1].caption


def test_special_paddings_and_errors():
    same = dr.draw("conv1d", 6, 4, 1, "same")
    assert same.spec.padding == ((1, 2),) and same.output_size == (6,)
    causal = dr.draw("conv1d", 6, 3, 1, "causal", dilation=2)
    assert causal.spec.padding == ((4, 0),)
    with pytest.raises(ValueError, match="must be positive"):
        dr.draw("conv2d", 2, 5)
    with pytest.raises(ValueError, match="preset"):
        dr.draw(preset="nope")
    with pytest.raises(ValueError, match="1-D and 2-D"):
        dr.draw("conv3d", 4, 3)
    with pytest.raises(ValueError, match="outside"):
        dr.draw("conv1d", 4, 3, backward="input:9")


def test_gif_and_sheet_are_written_and_deterministic(tmp_path):
    from PIL import Image

    a, b, sheet = tmp_path / "a.gif", tmp_path / "b.gif", tmp_path / "s.png"
    dr.draw(preset="no_padding_no_strides", values=True, out=str(a), sheet=str(sheet))
    dr.draw(preset="no_padding_no_strides", values=True, out=str(b))
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as im:
        assert im.n_frames == 4
    with Image.open(sheet) as im:
        assert im.size[0] > 0


def test_cli(tmp_path, capsys):
    out = tmp_path / "t.gif"
    assert dr.main(["conv_transpose1d", "--input-size", "3", "--kernel-size", "3",
                    "--stride", "2", "--padding", "1", "--output-padding", "1", "-o",
                    str(out)]) == 0
    assert out.exists() and "6 frames" in capsys.readouterr().out
    assert dr.main(["--list-presets"]) == 0
    assert "padding_strides_odd_transposed" in capsys.readouterr().out
    assert dr.main(["conv2d", "--input-size", "2", "--kernel-size", "5", "-o",
                    str(out)]) == 2
    assert dr.main(["--preset", "dilation"]) == 2  # no output named


def test_too_large_drawings_are_refused_before_drawing(tmp_path):
    out = tmp_path / "big.gif"
    with pytest.raises(ValueError, match=r"66x66 cells, more than draw's limit of 40"):
        dr.draw("conv2d", 64, 3, 1, 1, out=str(out))  # 4096 frames of 24 MiB each
    with pytest.raises(ValueError, match=r"784 frames .* limit of 256"):
        dr.draw("conv2d", 30, 3, out=str(out))
    with pytest.raises(ValueError, match=r"GiB of memory.*lower dpi"):
        dr.draw(preset="padding_strides", out=str(out), dpi=5000)
    assert not out.exists()
    assert dr.main(["conv2d", "--input-size", "64", "-o", str(out)]) == 2
    # the guide's largest figure is well inside the limits
    dr.draw(preset="full_padding_no_strides", values=True).check_size(72)


def test_padding_is_drawn_as_padding_next_to_inserted_zeros():
    from convolab.draw.geometry import INPUT, PAD, ZERO
    from convolab.draw.render import cell_kind

    d = dr.draw(preset="padding_strides_odd_transposed")
    rows, cols = (a.kinds for a in d.axes)
    assert PAD in rows and ZERO in rows  # the case: padding along one axis, zero along the other
    for r, c in itertools.product(rows, cols):
        kind = cell_kind([r, c])
        if PAD in (r, c):
            assert kind == PAD
        else:
            assert kind == (INPUT if r == c == INPUT else ZERO)


def test_weight_alone_draws_the_input_its_outputs_come_from():
    d = dr.draw("conv1d", 4, 2, weight=[1.0, -1.0])
    assert d.x is not None and list(d.weight) == [1.0, -1.0]
    assert np.allclose(d.y, d.x[:-1] - d.x[1:])


def test_preset_with_an_explicit_op_or_geometry_is_refused():
    with pytest.raises(ValueError, match=r"sets the op and its geometry; drop op='conv1d', "
                                         r"input_size=9"):
        dr.draw("conv1d", input_size=9, preset="padding_strides")
    with pytest.raises(ValueError, match=r"drop stride=1 \(or leave out preset\)"):
        dr.draw(preset="dilation", stride=1)
    assert dr.draw("conv2d", preset="dilation").op == "conv2d"  # the preset's own op is fine


def test_outputs_and_duration_are_checked_before_anything_is_written(tmp_path):
    gif, png = tmp_path / "a.gif", tmp_path / "a.png"
    for kw, msg in [
        (dict(out=str(png)), r"out=.* must end in \.gif"),
        (dict(out=str(gif), sheet=str(tmp_path / "s.txt")), r"sheet=.* must end in \.png"),
        (dict(out=str(gif), sheet=str(tmp_path / "no" / "s.png")), "does not exist"),
        (dict(out=str(tmp_path)), r"must end in \.gif"),
        (dict(out=str(gif), duration_ms=-5), r"duration_ms=-5 must be >= 0"),
        (dict(out=str(gif), dpi=0), r"dpi=0 must be positive"),
    ]:
        with pytest.raises(ValueError, match=msg):
            dr.draw("conv1d", 3, 2, **kw)
    (tmp_path / "d.gif").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        dr.draw("conv1d", 3, 2, out=str(tmp_path / "d.gif"))
    with pytest.raises(TypeError, match="duration_ms"):
        dr.draw("conv1d", 3, 2, duration_ms=0.5)
    assert not gif.exists() and not png.exists()
    assert dr.main(["conv1d", "--input-size", "3", "-o", str(gif), "--sheet",
                    str(tmp_path / "s.txt")]) == 2
    assert not gif.exists()


def test_backward_caption_states_one_total():
    # terms that cancel: the running sum is -5.55e-17, convolab.vjp gives 0
    x = [-0.42, 0.3, 0.11, 0.57, -0.44, 1.14]
    d = dr.draw("conv1d", 6, 3, 1, 1, x=x, weight=[-2.28, 0.35, 0.09], backward="weight:0")
    last = d.frames[-1].caption
    shown = last.split("->")[1].split("(")[0].strip()
    assert shown == last.rsplit(" ", 1)[1] == "0"
    assert not any("e-1" in f.caption for f in d.frames)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(ValueError, match="x has NaN or inf"):
        dr.draw("conv1d", 3, 2, x=[0.0, bad, 1.0])
    with pytest.raises(ValueError, match="weight has NaN or inf"):
        dr.draw("conv1d", 3, 2, weight=[bad, 1.0], backward="weight:0")
    with pytest.raises(TypeError, match="x must hold real numbers"):
        dr.draw("conv1d", 3, 2, x=["a", "b", "c"])


def test_a_cell_no_term_reaches_is_still_marked():
    d = dr.draw("conv1d", 5, 1, stride=2, backward="input:1")  # stride 2 skips x[1]
    (f,) = d.frames
    assert f.mark == [(1,)] and "no term reaches it" in f.caption
    # a transposed conv whose padding crops x[0] off the canvas says so
    d = dr.draw("conv_transpose1d", 4, 2, stride=2, padding=3, backward="input:0")
    assert d.axes[0].canvas_of(0) is None
    (f,) = d.frames
    assert f.mark == [] and "cropped off the canvas" in f.caption


def test_bad_seed_and_backward_name_the_argument():
    with pytest.raises(ValueError, match=r"seed=-1 must be >= 0"):
        dr.draw("conv1d", 3, 2, values=True, seed=-1)
    with pytest.raises(ValueError, match=r"backward=\('input',\) must be 'input:i,j'"):
        dr.draw("conv1d", 3, 2, backward=("input",))
    with pytest.raises(TypeError, match=r"backward=5 must be 'input:i,j'"):
        dr.draw("conv1d", 3, 2, backward=5)
    with pytest.raises(TypeError, match="the cell must be ints"):
        dr.draw("conv1d", 3, 2, backward=("input", 1.5))
    assert dr.main(["conv1d", "--seed", "-1", "--values", "-o", "never.gif"]) == 2


def test_drawing_save_and_sheet_check_their_paths_and_keep_an_old_file(tmp_path, monkeypatch):
    """Drawing.save / contact_sheet check the path as draw(out=, sheet=) does (a .png
    given to save failed inside PIL, a .gif given to contact_sheet was written as a GIF),
    and a save that fails leaves an existing file whole (it was cut to 189 bytes)."""
    from convolab.draw import render

    d = dr.draw("conv1d", 3, 2)
    for call, path, msg in [
        (d.save, tmp_path / "x.png", r"path=.* must end in \.gif"),
        (d.save, tmp_path / "x.jpg", r"path=.* must end in \.gif"),
        (d.save, "", "name a .gif file"),
        (d.contact_sheet, tmp_path / "x.gif", r"path=.* must end in \.png"),
        (d.contact_sheet, tmp_path / "no" / "x.png", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call(str(path))
    for kw, msg in [(dict(columns=0), "columns=0 must be positive"),
                    (dict(scale=float("nan")), "scale=nan must be a positive number"),
                    (dict(dpi=0), "dpi=0 must be positive")]:
        with pytest.raises(ValueError, match=msg):
            d.contact_sheet(str(tmp_path / "s.png"), **kw)
    assert list(tmp_path.iterdir()) == []

    gif = tmp_path / "old.gif"
    d.save(str(gif))
    old = gif.read_bytes()

    def broken(images, path, duration_ms=800):
        with open(path, "wb") as f:
            f.write(b"GIF89a")  # a start, then the encoder fails
        raise OSError("disk full")

    monkeypatch.setattr(render, "save_gif", broken)
    with pytest.raises(OSError, match="disk full"):
        d.save(str(gif))
    assert gif.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["old.gif"]  # no partial file left


def test_drawing_save_writes_through_a_link_and_keeps_the_file_mode(tmp_path):
    import os
    import stat

    d = dr.draw("conv1d", 3, 2)
    real = tmp_path / "real.gif"
    d.save(str(real))
    os.chmod(real, 0o640)
    link = tmp_path / "link.gif"
    link.symlink_to(real)
    before = real.read_bytes()
    dr.draw("conv1d", 4, 2).save(str(link))
    assert link.is_symlink() and real.read_bytes() != before
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640


@pytest.mark.parametrize("args, kw", [
    ((), dict(input_size=2**31)), ((), dict(input_size=2**63)), ((), dict(input_size=10**30)),
    (("conv1d",), dict(padding=2**40)), (("conv_transpose2d",), dict(stride=2**40)),
    (("conv_transpose1d",), dict(kernel_size=2**40)),
])
def test_huge_sizes_are_refused_before_any_geometry_is_built(monkeypatch, args, kw):
    """input_size=2**31 built lists of 2**31 canvas cells (OOM-killed, or MemoryError
    in geometry.make_axis) before it checked MAX_CANVAS; 2**63 gave OverflowError."""
    def built(*a, **k):
        raise AssertionError("the geometry was built")

    monkeypatch.setattr(dr, "axes_of", built)
    with pytest.raises(ValueError, match=f"limit of {dr.MAX_CANVAS} per side"):
        dr.draw(*args, **kw)


@pytest.mark.parametrize("bad", [{}, [], np.array(["dilation"]), 3, b"dilation"])
def test_preset_must_be_a_name(bad):
    with pytest.raises(TypeError, match=r"preset=.* must be the name of a preset"):
        dr.draw(preset=bad)


def test_values_must_be_true_or_false():
    torch = pytest.importorskip("torch")
    for bad in (torch.ones(3), np.ones(3), np.ones(1), "no", 2, None):
        with pytest.raises(TypeError, match=r"values=.* must be True or False.*x= and weight="):
            dr.draw(values=bad)
    for ok in (True, 1, np.bool_(True)):
        assert dr.draw(values=ok).y is not None
    for ok in (False, 0):
        assert dr.draw(values=ok).y is None


def test_docstring_names_where_its_constants_live():
    """``convolab.draw`` is the function (it shadows the module), so the docstring says
    where PRESETS and the limits are, and that way works."""
    doc = cl.draw.__doc__
    assert "from convolab.draw import" in doc and ":data:" not in doc
    from convolab.draw import MAX_BYTES, MAX_CANVAS, MAX_FRAMES, PRESETS, Drawing  # noqa: F401

    for name in ("PRESETS", "MAX_FRAMES", "MAX_CANVAS", "MAX_BYTES", "Drawing"):
        assert name in doc
    doc = cl.explain.__doc__
    assert "from convolab.explain import" in doc
    from convolab.explain import MAX_ELEMENTS, LayerExplanation  # noqa: F401


@pytest.mark.parametrize("op", ["conv1d", "conv_transpose1d", "conv2d"])
def test_random_values_never_draw_an_all_zero_kernel_or_input(op):
    # seed 0 drew the kernel [0, 0, 0] for every 3-tap 1-D drawing: every output 0
    for seed in range(12):
        for k in (1, 2, 3):
            for n in (1, 2, 3):
                d = dr.draw(op, n, k, values=True, seed=seed) if n >= k or op.startswith(
                    "conv_transpose") else None
                if d is not None:
                    assert d.weight.any() and d.x.any(), (op, n, k, seed)
    assert dr.draw("conv1d", values=True).y.any()
