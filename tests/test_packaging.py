"""The wheel users install: built from a copy of the tree, its contents checked and
the library run from it alone (CI installs the project editable, which reads src/
and would not notice a module or a data file missing from the wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = r"""
import sys, numpy as np
import convolab as F, convolab.nn as nn
convolab = F
assert convolab.__file__.startswith(sys.argv[1]), convolab.__file__
rng = np.random.default_rng(0)
x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
with convolab.options(algorithm="direct"):
    ref = F.conv2d(x, w, padding=1)
assert np.allclose(F.conv2d(x, w, padding=1), ref, rtol=1e-12, atol=1e-12)
m = nn.Sequential(nn.Conv2d(3, 4, 3, seed=0), nn.MaxPool2d(2), nn.Flatten(), nn.GELU())
y = m(x.astype(np.float32))
m.backward(np.ones_like(y))
print(convolab.explain("conv2d", (1, 3, 8, 8), out_channels=2, kernel_size=3).output_shape)
from convolab.cli import main
print("cli", main(["explain", "conv2d", "--input", "1,3,8,8", "--out-channels", "2",
                   "--kernel-size", "3"]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp / "dist"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (whl,) = out.glob("convolab-*.whl")
    return whl


def test_the_wheel_holds_the_package_its_license_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.startswith("convolab/") and n.endswith(".py")}
    tree = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src/convolab").rglob("*.py")}
    assert modules == tree  # every module, subpackages included
    assert "convolab/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "convolab = convolab.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_the_library_runs_from_the_wheel_alone(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", SMOKE, str(site)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(1, 2, 6, 6)" in run.stdout and "cli 0" in run.stdout
