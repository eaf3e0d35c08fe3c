"""Probability submissions (issue 41): metrics scored on probabilities (column-wise ROC-AUC, mAP, log loss), no
thresholds, the rank blend, per-label temperatures, the CSV's probability columns checked by `make validate`, and a
bundle that reproduces them byte for byte."""
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bundle.export import export_bundle
from bundle.predict import predict_bundle
from competition import load_dataset, load_spec, metrics
from competition.demo_data import generate
from competition.errors import UserError
from competition.layout import RunLayout
from competition.probs import sigmoid
from competition.spec import SPEC_DIR
from folds.split import write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions import thresholds as th
from submissions.blend import RankMean, fit_blends
from submissions.blend_file import RankForm, load_stacker, write_saved
from submissions.scoring import Scoring
from submissions.submit import run_submit
from submissions.validate import validate_file

from helpers import settings

QUIET = dict(log=lambda *_: None)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < 0.3).astype(np.uint8)
    prob = np.round(np.clip(y * 0.35 + rng.random((400, 5)) * 0.65, 0, 1), 2)  # rounded: ties
    return y, prob


def test_probability_metrics_equal_sklearn(scored):
    y, prob = scored
    assert metrics.mean_roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob, average="macro"), abs=1e-12)
    assert metrics.macro_ap(y, prob) == pytest.approx(skm.average_precision_score(y, prob, average="macro"))
    p = prob.copy()
    p[0, 0], p[1, 1] = 0.0, 1.0  # Kaggle's scorers clip to [1e-15, 1 - 1e-15]; so does the metric
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    want = np.mean([skm.log_loss(y[:, j], clipped[:, j], labels=[0, 1]) for j in range(5)])
    assert -metrics.neg_log_loss(y, p) == pytest.approx(want)
    w = [1, 0, 2, 1, 1]
    per = [skm.roc_auc_score(y[:, j], prob[:, j]) for j in range(5)]
    assert metrics.mean_roc_auc(y, prob, w) == pytest.approx(np.dot(w, per) / sum(w))
    y[:, 2] = 0  # a column with one class has no AUC: left out of the mean
    assert metrics.mean_roc_auc(y, prob) == pytest.approx(np.mean([skm.roc_auc_score(y[:, j], prob[:, j])
                                                                   for j in (0, 1, 3, 4)]))


def test_temperatures_undo_an_overconfident_model_and_ranking_metrics_get_none():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (3000, 3))
    y = (rng.random(z.shape) < sigmoid(z)).astype(np.uint8)
    overconfident = sigmoid(3 * z)
    sc = Scoring(y, np.arange(3000) % 3, "log_loss", 0)
    t = th.fit_temperatures(sc, overconfident)
    assert np.allclose(t, 3, rtol=0.15)
    rows = {r.method: r for r in th.compare(sc, overconfident, 1, 0)}
    assert set(rows) == {"none", "temperature"} and rows["temperature"].nested > rows["none"].nested
    assert th.pick(list(rows.values())).method == "temperature"
    auc = Scoring(y, sc.fold, "mean_roc_auc", 0)
    assert th.applicable(auc) == ("none",)
    with pytest.raises(UserError, match="threshold method 'global' does not apply to metric mean_roc_auc"):
        th.check_method("global", auc)


def test_the_rank_blend_predicts_a_row_alone_as_in_a_batch_and_round_trips(scored, tmp_path):
    """Ranks against each member's OOF quantiles, not the rows at hand: one row alone gets its batch value; a
    single member keeps its AUC (its order, up to the quantiles' resolution); the saved file applies the same."""
    y, prob = scored
    rng = np.random.default_rng(2)
    other = np.clip(prob + rng.normal(0, 0.2, prob.shape), 0, 1) ** 3  # another scale: crowded near 0
    sc = Scoring(y, np.arange(400) % 4, "mean_roc_auc", 0)
    blend = RankMean()
    oof = blend.fit([prob, other], sc)
    assert np.allclose(blend.apply([prob[7:8], other[7:8]]), oof[7:8])
    assert metrics.mean_roc_auc(y, RankMean().fit([prob], sc)) == pytest.approx(metrics.mean_roc_auc(y, prob))
    path = write_saved(blend.form(), tmp_path / "blend.ranks")
    assert np.array_equal(load_stacker(path, 5, 10).apply([prob, other]), oof)
    np.savez(tmp_path / "bad.ranks", knots=blend.form().knots[:, ::-1])  # decreasing quantiles: not a rank form
    with pytest.raises(UserError, match="bad.ranks: not a saved second level"):
        load_stacker(tmp_path / "bad.ranks")
    assert "rank_mean" in fit_blends([prob, other], sc, ("mean", "rank_mean"))
    assert "rank_mean" not in fit_blends([prob, other], Scoring(y, sc.fold, "log_loss", 0), ("mean", "rank_mean"))
    assert isinstance(blend.form(), RankForm)


def spec_file(tmp_path, name: str, *edits) -> str:
    text = (SPEC_DIR / f"{name}.yaml").read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{name}-edited.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("edits, problem", [
    ((("metric: mean_roc_auc", "metric: micro_f1"),), "metric micro_f1 scores labels, and the spec submits "
                                                      "probabilities: set submission: labels"),
    ((("submission: probabilities", "submission: csv"),), "submission 'csv'; valid: labels, probabilities"),
    ((("submission: probabilities", "submission: probabilities\nlabel_weights: {healthy: 1, rust: 1}"),),
     r"label_weights multiple_diseases: missing; scab: missing"),
    ((("submission: probabilities", "submission: probabilities\nlabel_weights: {healthy: -1, rust: 1, scab: 1, "
       "multiple_diseases: 1}"),), r"label_weights healthy: -1"),
])
def test_a_spec_whose_metric_and_submission_disagree_is_refused(tmp_path, edits, problem):
    with pytest.raises(UserError, match=problem):
        load_spec(spec_file(tmp_path, "plant2020", *edits))


def test_label_weights_weigh_the_columns(tmp_path):
    spec = load_spec(spec_file(tmp_path, "plant2020", ("submission: probabilities", "submission: probabilities\n"
                                                       "label_weights: {healthy: 0, multiple_diseases: 1, rust: 1, "
                                                       "scab: 2}")))
    rng = np.random.default_rng(3)
    y = (rng.random((200, 4)) < 0.4).astype(np.uint8)
    prob = np.clip(y * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    per = [skm.roc_auc_score(y[:, j], prob[:, j]) for j in range(4)]
    assert Scoring.of(spec, y, np.zeros(200)).of_pred(prob) == pytest.approx((per[1] + per[2] + 2 * per[3]) / 4)
    # a model's OOF score at training (pipelines.run) weighs them too
    assert metrics.score_at(spec.metric, y, prob, 0.5, 1, spec.column_weights()) == pytest.approx(
        (per[1] + per[2] + 2 * per[3]) / 4)


@pytest.fixture(scope="module")
def auc_run(tmp_path_factory):
    """A generated one-hot competition with patients, scored by column-wise ROC-AUC: two members, 3 folds."""
    root = tmp_path_factory.mktemp("auc")
    spec = load_spec("ranzcr")
    generate(root / "data", n_train=180, n_test=40, size=32, seed=2, workers=1, spec=spec)
    ds = load_dataset(spec, root / "data")
    run = RunLayout.of(root / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    for name, seed in (("tiny", 0), ("tiny_b", 1)):
        train_model(spec, ds, run, resolve("tiny", ["epochs=2", f"seed={seed}"], name=name), **QUIET)
    return spec, ds, run, root / "data"


def test_an_auc_submission_is_probability_columns_reproduced_by_its_bundle(auc_run, tmp_path):
    """Every blend (the rank blend among them) for the metric, no thresholds ('none'), the fully nested estimate
    fold by fold; the CSV: a column per label in the spec's names, 9 significant digits; the bundle's rows
    byte for byte; `make report` draws per-label AUC and AP."""
    from submissions.report import make_report
    spec, ds, run, data = auc_run
    sub = run_submit(spec, ds, run, settings(spec, trials=2), "test", **QUIET)
    assert "rank_mean" in sub.ensemble.blends and sub.thresholds.method == "none"
    per_fold = [f.score for f in sub.nested.per_fold]
    sizes = [int((sub.ensemble.scoring.fold == f.fold).sum()) for f in sub.nested.per_fold]
    assert sub.nested.score == pytest.approx(np.dot(per_fold, sizes) / sum(sizes))
    frame = pd.read_csv(sub.path, dtype=str)
    assert list(frame.columns) == [spec.id_column, *spec.tokens] and len(frame) == 40
    values = frame[spec.tokens].astype(float).to_numpy()
    assert ((values >= 0) & (values <= 1)).all() and len(np.unique(values)) > 40
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_bytes() == sub.path.read_bytes()
    paths = make_report(spec, sub.ensemble, sub.thresholds, tmp_path / "report")
    assert {"per_label_auc.png", "per_label_ap.png", "temperatures.png"} <= {p.name for p in paths}


def test_a_log_loss_submission_compares_temperatures(auc_run, tmp_path):
    spec, ds, run, data = auc_run
    spec = load_spec(spec_file(tmp_path, "ranzcr", ("metric: mean_roc_auc", "metric: log_loss")))
    run = RunLayout.of(run.root.parent, spec.name)
    lines = []
    sub = run_submit(spec, ds, run, settings(spec, trials=2), "test", log=lines.append)
    assert "rank_mean" not in sub.ensemble.blends
    assert [r.method for r in sub.thresholds.comparison] == ["none", "temperature"]
    assert sub.nested.score < 0 and any(line.startswith("temperature method") for line in lines)
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_bytes() == sub.path.read_bytes()


@pytest.mark.parametrize("edit, problem", [
    (lambda f: f.__setitem__("CVC - Normal", f["CVC - Normal"].where(f.index != 3, "1.5")),
     r"1 probabilities outside \[0, 1\]:\n  line 5 \(.*\): CVC - Normal='1.5'"),
    (lambda f: f.__setitem__("ETT - Normal", f["ETT - Normal"].where(f.index != 0, "nan")),
     r"1 cells that are NaN or infinite:\n  line 2 \(.*\): ETT - Normal='nan'"),
    (lambda f: f.__setitem__("ETT - Normal", f["ETT - Normal"].where(f.index != 1, "")),
     r"1 cells that are not numbers:\n  line 3 \(.*\): ETT - Normal=''"),
    (lambda f: f.drop(columns="NGT - Normal", inplace=True), r"\(missing \['NGT - Normal'\]\)"),
    (lambda f: f.insert(1, "ETT - Normal", f.pop("ETT - Normal")),
     r"the same columns out of order: column 2 is 'ETT - Normal', expected 'ETT - Abnormal'"),
])
def test_a_broken_probability_submission_is_named(auc_run, tmp_path, edit, problem):
    spec, ds, run, data = auc_run
    good = run_submit(spec, ds, run, settings(spec, trials=2), "test", **QUIET).path  # reused: its artifacts
    frame = pd.read_csv(good, dtype=str, keep_default_na=False)
    edit(frame)
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(UserError, match=problem):
        validate_file(bad, spec, list(ds.test["id"]))


def test_a_rank_blend_is_no_teacher(auc_run):
    from distill.teacher import build_teacher
    spec, ds, run, _ = auc_run
    with pytest.raises(UserError, match="blend rank_mean: its values are ranks, not probabilities"):
        build_teacher(spec, ds, run, ["tiny", "tiny_b"], "rank_mean")
    assert build_teacher(spec, ds, run, ["tiny", "tiny_b"]).blend != "rank_mean"


def test_an_edited_bundle_with_a_nonpositive_temperature_is_refused(auc_run, tmp_path):
    import json
    spec, ds, run, data = auc_run
    sub = run_submit(spec, ds, run, settings(spec, trials=2, blends=("mean",)), "test", **QUIET)
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    copy = tmp_path / "b"
    shutil.copytree(folder, copy)
    record = json.loads((copy / "bundle.json").read_text())
    record["thresholds"][2] = 0.0
    (copy / "bundle.json").write_text(json.dumps(record))
    from bundle.manifest import write_manifest
    write_manifest(copy, {"oof": 0, "nested": 0, "metric": "m"})  # re-signed, as a careless hand would
    with pytest.raises(UserError, match=r"temperatures of a mean_roc_auc submission\) not > 0: ETT - Normal=0.0"):
        predict_bundle(copy, data, tmp_path / "p.csv", **QUIET)


def test_voc2007_in_miniature_submits_probabilities_scored_by_map(tmp_path):
    """`make demo-data COMP=voc2007`: VOC's files under its 20 classes; the chain optimises mAP and submits a
    probability column per class, which its bundle reproduces byte for byte and `make validate` accepts."""
    from submissions.validate import main as validate
    spec = load_spec("voc2007")
    data = tmp_path / "data"
    generate(data, n_train=120, n_test=30, size=32, seed=3, workers=1, spec=spec)
    assert sorted(p.name for p in (data / spec.labels_dir).glob("*_test.txt"))[0] == "aeroplane_test.txt"
    ds = load_dataset(spec, data)
    assert ds.targets().shape == (120, 20) and ds.targets()[:, 18:].sum() > 0  # classes past the demo's 18 occur
    run = RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, trials=2), "test", **QUIET)
    assert sub.ensemble.scoring.metric == "macro_ap" and sub.thresholds.method == "none"
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_bytes() == sub.path.read_bytes()
    assert validate([str(sub.path), "--comp", str(SPEC_DIR / "voc2007.yaml"), "--data", str(data)]) == 0
