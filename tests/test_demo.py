"""The demo end to end: a quick run writes its files; --check-torch agrees with PyTorch."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from convolab.demo import main  # noqa: E402
from convolab.demo import data as demo_data  # noqa: E402
from convolab.demo import models, plots, train  # noqa: E402


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


def test_mnist1d_cache_holds_what_generation_builds(tmp_path, monkeypatch, mnist1d):
    """The first load writes the arrays; later loads read them without generating (or
    importing mnist1d); a damaged file is built again; an empty CONVOLAB_CACHE_DIR
    turns the cache off, and a folder that cannot be written leaves loading as it was."""
    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(tmp_path / "cache"))
    first = demo_data.load_mnist1d()
    files = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    for k in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(getattr(first, k), getattr(mnist1d, k)), k

    def no_generation():
        raise AssertionError("generated although cached")

    with monkeypatch.context() as m:
        m.setattr(demo_data, "_generate_mnist1d", no_generation)
        again = demo_data.load_mnist1d()
    for k in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(getattr(again, k), getattr(mnist1d, k)), k
        assert getattr(again, k).dtype == getattr(mnist1d, k).dtype

    calls = []
    real = demo_data._generate_mnist1d

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(demo_data, "_generate_mnist1d", counted)
    files[0].write_bytes(b"not an npz file")
    assert np.array_equal(demo_data.load_mnist1d().x, mnist1d.x) and len(calls) == 1
    assert demo_data._read_cached(files[0]) is not None  # written again

    np.savez(files[0], x=np.zeros((3, 40)), y=np.zeros(2, dtype=np.int64),
             x_test=np.zeros((1, 40)), y_test=np.zeros(1, dtype=np.int64))
    assert np.array_equal(demo_data.load_mnist1d().x, mnist1d.x) and len(calls) == 2

    monkeypatch.setenv("CONVOLAB_CACHE_DIR", "")
    assert demo_data.cache_dir() is None
    demo_data.load_mnist1d()
    assert len(calls) == 3

    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would go")
    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(blocked / "sub"))
    assert np.array_equal(demo_data.load_mnist1d().x, mnist1d.x) and len(calls) == 4


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVOLAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo_data.cache_dir() == tmp_path / "convolab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_data.cache_dir() == tmp_path / "home" / ".cache" / "convolab"


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
    assert r["diverged"] is False and r["diverged_at"] is None
    m = r["machine"]
    assert m["workers"] >= 1 and m["usable_cpus"] == len(os.sched_getaffinity(0))
    text = capsys.readouterr().out
    assert "human expert (published)" in text and "wall time" in text
    assert f"on {m['usable_cpus']} usable CPU" in text


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
    for argv, msg in (
        (["--out", ""], "--out='': give a folder name"),
        (["--workers", "0"], "--workers=0 must be positive"),
        (["--workers", "65"], "--workers=65 must be at most 64"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and msg in capsys.readouterr().err, argv


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_diverging_run_stops_writes_what_it_can_and_exits_1(tmp_path, capsys, monkeypatch, mnist1d):
    """--lr 1000 makes the loss NaN within the epoch: no traceback, no accuracy from NaN
    logits, strict run.json with where it happened, one line on stderr, status 1."""
    monkeypatch.setattr(demo_data, "load", lambda name: mnist1d)
    out = tmp_path / "lr1000"
    assert main(["--lr", "1000", "--epochs", "1", "--no-progress", "--out", str(out)]) == 1
    r = _strict_json(out / "run.json")
    assert r["diverged"] is True and r["test_accuracy"] is None and r["train_accuracy"] is None
    at = r["diverged_at"]
    assert at["epoch"] == 1 and 1 <= at["step"] <= 32 and at["loss"] is None
    assert r["history"]["epoch"] == [] and r["confusion_matrix"] is None
    assert (out / "kernels.png").stat().st_size > 0
    assert not (out / "confusion.png").exists() and not (out / "curves.png").exists()
    cap = capsys.readouterr()
    line = f"training diverged at step {at['step']} (loss nan); try a smaller --lr"
    assert cap.err.strip().splitlines() == [line]  # no traceback, no overflow warnings
    assert "diverged" in cap.out and "NOT met" in cap.out


def test_divergence_found_by_the_evaluation(tmp_path, monkeypatch):
    """Non-finite test logits after an epoch: that epoch's test values are null, the
    finished epochs are kept and plotted, and no confusion matrix is drawn."""
    calls = []

    def evaluate(*args, **kw):
        calls.append(1)
        return (math.nan, math.nan, None) if len(calls) == 2 else real(*args, **kw)

    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", evaluate)
    out = tmp_path / "d"
    argv = ["--dataset", "digits", "--epochs", "3", "--no-progress", "--out", str(out)]
    assert main(argv) == 1
    r = _strict_json(out / "run.json")
    assert r["diverged_at"]["phase"] == "test" and r["diverged_at"]["epoch"] == 2
    h = r["history"]
    assert h["epoch"] == [1, 2] and h["test_acc"][1] is None and h["test_loss"][1] is None
    assert h["test_acc"][0] > 0.1 and r["test_accuracy"] is None
    assert (out / "curves.png").exists() and not (out / "confusion.png").exists()


def test_plots_tolerate_nan(tmp_path):
    w = np.full((4, 1, 5), np.nan)
    w[0, 0, 0] = np.inf
    plots.kernels(w, tmp_path / "k.png", "nan kernels")
    h = train.History([1, 2], [1.0, 0.5], [0.5, 0.6], [1.0, math.nan], [0.4, math.nan], [1, 2])
    plots.curves(h, tmp_path / "c.png", "nan curves")
    assert (tmp_path / "k.png").exists() and (tmp_path / "c.png").exists()


def test_ctrl_c_closes_up_and_removes_only_its_own_empty_folder(tmp_path, capsys, monkeypatch):
    real, calls = train.train_step, []

    def step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train, "train_step", step)
    new = tmp_path / "new" / "run"
    argv = ["--dataset", "digits", "--epochs", "1", "--no-progress", "--out"]
    assert main([*argv, str(new)]) == 130
    assert not (tmp_path / "new").exists()  # created by the run, left empty: removed
    err = capsys.readouterr().err
    assert "interrupted at epoch 1/1, step 2/22; nothing written" in err
    assert "Traceback" not in err
    calls.clear()
    old = tmp_path / "old"
    old.mkdir()
    assert main([*argv, str(old)]) == 130
    assert old.is_dir()  # there before the run: kept


def test_piped_progress_is_one_line_per_epoch_and_workers_are_recorded(tmp_path, capsys):
    """stderr is not a terminal here: no tqdm redraws, one line per epoch; --workers 1
    runs (and is recorded as) one tile worker."""
    out = tmp_path / "w1"
    assert main(["--dataset", "digits", "--epochs", "2", "--workers", "1", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.err
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    r = _strict_json(out / "run.json")
    assert r["machine"]["workers"] == 1
    assert "1 tile worker on" in cap.out


def test_interrupted_pickles_and_copies_with_where_it_stopped():
    """It took four arguments but was rebuilt from its message alone: pickling it (a
    fit run in a multiprocessing worker) or copying it raised TypeError."""
    import copy
    import pickle

    e = train.Interrupted(2, 5, 10, 100)
    for again in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
        assert type(again) is train.Interrupted and str(again) == str(e)
        assert (again.epoch, again.epochs, again.step, again.steps) == (2, 5, 10, 100)
