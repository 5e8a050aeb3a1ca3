"""The command line: dispatch, help, errors, and a one-case benchmark smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from convolab import cli


def test_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "explain", "draw", "bench"):
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_python_dash_m_convolab_runs():
    r = subprocess.run(
        [sys.executable, "-m", "convolab", "--help"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "usage: convolab" in r.stdout


def test_bench_writes_its_tables(tmp_path):
    rc = cli.main(
        ["bench", "--quick", "--reps", "1", "--sleep", "0", "--only", "1x1", "--out", str(tmp_path)]
    )
    assert rc == 0
    assert (tmp_path / "bench.md").read_text().count("|") > 10
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert rows
    assert (tmp_path / "bench.csv").exists()


def test_command_lines_fail_in_one_line(tmp_path):
    """Bad arguments and unwritable outputs: a one-line error and exit code 2, before
    any training or drawing starts."""
    from convolab.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    for argv in (
        ["demo", "--quick", "--out", str(afile)],
        ["demo", "--seed", "-1"],
        ["demo", "--lr", "nan"],
        ["demo", "--check-torch", "--epochs", "3"],
        ["bench", "--reps", "-1"],
        ["bench", "--out", str(afile / "sub")],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    for argv in (
        ["draw", "conv2d", "-o", str(tmp_path / "missing" / "x.gif")],
        ["draw", "conv2d", "--duration", "-100", "-o", str(tmp_path / "d.gif")],
        ["draw", "conv2d", "-o", str(tmp_path / "x.png")],
        ["draw", "conv1d", "--preset", "dilation", "-o", str(tmp_path / "p.gif")],
        ["explain", "conv2d", "--input", "1x0x8x8", "--kernel-size", "3"],
        ["explain", "conv2d", "--input", "1x3x8x8", "--kernel-size", "3", "--dtype", "int32"],
        ["explain", "conv2d", "--input", "1x3x8x8", "--kernel-size", "3", "--padding", "a:b"],
        ["explain", "conv2d", "--input", "1x3x8x8", "--stride", "2", "--layer", "k=3"],
    ):
        assert main(argv) == 2, argv


def test_missing_optional_package_names_the_extra(monkeypatch, capsys, tmp_path):
    from convolab.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # imported when a figure is drawn
    assert main(["draw", "conv2d", "-o", str(tmp_path / "x.gif")]) == 2
    assert "pip install 'convolab[viz]'" in capsys.readouterr().err


def test_a_command_names_its_own_extra(monkeypatch, capsys):
    """demo needs matplotlib too, but [viz] alone would still miss mnist1d: each command
    names the extra that installs all it needs."""
    import importlib

    real = importlib.import_module

    def missing(name, *a, **k):
        if name in ("convolab.demo", "convolab.draw"):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert cli.main(["demo", "--quick"]) == 2
    assert "pip install 'convolab[demo]'" in capsys.readouterr().err
    assert cli.main(["draw", "conv2d"]) == 2
    assert "pip install 'convolab[viz]'" in capsys.readouterr().err


HUGE_EXPLAIN = [
    ["conv2d", "--input", "1x3x99999999999x8", "--kernel-size", "3"],
    ["conv2d", "--input", "1x3x8x8", "--kernel-size", "3", "--padding", "2147483648"],
    ["conv_transpose2d", "--input", "1x3x8x8", "--kernel-size", "3", "--stride", "2147483648"],
    ["conv_transpose2d", "--input", "1x3x8x8", "--kernel-size", "2147483648"],
    ["conv2d", "--input", "1x3x8x8", "--kernel-size", "2147483648"],
    ["conv2d", "--input", "1x3x8x8", "--layer", "k=3,p=2147483648"],
    ["conv2d", "--input", "9" * 40 + "x3x8x8", "--kernel-size", "3"],
]


@pytest.mark.parametrize("argv", HUGE_EXPLAIN)
def test_explain_refuses_huge_sizes_at_once_in_one_line(argv, capsys):
    """These printed numpy's _ArrayMemoryError traceback or hung past 25 s."""
    import time

    t0 = time.perf_counter()
    assert cli.main(["explain", *argv]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert err.startswith("convolab explain: ") and err.count("\n") == 1, err
    assert "limit" in err or "empty" in err


def test_explain_of_a_big_real_shape_is_quick_arithmetic(capsys):
    """--input 1x3x2147483648x8 can be explained by arithmetic (192 GiB of input):
    no algorithm is chosen past MAX_CHOOSE_ELEMENTS, and the note says so."""
    import time

    t0 = time.perf_counter()
    assert cli.main(["explain", "conv2d", "--input", "1x3x2147483648x8",
                     "--kernel-size", "3", "--json"]) == 0
    assert time.perf_counter() - t0 < 5
    d = json.loads(capsys.readouterr().out)
    assert d["output_shape"] == [1, 3, 2147483646, 6]
    assert d["bytes"]["input"] == 3 * 2**31 * 8 * 4
    assert d["algorithm"]["forward"]["name"] == "unknown"
    assert any("MAX_CHOOSE_ELEMENTS" in n for n in d["notes"])


def test_memory_errors_are_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    import convolab.draw  # noqa: F401  (the module, for monkeypatch)

    explain_mod = sys.modules["convolab.explain"]
    draw_mod = sys.modules["convolab.draw"]

    def oom(*a, **k):
        raise MemoryError("Unable to allocate 1.00 TiB")

    monkeypatch.setattr(explain_mod, "explain", oom)
    monkeypatch.setattr(draw_mod, "draw", oom)
    assert cli.main(["explain", "conv2d", "--input", "1x3x8x8", "--kernel-size", "3"]) == 2
    assert cli.main(["draw", "conv2d", "-o", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["convolab explain: out of memory (Unable to allocate 1.00 TiB)",
                   "convolab draw: out of memory (Unable to allocate 1.00 TiB)"]


def test_huge_sizes_from_the_shell_exit_2_without_a_traceback(tmp_path):
    import os
    from pathlib import Path

    import convolab

    src = str(Path(convolab.__file__).resolve().parents[1])  # this checkout's convolab
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    for argv in (["explain", *HUGE_EXPLAIN[0]],
                 ["draw", "conv2d", "--input-size", "2147483648", "-o", str(tmp_path / "x.gif")]):
        r = subprocess.run([sys.executable, "-m", "convolab", *argv], capture_output=True,
                           text=True, timeout=60, env=env, check=False)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_reader_that_stops_early_gets_no_traceback():
    """`convolab draw --list-presets | head -1`: the pipe closes under the writer."""
    r = subprocess.run(
        f"{sys.executable} -m convolab draw --list-presets | head -1",
        shell=True, capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.stdout.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_python_dash_m_convolab_demo_goes_through_the_cli(monkeypatch):
    import runpy

    seen = {}
    monkeypatch.setattr(cli, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr(sys, "argv", ["convolab.demo", "--quick"])
    with pytest.raises(SystemExit):
        runpy.run_module("convolab.demo.__main__", run_name="__main__")
    assert seen["argv"] == ["demo", "--quick"]


def test_a_broken_pipe_that_is_not_stdout_is_raised(monkeypatch, capsys):
    """Only stdout's reader leaving is quiet; a command's own broken pipe is its error."""
    import types

    def fails(argv):
        raise BrokenPipeError("a child process went away")

    monkeypatch.setitem(cli.COMMANDS, "boom", ("fake_boom", "a test command"))
    monkeypatch.setitem(sys.modules, "fake_boom", types.SimpleNamespace(main=fails))
    with pytest.raises(BrokenPipeError, match="child process"):
        cli.main(["boom"])
