import numpy as np
import pandas as pd
import pytest

from competition import load_dataset, load_spec
from competition.artifacts import read_json, write_csv
from competition.errors import UserError
from competition.layout import RunLayout
from folds.split import read_folds, write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions.budget import cost
from submissions.members import load_members

K = 3
WEIGHT = 0.4


def oof_mark(fold):  # what the teacher said of a train row, by the row's fold: each fold tells itself apart
    return 0.1 + 0.2 * fold


def pseudo_mark(fold):  # fold `fold`'s models on the test rows
    return 0.15 + 0.2 * fold


@pytest.fixture
def teacher_run(demo_data, tmp_path):
    """A trained captions member whose probabilities are replaced by marks that tell where each came from."""
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, K, 0, False)
    train_model(spec, ds, run, resolve("captions"), log=lambda *_: None)
    model, fold = run.model("captions"), read_folds(run.folds, list(ds.train["id"]))
    oof = pd.read_csv(model.oof, dtype={"ImageID": str})
    oof[spec.tokens] = np.repeat(oof_mark(fold)[:, None], len(spec.tokens), 1)
    write_csv(model.oof, oof)
    for f in range(K):
        test = pd.read_csv(model.test_fold(f), dtype={"ImageID": str})
        test[spec.tokens] = pseudo_mark(f)
        write_csv(model.test_fold(f), test)
    return spec, ds, run, fold


def test_student_targets_come_only_from_out_of_fold_predictions(teacher_run, monkeypatch):
    """Each fold student learns train rows from the teacher's OOF and test rows from the fold's own teacher
    models: a target built from any prediction by a model that saw the student's validation rows would
    carry that fold's mark."""
    spec, ds, run, fold = teacher_run
    import pipelines.images
    from distill.student import run_distill
    seen, real_fit = [], pipelines.images.fit
    monkeypatch.setattr(pipelines.images, "fit",
                        lambda cfg, data, *a, **kw: seen.append(data) or real_fit(cfg, data, *a, **kw))
    run_distill(spec, ds, run, resolve("tiny", ["epochs=1"]), weight=WEIGHT, log=lambda *_: None)
    y, n = ds.targets().astype(float), len(ds.train)
    assert len(seen) == K + 1  # K fold students and the refit
    for f, data in enumerate(seen[:K]):
        assert (fold[data.val_rows] == f).all() and (fold[data.train_rows[data.train_rows < n]] != f).all()
        rows = data.train_rows[data.train_rows < n]
        want = WEIGHT * oof_mark(fold[rows])[:, None] + (1 - WEIGHT) * y[rows]
        np.testing.assert_allclose(data.train_y[:len(rows)], want, atol=1e-6)
        assert not np.isclose(data.train_y[:len(rows)] - (1 - WEIGHT) * y[rows], WEIGHT * oof_mark(f)).any()
        assert (data.train_rows[len(rows):] == n + np.arange(len(ds.test))).all()  # every test row, pseudo-labelled
        np.testing.assert_allclose(data.train_y[len(rows):], pseudo_mark(f), atol=1e-6)  # not the mean over folds
        np.testing.assert_array_equal(data.val_y, ds.targets()[data.val_rows])  # scored on the true labels
    refit = seen[K]
    assert len(refit.val_rows) == 0 and len(refit.train_rows) == n + len(ds.test)
    np.testing.assert_allclose(refit.train_y[n:], np.mean([pseudo_mark(f) for f in range(K)]), atol=1e-6)

    meta = read_json(run.model("tiny-student").meta)
    assert meta["config"]["distill"]["teacher"] == ["captions"] and meta["full"] is not None
    student, teacher = load_members(spec, ds, run, ["tiny-student", "captions"])
    assert student.teacher_gpu_hours == {"captions": teacher.gpu_hours}
    use = {"tiny-student": True, "captions": False}
    assert cost([student], use)[1] == pytest.approx(student.gpu_hours + teacher.gpu_hours)
    assert cost([student, teacher], use)[1] == pytest.approx(student.gpu_hours + teacher.gpu_hours)  # counted once
    from submissions.submit import run_submit

    from helpers import settings
    path = run_submit(spec, ds, run, settings(spec, method="fixed", trials=5), "test", ["tiny-student", "captions"],
                      log=lambda *_: None).path
    sidecar = read_json(path.with_suffix(".json"))
    st, = sidecar["students"]
    assert st["name"] == "tiny-student" and st["chosen"] and st["teacher"] == ["captions"]
    assert st["teacher_oof_score_global_thr"] == pytest.approx(meta["teacher"]["teacher_score"])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_temperature_and_no_pseudo_labels(teacher_run, monkeypatch, temperature):
    """TEMPERATURE divides the teacher's logits before the mix; PSEUDO=0 keeps the test rows out of training."""
    spec, ds, run, fold = teacher_run
    import pipelines.images
    from distill.student import run_distill
    seen, real_fit = [], pipelines.images.fit
    monkeypatch.setattr(pipelines.images, "fit",
                        lambda cfg, data, *a, **kw: seen.append(data) or real_fit(cfg, data, *a, **kw))
    run_distill(spec, ds, run, resolve("tiny", ["epochs=1"]), weight=WEIGHT, temperature=temperature, pseudo=False,
                log=lambda *_: None)
    y, n = ds.targets().astype(float), len(ds.train)
    for data in seen[:K]:
        assert (data.train_rows < n).all()  # no test row joined
        mark = oof_mark(fold[data.train_rows])[:, None]
        soft = 1 / (1 + np.exp(-np.log(mark / (1 - mark)) / temperature))  # by hand: sigmoid(logit / T)
        np.testing.assert_allclose(data.train_y, WEIGHT * soft + (1 - WEIGHT) * y[data.train_rows], atol=1e-6)
    assert (seen[K].train_rows < n).all() and len(seen[K].train_rows) == n  # the refit: every train row only
    with pytest.raises(UserError, match="temperature 0.0 must be > 0"):
        run_distill(spec, ds, run, resolve("tiny", ["epochs=1"]), temperature=0.0, log=lambda *_: None)


def test_a_changed_teacher_is_not_reused_silently(teacher_run):
    spec, ds, run, fold = teacher_run
    from distill.student import run_distill
    cfg = resolve("tiny", ["epochs=1", "folds=0"])
    run_distill(spec, ds, run, cfg, log=lambda *_: None)
    model = run.model("captions")
    oof = pd.read_csv(model.oof, dtype={"ImageID": str})
    oof[spec.tokens] = 0.5
    write_csv(model.oof, oof)
    with pytest.raises(UserError, match="config differs: distill.teacher_s"):
        run_distill(spec, ds, run, cfg, log=lambda *_: None)
    with pytest.raises(UserError, match="must be an image model"):
        run_distill(spec, ds, run, resolve("captions"), log=lambda *_: None)
    with pytest.raises(UserError, match="cannot be its own teacher"):
        run_distill(spec, ds, run, cfg, teacher=["tiny-student"], log=lambda *_: None)


def test_pseudo_labels_come_from_each_folds_own_models(teacher_run, monkeypatch):
    """`make pseudo` writes the blend's test probabilities per fold; a model trained with pseudo=NAME learns fold
    f's test rows from fold f's models only (they never saw fold f), keeps the labels of its train rows, and the
    confidence rule keeps only rows the ensemble is sure of."""
    spec, ds, run, fold = teacher_run
    import pipelines.images
    from distill.pseudo import write_pseudo
    record = write_pseudo(spec, ds, run, ["captions"], blend="mean", name="marks", log=lambda *_: None)
    assert record["members"] == ["captions"] and record["k"] == K and run.pseudo("marks").record.exists()
    seen, real_fit = [], pipelines.images.fit
    monkeypatch.setattr(pipelines.images, "fit",
                        lambda cfg, data, *a, **kw: seen.append(data) or real_fit(cfg, data, *a, **kw))
    # marks 0.15, 0.35, 0.55 per fold: max(p, 1 - p) = 0.85, 0.65, 0.55; at 0.6 fold 2's rows stay out
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "pseudo=marks", "pseudo_confidence=0.6", "fullfit=true"]),
                log=lambda *_: None)
    y, n = ds.targets().astype(float), len(ds.train)
    assert len(seen) == K + 1
    for f, data in enumerate(seen[:K]):
        rows = data.train_rows[data.train_rows < n]
        assert (fold[rows] != f).all() and (fold[data.val_rows] == f).all()
        np.testing.assert_array_equal(data.train_y[:len(rows)], y[rows])  # train rows keep their labels
        test_y = data.train_y[len(rows):]
        if f < 2:
            assert (data.train_rows[len(rows):] == n + np.arange(len(ds.test))).all()
            np.testing.assert_allclose(test_y, pseudo_mark(f), atol=1e-6)
        else:
            assert len(test_y) == 0
    refit = seen[K]  # the mean over folds, 0.35: 0.65 sure, so every test row joins
    np.testing.assert_allclose(refit.train_y[n:], np.mean([pseudo_mark(f) for f in range(K)]), atol=1e-6)
    assert read_json(run.model("tiny").meta)["config"]["pseudo_sha256"] == record["sha256"]


def test_pseudo_label_errors_and_captions_learn_soft_labels(teacher_run):
    spec, ds, run, fold = teacher_run
    from distill.pseudo import write_pseudo
    with pytest.raises(UserError, match="no pseudo-labels 'nope'"):
        train_model(spec, ds, run, resolve("tiny", ["epochs=1", "pseudo=nope"]), log=lambda *_: None)
    with pytest.raises(UserError, match="pseudo_confidence=0.3"):
        resolve("tiny", ["pseudo_confidence=0.3"])
    write_pseudo(spec, ds, run, ["captions"], name="p", log=lambda *_: None)
    cfg = resolve("captions", ["pseudo=p"]).replace(name="captions_pseudo")
    meta = train_model(spec, ds, run, cfg, log=lambda *_: None)  # soft targets as weighted 0/1 rows
    assert len(meta.folds_done) == K
    changed = read_json(run.pseudo("p").record) | {"sha256": "0" * 64}
    from competition.artifacts import write_json
    write_json(run.pseudo("p").record, changed)
    with pytest.raises(UserError, match="config differs: pseudo_sha256"):
        train_model(spec, ds, run, cfg, log=lambda *_: None)
