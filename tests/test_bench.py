"""The benchmark's plain-NumPy im2col baseline computes the same convolution."""

from __future__ import annotations

import numpy as np
import pytest

from convolab.bench import Case, _fn, _naive_im2col


@pytest.mark.parametrize(
    "case",
    [
        Case("1-D dilated", (2, 4, 30), (6, 4, 3), dict(padding=4, dilation=4)),
        Case("2-D stride 2", (2, 3, 11, 9), (5, 3, 3, 3), dict(stride=2, padding=1)),
        Case("grouped", (2, 6, 8, 8), (9, 2, 3, 3), dict(padding=1, groups=3)),
        Case("depthwise", (2, 4, 7, 7), (4, 1, 3, 3), dict(padding=1, groups=4)),
        Case("transposed", (2, 4, 5, 6), (4, 3, 4, 4), dict(stride=2, padding=1),
             transposed=True),
        Case("transposed, grouped, output_padding", (2, 4, 5, 6), (4, 3, 3, 2),
             dict(stride=(2, 3), padding=(2, 0), output_padding=(1, 2), dilation=(1, 2),
                  groups=2), transposed=True),
        Case("conv3d", (1, 2, 5, 6, 4), (3, 2, 3, 3, 3), dict(padding=1)),
    ],
    ids=lambda c: c.name,
)
def test_naive_im2col_baseline_matches_the_library(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.x)
    w = rng.standard_normal(case.w)
    kw = dict(case.kw)
    y = _fn(case)(x, w, None, **kw)
    z = _naive_im2col(case, x, w)()
    assert z.shape == y.shape
    np.testing.assert_allclose(z, y, rtol=1e-10, atol=1e-10)


# --- the command line and the written tables (tiny cases; never asserts times) ---

import csv  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

from convolab import bench  # noqa: E402


def _no_peak(*a, **k):
    raise AssertionError("the GEMM peak was measured before the arguments were checked")


@pytest.mark.parametrize("quick", [False, True])
def test_case_names_describe_the_shapes_that_run(quick):
    for c in bench.suite(quick):
        n = re.search(r"\bN(\d+)\b", c.name)
        ch = re.search(r"\bC(\d+)\b", c.name)
        assert n and int(n.group(1)) == c.x[0], (c.name, c.x)
        assert ch and int(ch.group(1)) == c.x[1], (c.name, c.x)
    if not quick:  # the names benchmarks/RESULTS.md and bench.csv refer to
        assert "conv2d 3x3 N16 C64 56x56 K64" in [c.name for c in bench.suite()]
    else:
        assert "conv2d 3x3 N4 C64 56x56 K64" in [c.name for c in bench.suite(True)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e10", "x"])
def test_bad_sleep_is_refused_before_anything_runs(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "gemm_peak", _no_peak)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        bench.main(["--quick", "--only", "1x1", f"--sleep={value}", "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--sleep" in err and ("finite" in err or "not a number" in err), err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--only", "zzz"], "matches no case"),
        (["--only", ""], "empty"),
        (["--only", "  "], "empty"),
        (["--quick", "--only", "N16"], "full suite"),  # quick names carry the quick batch
    ],
)
def test_nothing_to_do_is_an_error_that_creates_nothing(argv, words, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setattr(bench, "gemm_peak", _no_peak)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        bench.main(argv + ["--out", str(out)])
    assert info.value.code == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "error: --only" in cap.err and words in cap.err
    assert not out.exists()


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_summary_without_torch_has_no_inf_or_nan():
    rows = [{"dtype": "float32", "speedup vs numpy im2col fwd": 3.0},
            {"dtype": "float64", "speedup vs numpy im2col fwd": 2.0}]
    s = bench.summary(rows)
    assert s["min ratio fwd (f32)"] is None and s["geomean ratio fwd+bwd (f32)"] is None
    assert s["min speedup vs numpy im2col fwd"] == 2.0
    json.dumps(s, allow_nan=False)
    assert all(v is None for v in bench.summary([]).values())


def test_tables_without_torch_and_with_a_float64_row(tmp_path, monkeypatch, capsys):
    """A run without PyTorch writes strict JSON (null), n/a in Markdown and CSV, and
    measures float64 rows against the dgemm peak, which the Markdown names."""
    cases = [Case("tiny conv1d N2 C3 L16 K4", (2, 3, 16), (4, 3, 3), dict(padding=1)),
             Case("tiny f64 conv2d s2 N1 C2 6x6 K3", (1, 2, 6, 6), (3, 2, 3, 3),
                  dict(stride=2), dtype="float64")]  # stride 2: no SciPy contender
    peaks = {"float32": 1e12, "float64": 4e11}
    monkeypatch.setattr(bench, "suite", lambda quick=False: [Case(**vars(c)) for c in cases])
    monkeypatch.setattr(bench, "gemm_peak", lambda dtype="float32", *a, **k: peaks[dtype])
    monkeypatch.setattr(bench, "_torch", lambda *a: (None, None))
    assert bench.main(["--reps", "1", "--sleep", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()

    data = _strict_json((tmp_path / "bench.json").read_text())
    assert data["summary"]["min ratio fwd (f32)"] is None
    assert data["meta"]["dgemm GFLOP/s"] == pytest.approx(400)
    f32, f64 = data["rows"]
    assert (f32["peak"], f64["peak"]) == ("sgemm", "dgemm")
    for r, p in ((f32, peaks["float32"]), (f64, peaks["float64"])):
        assert r["peak frac fwd"] == pytest.approx(r["gflops fwd"] * 1e9 / p)
        assert r["peak frac fwd+bwd"] == pytest.approx(r["gflops fwd+bwd"] * 1e9 / p)

    md = (tmp_path / "bench.md").read_text()
    assert "dgemm peak" in md and "% of dgemm)" in md
    assert "nan" not in md.lower().replace("n/a", "") and "inf" not in md.lower()
    f64_line = next(line for line in md.splitlines() if line.startswith("| tiny f64"))
    assert "n/a" in f64_line and "of dgemm" in f64_line
    assert "- min ratio fwd (f32): n/a" in md

    with open(tmp_path / "bench.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == [c.name for c in cases]
    assert "ratio fwd" not in table[0]  # no PyTorch in any row: no such column
    assert table[0]["scipy fwd ms"] != "n/a" and table[1]["scipy fwd ms"] == "n/a"
    assert not any(v.lower() in ("nan", "inf", "") for r in table for v in r.values())


def test_quick_suite_without_float64_measures_no_dgemm(tmp_path, monkeypatch, capsys):
    asked = []

    def peak(dtype="float32", *a, **k):
        asked.append(dtype)
        return 1e12

    monkeypatch.setattr(bench, "gemm_peak", peak)
    monkeypatch.setattr(bench, "suite", lambda quick=False: [
        Case("tiny N1 C2 L8 K2", (1, 2, 8), (2, 2, 3))])
    assert bench.main(["--reps", "1", "--sleep", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert asked == ["float32"]
    md = (tmp_path / "bench.md").read_text()
    assert "dgemm" not in md and "sgemm (float32) peak" in md


def test_survey_draws_layers_in_its_flop_range():
    import convolab as cl
    from convolab import survey

    rng = np.random.default_rng(0)
    layers = [survey.draw(rng) for _ in range(200)]
    assert all(2e6 <= layer.flops <= 1.5e9 for layer in layers)
    assert {layer.rank for layer in layers} == {1, 2, 3}
    assert {layer.kind for layer in layers} == {"dense", "grouped", "depthwise"}
    assert any(layer.transposed for layer in layers)
    for layer in layers[:40]:  # the FLOPs are the direct convolution's
        cl_op = "conv_transpose" if layer.transposed else "conv"
        e = cl.explain(
            f"{cl_op}{layer.rank}d", (layer.batch, layer.in_channels) + (layer.size,) *
            layer.rank, out_channels=layer.out_channels, kernel_size=layer.kernel,
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
            groups=layer.groups)
        assert e.flops["forward"] == layer.flops, layer.name


def test_survey_writes_its_table_and_refuses_bad_arguments(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from convolab import survey

    tiny = survey.Layer(2, 1, 2, 4, 1, 3, 1, 1, 1, 6, False, "dense")
    monkeypatch.setattr(survey, "draw", lambda rng: tiny)
    assert bench.main(["--survey", "2", "--reps", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "survey.json").read_text())
    assert len(doc["rows"]) == 2 and doc["summary"]["layers"] == 2
    assert doc["rows"][0]["ratio_fwd"] > 0 and doc["rows"][0]["flops"] == tiny.flops
    md = (tmp_path / "survey.md").read_text()
    assert "geometric mean" in md and tiny.name in md
    for argv, words in ((["--survey", "0"], "at least 1"),
                        (["--survey", "2", "--quick"], "neither --quick nor --only"),
                        (["--seed", "3"], "--seed draws the layers of --survey")):
        out = tmp_path / "none"
        with pytest.raises(SystemExit):
            bench.main(argv + ["--out", str(out)])
        assert words in capsys.readouterr().err and not out.exists()
