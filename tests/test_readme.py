"""The README's and the docs' Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

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
