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
