import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from competition import load_spec, metrics
from competition.errors import UserError
from competition.formats import ModelMeta
from competition.metrics import decide, fast_micro_f1
from submissions import thresholds as th
from submissions.blend import DEFAULT_BLENDS, quick_score, tune_weights
from submissions.budget import cost, select
from submissions.members import Member
from submissions.scoring import Scoring
from submissions.validate import validate_frame

from helpers import settings

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n=400, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < np.linspace(0.1, 0.5, labels)).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    prob = np.clip(y * rng.uniform(0.1, 0.5, labels) + rng.random((n, labels)) * 0.6, 0, 1)
    return y, prob


def micro(y, min_labels=1, fold=None) -> Scoring:
    """COMP5329's scoring (micro-F1) of these rows."""
    return Scoring(y, np.arange(len(y)) % 3 if fold is None else fold, "micro_f1", min_labels)


def test_fast_micro_f1_equals_sklearn():
    y, prob = synthetic()
    pred = decide(prob, 0.4, 1)
    assert fast_micro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="micro"))


@pytest.mark.parametrize("min_labels", [0, 1])
@pytest.mark.parametrize("metric", ["micro_f1", "samples_f1", "samples_f2"])
def test_exact_search_is_coordinatewise_optimal(min_labels, metric):
    """Micro-F1 pools its counts, samples F-beta scores each row's: either way no single threshold change beats
    the search's result, the rule included."""
    y, prob = synthetic(seed=1)
    sc = Scoring(y, np.arange(len(y)) % 5, metric, min_labels)
    thr = th.exact_search(sc, prob)
    best = sc.score(prob, thr)
    assert best >= sc.score(prob, th.global_threshold(sc, prob))
    for j in range(y.shape[1]):  # brute force: no single threshold change does better
        for t in np.unique(prob[:, j]):
            trial = thr.copy()
            trial[j] = t
            assert sc.score(prob, trial) <= best + 1e-12


@pytest.mark.parametrize("min_labels", [0, 1])
@pytest.mark.parametrize("metric", ["micro_f1", "macro_f1", "samples_f1", "samples_f2"])
def test_a_metric_at_every_threshold_at_once_equals_deciding_each(metric, min_labels, monkeypatch):
    """The counting shortcut behind the global threshold gives what decide() + sklearn give, ties included
    (scores rounded to 2 digits tie often, within rows too), over several row chunks."""
    from sklearn.metrics import fbeta_score
    monkeypatch.setattr(metrics, "COUNT_CHUNK", 7)
    average, beta = {"micro_f1": ("micro", 1), "macro_f1": ("macro", 1), "samples_f1": ("samples", 1),
                     "samples_f2": ("samples", 2)}[metric]
    rng = np.random.default_rng(7)
    for _ in range(8):
        n, labels = rng.integers(5, 120), rng.integers(2, 6)  # one column would be a binary task to sklearn
        y = (rng.random((n, labels)) < 0.3).astype(np.uint8)
        prob = np.round(rng.random((n, labels)), 2)
        prob[0, 0] = th.GRID[10]  # a probability on a threshold is predicted there (decide: >=)
        fast = metrics.objective(metric).at_each(y, prob, th.GRID, min_labels)
        slow = [fbeta_score(y, decide(prob, t, min_labels), beta=beta, average=average, zero_division=0)
                for t in th.GRID]
        np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_exact_search_handles_the_rule_exactly():
    """Brute force over a tiny grid, with the at-least-one rule, agrees with coordinate ascent's optimum."""
    y, prob = synthetic(n=60, labels=3, seed=4)
    thr, sc = th.exact_per_label(y, prob, 1), micro(y)
    grid = np.linspace(0.05, 0.95, 19)
    brute = max(sc.score(prob, np.array(t)) for t in itertools.product(grid, repeat=3))
    assert sc.score(prob, thr) >= brute - 1e-12


def test_optuna_warm_start_and_resume(tmp_path):
    y, prob = synthetic(seed=2)
    init, sc = th.exact_per_label(y, prob, 1), micro(y)
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    thr = th.optuna_per_label(sc, prob, 5, 0, init=init, storage=storage, study_name="s")
    assert sc.score(prob, thr) >= sc.score(prob, init) - 1e-12  # the warm start is trial 0
    import optuna
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 5
    th.optuna_per_label(sc, prob, 8, 0, init=init, storage=storage, study_name="s")
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 8  # resumed, not restarted


def test_descending_order_is_the_stable_argsort():
    """The exact search's per-label order by numpy's fast sort, ties put back in row order: the stable argsort of
    the negated values, with ties of every size, 0.0 beside -0.0, and a column of one value."""
    rng = np.random.default_rng(8)
    columns = [rng.random(1000), np.round(rng.random(1000), 2), rng.integers(0, 3, 500) / 2.0,
               np.array([0.0, -0.0, 0.0, 0.5, -0.0]), np.full(7, 0.3), np.array([0.4]), np.zeros(0)]
    for values in columns:
        np.testing.assert_array_equal(th.descending_order(values), np.argsort(-values, kind="stable"))


def test_nested_score_is_not_in_sample():
    """Few rows, six labels, a weak signal: per-label thresholds tuned on the rows they are scored on fit their
    noise, so the nested score (tuned on the other folds) must be clearly lower; with nothing tuned they agree."""
    rng = np.random.default_rng(3)
    y = (rng.random((120, 6)) < 0.3).astype(np.uint8)
    prob = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    fixed, exact = th.compare(micro(y), prob, 5, 0, methods=("fixed", "exact"))
    assert fixed.in_sample == pytest.approx(fixed.nested)  # nothing tuned
    assert exact.nested < exact.in_sample - 0.03  # measured 0.5988 vs 0.6709
    assert exact.nested < fixed.nested  # here the tuning does not even pay for itself


def test_weighted_blend_never_below_best_member():
    y, good = synthetic(seed=5)
    rng = np.random.default_rng(9)
    bad = rng.random(good.shape)
    w = tune_weights([good, bad], micro(y), logits=False)
    blended = w[0] * good + w[1] * bad
    assert quick_score(micro(y), blended) >= quick_score(micro(y), good) - 1e-12


def member(name, oof, mb, hours, full_mb=None, sha="x", shared=None):
    meta = ModelMeta(name, "image", {}, "", None, 5, [], {}, [], {}, [], 0.0, None, 0.0, hours, None)
    return Member(name, Path(name), meta, oof, oof, oof[None], oof if full_mb else None, mb, full_mb, hours, sha,
                  shared or {})


def test_budget_selector_drops_the_right_member():
    y, good = synthetic(seed=6)
    rng = np.random.default_rng(0)
    noise = lambda: rng.random(good.shape)  # noqa: E731
    left, right = noise(), noise()
    left[:, :3], right[:, 3:] = good[:, :3], good[:, 3:]  # each knows different labels
    members = [member("strong", left, 45, 2), member("weak", noise(), 50, 2),
               member("big", right, 250, 30, full_mb=50)]
    chosen, use_full, notes = select(members, micro(y), max_mb=100, max_hours=40)
    names = {m.name for m in chosen}
    assert "strong" in names and "weak" not in names
    assert use_full.get("big") is True  # 250 MB of folds only fits as its 50 MB refit
    assert any("dropped weak" in n for n in notes) and any("big enters as its full-data refit" in n for n in notes)
    with pytest.raises(UserError, match="no member fits"):
        select(members, micro(y), max_mb=10, max_hours=None)


def test_a_part_two_members_share_counts_once():
    """Two captions members on the same encoder bytes (43 MB each, standalone) ship it once: the budget counts
    it once, so both fit in 100 MB; another encoder (other bytes) counts again and does not fit."""
    y, good = synthetic(seed=7)
    a = member("tuned", good, 43 + 33, 0, shared={"enc": 43})
    b = member("fusion", good[::-1].copy(), 43 + 11, 0, shared={"enc": 43})
    other = member("other", good[::-1].copy(), 43 + 11, 0, shared={"enc2": 43})
    assert cost([a, b], {"tuned": False, "fusion": False}) == (pytest.approx(87), 0)
    assert cost([a, other], {"tuned": False, "other": False}) == (pytest.approx(130), 0)
    chosen, _, notes = select([a, b], micro(y), max_mb=100, max_hours=None)
    assert [m.name for m in chosen] == ["tuned", "fusion"] and notes == []


def frame(rows):
    return pd.DataFrame(rows, columns=["ImageID", "Labels"])


def test_validator():
    spec = load_spec("comp5329")
    ids = ["30000.jpg", "30001.jpg"]
    validate_frame(frame([["30000.jpg", "1 3"], ["30001.jpg", "19"]]), spec, ids)
    with pytest.raises(UserError, match="(?s)ids differ.*missing 30001.jpg.*extra 9.jpg"):
        validate_frame(frame([["30000.jpg", "1"], ["9.jpg", "1"]]), spec, ids)
    with pytest.raises(UserError, match="(?s)unknown labels.*30001.jpg\\): 12"):
        validate_frame(frame([["30000.jpg", "1"], ["30001.jpg", "12"]]), spec, ids)
    with pytest.raises(UserError, match="(?s)fewer than 1 labels.*30001.jpg"):
        validate_frame(frame([["30000.jpg", "1"], ["30001.jpg", ""]]), spec, ids)
    with pytest.raises(UserError, match="duplicate ids"):
        validate_frame(frame([["30000.jpg", "1"], ["30000.jpg", "2"]]), spec, ids)
    with pytest.raises(UserError, match="header"):
        validate_frame(pd.DataFrame({"id": ids, "Labels": ["1", "1"]}), spec, ids)


def cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data):
    runs = tmp_path_factory.mktemp("submit_runs")
    r = cli("-m", "folds", "--comp", "demo", "--data", str(demo_data), "--runs", str(runs), "--k", "3")
    assert r.returncode == 0, r.stderr
    for model, extra in (("tiny", ["epochs=2"]), ("captions", ["min_df=1"])):
        r = cli("-m", "pipelines", "train", "--comp", "demo", "--data", str(demo_data), "--runs", str(runs),
                "--model", model, *extra)
        assert r.returncode == 0, r.stderr
    return runs, demo_data


def recomputed_rows(runs, side, spec, rule=True) -> list[str]:
    """The submission's label cells, recomputed by hand from the members' test files, the sidecar's blend and
    thresholds and the at-least-one rule: no project code."""
    models = runs / spec.name / "models"
    probs = [np.mean([pd.read_csv(models / m["name"] / f"test_fold{f}.csv")[spec.tokens].to_numpy()
                      for f in range(int(m["uses"].split()[0]))], axis=0) for m in side["members"]]
    w = np.array(side["blend"]["weights"]) / np.sum(side["blend"]["weights"])
    if side["blend"]["method"] == "weighted":
        blended = sum(wi * p for wi, p in zip(w, probs))
    else:  # weighted_logit: the weighted mean of logits, probabilities clipped to [1e-6, 1 - 1e-6]
        z = sum(wi * np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6))) for wi, p in zip(w, probs))
        blended = 1 / (1 + np.exp(-z))
    thr = np.array([side["thresholds"][t] for t in spec.tokens])
    rows = []
    for p in blended:
        chosen = [j for j in range(len(thr)) if p[j] >= thr[j]] or ([int(np.argmax(p))] if rule else [])
        rows.append(" ".join(spec.tokens[j] for j in sorted(chosen)))
    return rows


@pytest.mark.parametrize("blends, method", [("weighted", None), ("weighted_logit", "fixed")])
def test_submit_end_to_end_and_threshold_reuse(trained, blends, method):
    """The CSV's rows are exactly what the members' test files, the sidecar's blend and thresholds and the
    at-least-one rule make (with fixed 0.5 thresholds many rows have nothing above them: the rule fills them)."""
    runs, data = trained
    spec = load_spec("demo")
    args = ["-m", "submissions", "submit", "--comp", "demo", "--data", str(data), "--runs", str(runs), "--trials", "10",
            "--blends", blends, *(["--method", method] if method else [])]
    before = set((runs / "demo" / "submissions").glob("*.csv"))
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    sub, = set((runs / "demo" / "submissions").glob("*.csv")) - before
    side = json.loads(sub.with_suffix(".json").read_text())
    assert {m["name"] for m in side["members"]} == {"tiny", "captions"} and side["blend"]["method"] == blends
    assert side["blend"]["oof_score_global_thr"][blends] >= side["best_member_oof_score"] - 1e-12
    assert {r["method"] for r in side["threshold_comparison"]} == ({method} if method else
                                                                   {"fixed", "global", "exact", "optuna"})
    frame = pd.read_csv(sub, dtype=str, keep_default_na=False)
    assert list(frame["Labels"]) == recomputed_rows(runs, side, spec)
    if method == "fixed":
        assert sum(recomputed_rows(runs, side, spec, rule=False).count("") for _ in [0]) > 0  # the rule acted
    r = cli("-m", "submissions.validate", str(sub), "--comp", "demo", "--data", str(data))
    assert r.returncode == 0, r.stderr
    r = cli(*args)  # same members: the thresholds artifact is reused
    assert "reusing" in r.stdout
    if blends == "weighted":
        r = cli("-m", "submissions", "report", "--comp", "demo", "--data", str(data), "--runs", str(runs),
                "--trials", "10")
        assert r.returncode == 0, r.stderr
        for name in ("per_label_f1.png", "thresholds.png", "member_correlation.png", "learning_curves_tiny.png"):
            assert (runs / "demo" / "report" / name).exists()


def test_the_spec_metric_is_what_blends_and_thresholds_maximise(trained, tmp_path):
    """A spec with `metric: samples_f2` (Planet's): scores and thresholds are F2 ones, the exact search among the
    methods compared; macro-F1 has no exact search; an unknown metric fails naming the valid ones."""
    from sklearn.metrics import fbeta_score

    from competition.spec import SPEC_DIR
    runs, data = trained
    demo = (SPEC_DIR / "demo.yaml").read_text()
    spec_path = tmp_path / "demo.yaml"
    spec_path.write_text(demo.replace("metric: micro_f1", "metric: samples_f2"))
    r = cli("-m", "submissions", "submit", "--comp", str(spec_path), "--data", str(data), "--runs", str(runs),
            "--trials", "5", "--models", "captions")
    assert r.returncode == 0, r.stderr
    side = json.loads(max((runs / "demo" / "submissions").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert side["metric"] == "samples_f2" and "exact" in {row["method"] for row in side["threshold_comparison"]}
    spec = load_spec(str(spec_path))
    from competition import load_dataset
    ds = load_dataset(spec, data)
    oof = pd.read_csv(runs / "demo" / "models" / "captions" / "oof.csv", dtype={"ImageID": str})[spec.tokens].to_numpy()
    thr = np.array([side["thresholds"][t] for t in spec.tokens])
    f2 = fbeta_score(ds.targets(), decide(oof, thr, 1), beta=2, average="samples", zero_division=0)
    assert side["oof_score"] == pytest.approx(f2)
    spec_path.write_text(demo.replace("metric: micro_f1", "metric: macro_f1"))
    r = cli("-m", "submissions", "submit", "--comp", str(spec_path), "--data", str(data), "--runs", str(runs),
            "--method", "exact", "--models", "captions")
    assert r.returncode == 2 and "does not apply to metric macro_f1" in r.stderr
    spec_path.write_text(demo.replace("metric: micro_f1", "metric: f1"))
    r = cli("-m", "submissions", "submit", "--comp", str(spec_path), "--data", str(data), "--runs", str(runs))
    assert r.returncode == 2 and "unknown metric 'f1'; valid: micro_f1" in r.stderr


def test_mixing_folds_files_is_refused(trained, tmp_path):
    import shutil
    runs, data = trained
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    meta_path = copy / "demo" / "models" / "captions" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["folds_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    r = cli("-m", "submissions", "submit", "--comp", "demo", "--data", str(data), "--runs", str(copy))
    assert r.returncode == 2 and "different folds" in r.stderr and "captions: trained on another folds file" in r.stderr


def test_ignore_budget_is_loud(trained, tmp_path):
    runs, data = trained
    r = cli("-m", "submissions", "submit", "--comp", "demo", "--data", str(data), "--runs", str(runs),
            "--trials", "5", "--budget-mb", "0.01", "--ignore-budget")
    assert r.returncode == 0, r.stderr
    assert "WARNING: IGNORE_BUDGET" in r.stderr
    newest = max((runs / "demo" / "submissions").glob("*.json"), key=lambda p: p.stat().st_mtime)
    side = json.loads(newest.read_text())
    assert side["budget"]["within"] is False and side["budget"]["ignored"] is True


def test_validate_checks_ids_against_the_raw_test_file(trained, tmp_path):
    """A test row the reader cannot place is still a row the submission must have."""
    import shutil
    runs, data = trained
    sub = max((runs / "demo" / "submissions").glob("*.csv"), key=lambda p: p.stat().st_mtime)
    raw = tmp_path / "data"
    shutil.copytree(data, raw, ignore=shutil.ignore_patterns("data"))
    with open(raw / "test.csv", "a") as f:
        f.write("99999.JPEG,a row whose id the spec's pattern does not match\n")
    r = cli("-m", "submissions.validate", str(sub), "--comp", "demo", "--data", str(raw))
    assert r.returncode == 1 and "missing 99999.JPEG" in r.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    r = cli("-m", "submissions.validate", str(empty), "--comp", "demo", "--data", str(data))
    assert r.returncode == 1 and "empty.csv: empty file (0 bytes)" in r.stderr and "Traceback" not in r.stderr


def test_nan_in_a_member_is_named(trained, tmp_path):
    import shutil
    runs, data = trained
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    oof = copy / "demo" / "models" / "tiny" / "oof.csv"
    frame = pd.read_csv(oof, dtype={"ImageID": str})
    frame.loc[3, frame.columns[2]] = np.nan
    frame.to_csv(oof, index=False)
    r = cli("-m", "submissions", "submit", "--comp", "demo", "--data", str(data), "--runs", str(copy))
    assert r.returncode == 2 and "oof.csv: 1 rows with missing or out-of-range probabilities" in r.stderr
    assert frame.ImageID[3] in r.stderr


def test_killed_optuna_trial_is_marked_failed(tmp_path):
    import optuna

    from submissions.thresholds import optuna_per_label
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.ask()  # a trial left RUNNING, as by a process killed mid-trial
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.3).astype(int)
    optuna_per_label(micro(y), rng.random((60, 3)), 3, 0, storage=storage, study_name="s")
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.FAIL in states


def test_shared_storage_url_and_other_machines_trials(trained, tmp_path):
    """STORAGE= puts the threshold study where several machines can share it. A RUNNING trial there may belong
    to a live process elsewhere, so it is left to Optuna's heartbeat, not failed on sight; a bad URL is one line."""
    import optuna
    runs, data = trained
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    base = ["-m", "submissions", "thresholds", "--comp", "demo", "--data", str(data), "--runs", str(runs),
            "--models", "captions", "--method", "optuna", "--trials", "3", "--seed", "11"]
    r = cli(*base, "--storage", url)
    assert r.returncode == 0, r.stderr
    art = max((runs / "demo" / "thresholds").glob("thresholds-*.json"), key=lambda p: p.stat().st_mtime)
    art = json.loads(art.read_text())
    assert art["optuna_storage"] == url
    study = optuna.load_study(study_name=art["optuna_study"], storage=url)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3
    from submissions.thresholds import optuna_per_label
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    optuna.create_study(storage=storage, study_name="live", direction="maximize").ask()  # another machine's
    rng = np.random.default_rng(0)
    optuna_per_label(micro((rng.random((40, 3)) < 0.3).astype(int)), rng.random((40, 3)), 2, 0, storage=storage,
                     study_name="live")
    states = [t.state for t in optuna.load_study(study_name="live", storage=url).trials]
    assert optuna.trial.TrialState.RUNNING in states and optuna.trial.TrialState.FAIL not in states
    r = cli(*base, "--storage", "nosuchdb://x/y")
    assert r.returncode == 2 and r.stderr.startswith("error: optuna storage 'nosuchdb://x/y'")


def test_two_threshold_workers_share_one_study(trained, tmp_path):
    """Two machines tuning one study: two `make thresholds` at once, each with its own copy of the run folder,
    one STORAGE= (SQLite here; PostgreSQL across machines). Both finish, their trials land in the one study,
    none is failed by the other (the shared storage's heartbeat, not a local lock, tells dead from alive)."""
    import shutil

    import optuna
    runs, data = trained
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    copies = [runs, tmp_path / "machine_b"]
    shutil.copytree(runs, copies[1])
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "submissions", "thresholds", "--comp", "demo", "--data", str(data),
                               "--runs", str(r), "--models", "captions", "--method", "optuna", "--trials", "6",
                               "--seed", "12", "--storage", url], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in copies]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    arts = [json.loads(max((r / "demo" / "thresholds").glob("thresholds-*.json"),
                           key=lambda p: p.stat().st_mtime).read_text()) for r in copies]
    assert arts[0]["optuna_study"] == arts[1]["optuna_study"]
    states = [t.state for t in optuna.load_study(study_name=arts[0]["optuna_study"], storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 6 and optuna.trial.TrialState.FAIL not in states


def test_run_log_rows_leaderboard_and_public_scores(demo_data, tmp_path, capsys):
    from competition import load_dataset, runlog
    from competition.layout import RunLayout
    from folds.split import write_folds
    from pipelines.config import resolve
    from pipelines.run import train_model
    from submissions.__main__ import main
    from submissions.submit import run_submit
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0, False)
    quiet = lambda *_: None  # noqa: E731
    train_model(spec, ds, run, resolve("captions"), log=quiet)
    train_model(spec, ds, run, resolve("captions"), log=quiet)  # trains nothing: no second row
    train_model(spec, ds, run, resolve("captions", ["C=0.01"]).replace(name="weak"), log=quiet)
    first = run_submit(spec, ds, run, settings(spec, method="fixed", trials=5), "test", ["weak"], log=quiet).path
    second = run_submit(spec, ds, run, settings(spec, method="fixed", trials=5), "test", ["captions"], log=quiet).path
    log = runlog.read_log(run)
    assert list(log["event"]) == ["train", "train", "submit", "submit"]
    assert list(log["name"]) == ["captions", "weak", first.name, second.name]
    sidecar = json.loads(second.with_suffix(".json").read_text())
    assert log["nested_score"].iloc[3] == pytest.approx(sidecar["nested_score"], abs=1e-5)
    assert log["members"].iloc[2] == "weak" and log["public_score"].isna().all()
    main(["lb", "--comp", "demo", "--runs", str(tmp_path)])
    table = capsys.readouterr().out.splitlines()
    order = [next(n for n in (first.name, second.name, "captions", "weak") if n in line) for line in table[1:]]
    better, worse = sorted([first.name, second.name], key=lambda n: -log.set_index("name").loc[n, "nested_score"])
    assert order[:2] == [better, worse] and set(order[2:]) == {"captions", "weak"}  # models: no nested score
    main(["lb-set", "--comp", "demo", "--runs", str(tmp_path), "--file", str(first), "--public", "0.861"])
    assert runlog.read_log(run).set_index("name").loc[first.name, "public_score"] == pytest.approx(0.861)
    with pytest.raises(UserError, match="no submission 'nope.csv'"):
        runlog.set_public(run, "nope.csv", 0.5)
    with pytest.raises(UserError, match="not in \\[0, 1\\]"):
        runlog.set_public(run, first.name, 86.1)


def test_grad_cam_panels_one_per_label_and_maps_differ_between_labels(demo_data, tmp_path):
    import torch

    from competition import load_dataset
    from competition.images import load_resized
    from competition.layout import RunLayout
    from folds.split import write_folds
    from pipelines.config import resolve
    from pipelines.run import train_model
    from submissions.cam import best_image_member, cam_panels, fold_net, label_maps
    from submissions.submit import run_thresholds
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0, False)
    quiet = lambda *_: None  # noqa: E731
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), log=quiet)
    train_model(spec, ds, run, resolve("captions"), log=quiet)
    ens, thresholds = run_thresholds(spec, ds, run, settings(spec, method="fixed", trials=5), log=quiet)
    paths = cam_panels(spec, ds, ens, thresholds, run.report_cam, per_label=2)
    present = [t for t, n in zip(spec.tokens, ens.scoring.y.sum(0)) if n]
    assert sorted(p.name.split("_")[0] for p in paths) == sorted(present)  # one PNG per label that has images
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    member = best_image_member(ens)
    assert member.name == "tiny"
    net, record = fold_net(member, 0)
    mean, std = np.array(record.mean), np.array(record.std)
    image = load_resized(ds.image_root / ds.train["id"][0], 128)  # 4 x 4 last-stage maps, not the 1 x 1 of 32 px
    x = torch.from_numpy(((image / 255.0 - mean) / std).transpose(2, 0, 1)).float()[None]
    top = torch.argsort(net(x)[0], descending=True)[:2].tolist()  # labels it sees evidence for (Grad-CAM's ReLU)
    maps = label_maps(net, image, record, top)
    assert maps.shape == (2, 128, 128) and np.isfinite(maps).all() and maps.max() > 0
    assert np.abs(maps[0] - maps[1]).max() > 1e-3  # each label's own map, not one map for every label


def nested_case(n, labels, noise_members, seed):
    """One weakly informative member among pure-noise ones, on few rows: a blend and per-label thresholds
    tuned on these rows fit their noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.3).astype(np.uint8)
    weak = np.clip(0.35 + 0.15 * y + rng.normal(0, 0.2, y.shape), 0.01, 0.99)
    members = [member("weak", weak, 1, 0)] + [member(f"noise{i}", rng.random(y.shape), 1, 0)
                                               for i in range(noise_members)]
    return y, np.arange(n) % 4, members


def test_fully_nested_is_below_in_sample_when_post_processing_overfits():
    from submissions.budget import Budget
    from submissions.postprocess import Settings, choose, fully_nested
    y, fold, members = nested_case(160, 4, 3, seed=0)
    st = Settings(Budget(None, None), method=None, trials=5, seed=0, blends=DEFAULT_BLENDS)
    in_sample = choose(members, micro(y, fold=fold), st).in_sample
    nested = fully_nested(members, micro(y, fold=fold), st, log=lambda *_: None)
    assert nested.score < in_sample - 0.01  # tuned on the rows it is scored on vs on other rows
    assert [r.fold for r in nested.per_fold] == [0, 1, 2, 3] and all(r.members and r.blend for r in nested.per_fold)


def test_fully_nested_equals_in_sample_when_nothing_is_tuned():
    """One member, its plain mean, fixed thresholds: nothing to tune, so nesting changes nothing."""
    from submissions.budget import Budget
    from submissions.postprocess import Settings, choose, fully_nested
    y, fold, members = nested_case(120, 3, 0, seed=1)
    st = Settings(Budget(None, None), method="fixed", trials=1, seed=0, blends=("mean",))
    sc = micro(y, fold=fold)
    in_sample = choose(members, sc, st).in_sample
    assert fully_nested(members, sc, st, log=lambda *_: None).score == pytest.approx(in_sample)
    assert in_sample == pytest.approx(sc.score(members[0].oof, 0.5))


def test_fully_nested_choices_see_only_their_training_folds(monkeypatch):
    """Each outer fold's post-processing gets exactly the other folds' rows, labels and member OOF."""
    from submissions import postprocess
    from submissions.budget import Budget
    y, fold, members = nested_case(120, 3, 1, seed=2)
    seen = []
    real = postprocess.choose

    def spy(ms, sc, st, methods=None):
        seen.append(sorted(set(sc.fold)))
        rows = fold != len(seen) - 1
        assert np.array_equal(sc.y, y[rows]) and all(np.array_equal(a.oof, b.oof[rows]) for a, b in zip(ms, members))
        return real(ms, sc, st, methods)
    monkeypatch.setattr(postprocess, "choose", spy)
    st = postprocess.Settings(Budget(None, None), method=None, trials=3, seed=0, blends=DEFAULT_BLENDS)
    postprocess.fully_nested(members, micro(y, fold=fold), st, log=lambda *_: None)
    assert seen == [sorted(set(range(4)) - {f}) for f in range(4)]


def test_rows_read_as_the_copy_of_those_rows():
    """The fully nested estimate's member rows (competition.probs.Rows): every index, arithmetic and method gives
    what the copy a[rows] gives, and the row slices blends read gather only those rows."""
    from competition.probs import Rows
    rng = np.random.default_rng(4)
    a = rng.random((30, 5))
    mask = rng.random(30) < 0.6
    view, copy = Rows(a, mask), a[mask]
    assert view.shape == copy.shape and len(view) == len(copy) and view.dtype == copy.dtype and view.size == copy.size
    keys = [slice(2, 7), slice(None, None, 3), 4, -1, np.array([0, 3, 1]), copy[:, 0] > 0.5, (slice(None), 2),
            (slice(1, 5), slice(0, 2)), (np.array([1, 2]), np.array([0, 4])), (Ellipsis, 1), None, (3, 2)]
    for key in keys:
        np.testing.assert_array_equal(view[key], copy[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(view), copy)
    np.testing.assert_array_equal(view > 0.5, copy > 0.5)
    np.testing.assert_array_equal(1 - view, 1 - copy)
    np.testing.assert_array_equal(view.sum(0), copy.sum(0))
    np.testing.assert_array_equal(np.clip(view, 0.2, 0.8), np.clip(copy, 0.2, 0.8))


@pytest.mark.parametrize("name", ["mean", "weighted", "weighted_logit", "rank_mean", "stack"])
def test_blends_fit_on_rows_as_on_their_copies(name):
    """Each blend fitted and applied through Rows gives bitwise what it gives on copies of those rows."""
    from competition.probs import Rows
    from submissions.blend import make_blend
    y, fold, members = nested_case(160, 4, 2, seed=6)
    inner = fold != 1
    sc = micro(y[inner], fold=fold[inner])
    by_copy, by_rows = make_blend(name), make_blend(name)
    oof = by_copy.fit([m.oof[inner] for m in members], sc)
    np.testing.assert_array_equal(by_rows.fit([Rows(m.oof, inner) for m in members], sc), oof)
    np.testing.assert_array_equal(by_rows.apply([Rows(m.oof, ~inner) for m in members]),
                                  by_copy.apply([m.oof[~inner] for m in members]))


def test_fully_nested_through_rows_equals_through_copies(monkeypatch):
    from submissions import postprocess
    from submissions.budget import Budget
    y, fold, members = nested_case(160, 4, 2, seed=7)
    st = postprocess.Settings(Budget(None, None), method=None, trials=3, seed=0, blends=DEFAULT_BLENDS)
    rows = postprocess.fully_nested(members, micro(y, fold=fold), st, log=lambda *_: None)
    monkeypatch.setattr(postprocess, "Rows", lambda a, r: a[r])
    assert postprocess.fully_nested(members, micro(y, fold=fold), st, log=lambda *_: None) == rows


def test_fold_test_rows_are_read_when_asked_and_a_changed_file_is_refused(tmp_path):
    from competition.formats import write_probs
    from submissions.members import FoldTests
    rng = np.random.default_rng(5)
    ids, tokens = [f"t{i}" for i in range(6)], ["a", "b"]
    probs = [rng.random((6, 2)).round(4) for _ in range(3)]
    for f, p in enumerate(probs):
        write_probs(tmp_path / f"test_fold{f}.csv", ids, p, tokens)
    folds = FoldTests.of([tmp_path / f"test_fold{f}.csv" for f in range(3)], ids, tokens)
    assert len(folds) == 3
    np.testing.assert_allclose(folds[2], probs[2])
    write_probs(tmp_path / "test_fold1.csv", ids, probs[0] / 2, tokens)
    with pytest.raises(UserError, match="test_fold1.csv: changed since"):
        folds[1]


@pytest.mark.parametrize("name", ["mean", "weighted", "weighted_logit", "stack"])
def test_each_folds_test_rows_are_blended_from_that_folds_models_only(name):
    """What a distilled student or pseudo-labels of fold f learn on test rows: the blend of fold f's member models
    only, through fold f's own second level for a stack (fitted without fold f's rows)."""
    from sklearn.linear_model import LogisticRegression

    from submissions.blend import STACK_SOLVER, blend_all, stack_features
    rng = np.random.default_rng(11)
    y = (rng.random((150, 4)) < 0.3).astype(np.uint8)
    fold = np.arange(150) % 3
    members = []
    for i in range(2):
        oof = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0.01, 0.99)
        by_fold = np.stack([np.clip(rng.random((20, 4)) * 0.5 + 0.2 * f, 0.01, 0.99) for f in range(3)])
        meta = ModelMeta(f"m{i}", "image", {}, "", None, 3, [], {}, [], {}, [], 0.0, None, 0.0, 0.0, None)
        members.append(Member(f"m{i}", Path("m"), meta, oof, by_fold.mean(0), by_fold, None, 1, None, 0.0, "x"))
    out = blend_all(members, micro(y, fold=fold), {}, (name,))[name]
    for f in range(3):
        mine = out.model.apply([m.test_by_fold[f] for m in members], fold=f)
        np.testing.assert_allclose(out.fold_tests[f], mine, atol=1e-12)
        theirs = out.model.apply([m.test_by_fold[(f + 1) % 3] for m in members], fold=f)
        assert np.abs(out.fold_tests[f] - theirs).max() > 0.01  # another fold's models would show
    if name == "stack":
        x = stack_features([m.oof for m in members])
        for f in range(3):  # fold f's learner is the one fitted on the other folds' rows
            lr = LogisticRegression(C=1.0, max_iter=2000, solver=STACK_SOLVER).fit(x[fold != f], y[fold != f, 0])
            test_x = stack_features([m.test_by_fold[f] for m in members])
            np.testing.assert_allclose(out.fold_tests[f][:, 0], lr.predict_proba(test_x)[:, 1], atol=1e-9)


def test_one_submission_frame_with_the_spec_separator():
    """make submit and make predict write one frame (competition.formats.submission_frame): the spec's label
    separator, its thresholds and min-labels rule; the validator reads it back."""
    import dataclasses

    import numpy as np

    import bundle.predict
    import submissions.submit
    from competition import load_spec
    from competition.formats import submission_frame
    from submissions.validate import validate_frame
    assert submissions.submit.submission_frame is bundle.predict.submission_frame is submission_frame
    spec = dataclasses.replace(load_spec("demo"), label_separator=";")
    prob = np.zeros((3, len(spec.tokens)))
    prob[0, :2] = 0.9
    frame = submission_frame(spec, ["a.jpg", "b.jpg", "c.jpg"], prob, [0.5] * len(spec.tokens))
    assert frame[spec.label_column][0] == ";".join(spec.tokens[:2])
    validate_frame(frame, spec, ["a.jpg", "b.jpg", "c.jpg"], where="x.csv")


def test_what_grows_faster_than_rows_x_labels_is_left_out_above_a_size(monkeypatch):
    """iMet's shape (issue 42): a per-label second level over members x labels features, Optuna's studies and the
    nested exact selection of blends are left out with a reason above their sizes; the weight grid scores every
    k-th row. COMP5329's shape keeps everything."""
    from submissions import blend
    big, small = Scoring(np.zeros((100_000, 1103), np.uint8), np.arange(100_000) % 5, "samples_f2", 1), \
        Scoring(np.zeros((28_000, 18), np.uint8), np.arange(28_000) % 5, "micro_f1", 1)
    assert blend.too_large("stack", 3, 1103).startswith("3 members x 1103 labels = 3,309 features")
    assert blend.too_large("stack_mlp", 3, 1103) is None and blend.too_large("stack", 3, 18) is None
    assert blend.available(3, DEFAULT_BLENDS, 5, False, 1103) == ("mean", "weighted", "weighted_logit")
    assert "stack" in blend.available(3, DEFAULT_BLENDS, 5, False, 18)
    assert "6 studies of 200 trials over 1,103 thresholds" in th.too_costly("optuna", big, 200)
    assert th.too_costly("optuna", small, 200) is None and th.too_costly("exact", big, 200) is None
    assert blend.weight_rows(big).step == 28 and blend.weight_rows(small).step == 1
    assert not blend.exact_selection(big) and blend.exact_selection(small)
    lines = []
    blend.scale_notes(big, DEFAULT_BLENDS, lines.append)
    assert lines == ["blend weights: tuned on every 28th row (100,000 x 1,103 cells over 4,000,000)",
                     "blend selection: by the best global threshold, not the nested exact search (100,000 x 1,103 "
                     "cells over 5,000,000)"]
    # compare() leaves a costly method out unless asked for by name
    monkeypatch.setattr(th, "OPTUNA_MAX_SECONDS", 0.0)
    y, prob = synthetic(seed=3)
    sc = micro(y)
    assert "optuna" not in {r.method for r in th.compare(sc, prob, 2, 0)}
    assert [r.method for r in th.compare(sc, prob, 2, 0, ("optuna",))] == ["optuna"]


def test_only_the_best_blend_keeps_its_rows_where_nothing_else_needs_them():
    """fit_blends(best_only): the same choice and the same OOF rows as fitting every blend, the other blends'
    rows let go (the fully nested estimate and make submit go on with the best alone)."""
    from submissions.blend import best_blend, fit_blends
    y, prob = synthetic(n=300, labels=4, seed=5)
    rng = np.random.default_rng(5)
    oofs = [np.clip(prob + rng.normal(0, s, prob.shape), 0.001, 0.999) for s in (0.05, 0.2, 0.1)]
    sc = micro(y)
    every = fit_blends(oofs, sc, DEFAULT_BLENDS)
    best = fit_blends(oofs, sc, DEFAULT_BLENDS, best_only=True)
    name = best_blend({k: f.select for k, f in every.items()})
    assert best_blend({k: f.select for k, f in best.items()}) == name
    assert np.array_equal(best[name].oof, every[name].oof)
    assert all(f.oof is None for k, f in best.items() if k != name) and len(best) == len(every) > 1
