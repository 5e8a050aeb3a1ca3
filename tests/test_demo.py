"""The demo end to end: a quick run writes its files; --check-torch agrees with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from convolab.demo import main  # noqa: E402
from convolab.demo import data as demo_data  # noqa: E402
from convolab.demo import models  # noqa: E402


@pytest.fixture(scope="module")
def mnist1d():
    return demo_data.load_mnist1d()


def test_mnist1d_is_generated_with_defaults(mnist1d):
    state = np.random.get_state()[1].copy()
    d = demo_data.load_mnist1d()
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG left alone
    assert d.x.shape == (4000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    assert np.array_equal(d.x, mnist1d.x)  # deterministic
    assert set(np.unique(d.y)) == set(range(10))


def test_digits_split_is_fixed_and_stratified():
    a, b = demo_data.load_digits(), demo_data.load_digits()
    assert a.x.shape[1:] == (1, 8, 8) and len(a.y) + len(a.y_test) == 1797
    assert np.array_equal(a.y_test, b.y_test)
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # 25% of each class


def test_quick_run_writes_files(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    for f in ("curves.png", "kernels.png", "confusion.png", "run.json"):
        assert (out / f).stat().st_size > 0, f
    r = json.loads((out / "run.json").read_text())
    assert r["test_accuracy"] > 0.3  # chance is 0.1
    assert r["parameters"] == models.build("mnist1d").num_parameters()
    assert np.asarray(r["confusion_matrix"]).sum() == 1000
    text = capsys.readouterr().out
    assert "human expert (published)" in text and "wall time" in text


def test_quick_digits_run(tmp_path):
    out = tmp_path / "digits"
    assert main(["--dataset", "digits", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    r = json.loads((out / "run.json").read_text())
    assert r["test_accuracy"] > 0.3 and r["dataset"] == "digits"


def test_check_torch_agrees(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "check"
    rc = main(["--check-torch", "--check-steps", "6", "--batch-size", "32", "--out", str(out)])
    r = json.loads((out / "check_torch.json").read_text())
    assert rc == 0 and r["ok"]
    assert r["max_rel_diff_loss"] <= 1e-8 and r["max_rel_diff_weights"] <= 1e-8
    assert "AGREE" in capsys.readouterr().out


def test_to_torch_copies_both_networks():
    torch = pytest.importorskip("torch")
    for name, shape in (("mnist1d", (3, 1, 40)), ("digits", (3, 1, 8, 8))):
        m = models.build(name, dtype=np.float64, seed=1)
        tm = models.to_torch(m)
        x = np.random.default_rng(0).standard_normal(shape)
        m.eval()
        tm.eval()
        with torch.no_grad():
            np.testing.assert_allclose(
                m(x), tm(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12
            )


def test_bad_options_exit_with_message(capsys):
    with pytest.raises(SystemExit):
        main(["--epochs", "0"])
    assert "--epochs=0 must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "cifar"])
