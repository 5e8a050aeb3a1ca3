"""The command line: dispatch, help, errors, and a one-case benchmark smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

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
