"""The README's and the docs' Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"


def _run_blocks(path: Path, least: int, shared: bool = False) -> None:
    """exec every ```python block of ``path``, each in a fresh namespace, or all in one
    (a page that builds something step by step)."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert len(blocks) >= least
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(path), "exec"), namespace if shared else {})


def test_readme_python_blocks_run():
    _run_blocks(README, 1)


def test_how_it_works_python_blocks_run():
    _run_blocks(DOCS / "how-it-works.md", 2)


def test_autograd_page_runs_as_one_script():
    _run_blocks(DOCS / "autograd.md", 3, shared=True)


def test_explain_draw_python_blocks_run(capsys):
    _run_blocks(DOCS / "explain_draw.md", 1)


@pytest.mark.small_calls_serial  # the documented call is small: explain says so
def test_documented_explain_output_is_what_explain_prints(capsys):
    """The ``$ convolab explain ...`` transcripts in explain_draw.md: every line shown
    (but those cut short with ``...`` and the workspace of a call that is not small,
    which follows the worker count) is a line of the real output, in order."""
    import shlex

    from convolab.explain import main

    blocks = re.findall(r"```\n\$ (convolab explain .*?)```", (DOCS / "explain_draw.md")
                        .read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        command, *shown = block.rstrip("\n").split("\n")
        assert main(shlex.split(command)[2:]) == 0
        real = capsys.readouterr().out.split("\n")
        small = any("note: a small call" in line for line in real)  # one worker's
        at = 0
        for line in shown:
            if "..." in line or ("workspace" in line and not small):
                continue
            assert line in real[at:], (command, line)
            at = real.index(line, at) + 1


def test_project_layout_names_every_module():
    """The README's project layout names each public module and package of src/convolab
    (a new module left out of it is how the layout went stale)."""
    layout = README.read_text().split("## Project layout", 1)[1]
    src = README.parent / "src" / "convolab"
    names = [p.stem if p.suffix == ".py" else p.name for p in src.iterdir()
             if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())]
    assert len(names) > 10
    missing = [n for n in names if not re.search(rf"\b{re.escape(n)}(\.py|/)", layout)]
    assert not missing, missing


def test_every_nn_name_is_documented():
    """Every name convolab.nn exports is named in the README or in docs/demo.md's list
    of layers (``MaxPool1d/2d/3d`` names three)."""
    import convolab.nn as nn

    text = README.read_text() + (DOCS / "demo.md").read_text()
    named = set(re.findall(r"\b[A-Z]\w+", text))
    for base, dims in re.findall(r"\b([A-Z]\w*?)((?:[123]d)(?:/[123]d)+)", text):
        named |= {base + d for d in dims.split("/")}
    assert [n for n in nn.__all__ if n not in named and n != "optim"] == []


@pytest.mark.small_calls_serial  # conftest zeroes SMALL_CALL_FLOPS otherwise
def test_documented_small_call_sizes_are_the_code_s():
    """The small-call sizes quoted in how-it-works.md and the README are the ones
    convolab.ops.conv applies."""
    from convolab.ops import conv

    assert conv.SMALL_CALL_FLOPS == 25e6 and conv.SMALL_CALL_ELEMENTS == 2**18
    assert "25 MFLOP" in (DOCS / "how-it-works.md").read_text()
    assert "(2**18)" in (DOCS / "how-it-works.md").read_text()
    assert "25 MFLOP, with input and output under 262144" in README.read_text()
