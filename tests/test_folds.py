import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from competition.errors import UserError
from folds.split import make_folds, quality_report, read_folds


def run_folds(runs, data, *extra):
    return subprocess.run([sys.executable, "-m", "folds", "--comp", "demo", "--data", str(data), "--runs", str(runs),
                           "--k", "3", *extra], capture_output=True, text=True)


def test_deterministic_and_refuses_silent_change(demo_data, tmp_path):
    r = run_folds(tmp_path, demo_data, "--seed", "1")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "demo" / "folds.csv"
    first = path.read_bytes()
    assert run_folds(tmp_path, demo_data, "--seed", "1").returncode == 0
    assert path.read_bytes() == first  # same inputs, same bytes
    r = run_folds(tmp_path, demo_data, "--seed", "2")
    assert r.returncode != 0 and "FORCE=1" in r.stderr
    assert path.read_bytes() == first  # the good file is untouched
    assert run_folds(tmp_path, demo_data, "--seed", "2", "--force").returncode == 0
    assert path.read_bytes() != first
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["ImageID", "fold"] and sorted(frame.fold.unique()) == [0, 1, 2]
    assert (tmp_path / "demo" / "folds_report.txt").exists()


def test_write_folds_api_refuses_a_change_and_keeps_the_file(demo_data, tmp_path):
    """The rule lives in the API, so the demo and a user's script get it too, not only the CLI."""
    from competition import load_dataset, load_spec
    from competition.layout import RunLayout
    from folds.split import write_folds
    spec = load_spec("demo")
    run, ds = RunLayout.of(tmp_path, "demo"), load_dataset(spec, demo_data)
    first = write_folds(run, ds, spec, 3, seed=1)
    assert first.written and first.path == run.folds and "fold sizes" in first.report
    assert not write_folds(run, ds, spec, 3, seed=1).written
    before = run.folds.read_bytes()
    with pytest.raises(UserError, match="would change"):
        write_folds(run, ds, spec, 3, seed=2)
    assert run.folds.read_bytes() == before
    assert write_folds(run, ds, spec, 3, seed=2, force=True).written and run.folds.read_bytes() != before


def test_every_label_in_every_fold_and_beats_kfold():
    rng = np.random.default_rng(0)
    y = (rng.random((600, 10)) < np.linspace(0.02, 0.5, 10)).astype(np.uint8)
    frame = make_folds([f"{i}.jpg" for i in range(600)], y, 5, seed=0)
    text, table = quality_report(y, frame.fold.to_numpy(), 5, 0, [str(i) for i in range(10)], list("abcdefghij"))
    for j in range(10):
        if y[:, j].sum() >= 5:
            assert all(y[frame.fold == f, j].sum() > 0 for f in range(5))
    assert table.dev_stratified.mean() < table.dev_kfold.mean()
    assert "plain KFold" in text


def test_read_folds_names_mismatched_ids(tmp_path):
    pd.DataFrame({"ImageID": ["a", "b"], "fold": [0, 1]}).to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(UserError, match="missing c"):
        read_folds(tmp_path / "f.csv", ["a", "c"])


def test_a_label_a_fold_lacks_is_reported(monkeypatch):
    """Iterative stratification cannot always place a label in every fold (many labels per row): the split
    stands, and the report names the label, its count and the fold."""
    import folds.split as split
    y = np.zeros((40, 2), dtype=int)
    y[:12, 1] = 1

    def bad_assign(splitter, y):  # a split that leaves label b out of fold 3
        fold = np.arange(len(y)) % 4
        fold[(y[:, 1] == 1) & (fold == 3)] = 0
        return fold
    monkeypatch.setattr(split, "assign", bad_assign)
    fold = make_folds([str(i) for i in range(40)], y, 4, 12).fold.to_numpy()
    text, _ = quality_report(y, fold, 4, 12, ["a", "b"], ["A", "B"])
    assert "WARNING: 1 labels with at least K=4 images are absent from a fold (another SEED may place them): " \
        "b (12 images, fold 3)" in text


def test_report_warns_about_labels_rarer_than_k():
    y = np.zeros((30, 3), dtype=int)
    y[:, 0] = 1
    y[:2, 1] = 1
    fold = make_folds([str(i) for i in range(30)], y, 3, 0).fold.to_numpy()
    text, _ = quality_report(y, fold, 3, 0, ["a", "b", "c"], ["A", "B", "C"])
    assert "WARNING: label b (B) has 2 images, fewer than K=3: some folds cannot validate it" in text
    assert "WARNING: label c (C) has 0 images" in text and "never occurs" in text
