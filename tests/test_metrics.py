import numpy as np
import pytest
from sklearn import metrics as skm

from competition import metrics as m


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(int)
    prob = np.clip(y * 0.4 + rng.random((200, 6)) * 0.6, 0, 1)
    return y, prob, m.decide(prob, 0.5, 0)


def test_against_sklearn(data):
    y, prob, pred = data
    for avg in ("micro", "macro", "samples"):
        assert m.f1(y, pred, avg) == pytest.approx(skm.f1_score(y, pred, average=avg, zero_division=0))
    assert m.precision(y, pred) == pytest.approx(skm.precision_score(y, pred, average="micro"))
    assert m.recall(y, pred) == pytest.approx(skm.recall_score(y, pred, average="micro"))
    assert m.macro_ap(y, prob) == pytest.approx(skm.average_precision_score(y, prob, average="macro"))
    assert m.mean_roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob, average="macro"))
    assert m.hamming_loss(y, pred) == pytest.approx(skm.hamming_loss(y, pred))
    assert m.subset_accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert m.jaccard(y, pred) == pytest.approx(skm.jaccard_score(y, pred, average="samples"))


@pytest.mark.parametrize("min_labels", [0, 1])
def test_the_summary_from_counts_equals_sklearn(data, min_labels, monkeypatch):
    """The run records' summary counts its decisions and ranks columns a block at a time: every entry equals
    scikit-learn's, with rows that have no true and no predicted label, and over several column blocks."""
    y, prob, _ = data
    y = y.copy()
    y[:4] = 0
    prob = prob.copy()
    prob[:4] = 0.1  # no label above 0.5 either: empty for min_labels 0
    monkeypatch.setattr(m, "COLUMN_CHUNK", 4)  # 6 columns: two blocks
    got = m.summary(y, prob, 0.5, min_labels)
    pred = m.decide(prob, 0.5, min_labels)
    expected = {
        "micro_f1": skm.f1_score(y, pred, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0),
        "samples_f1": skm.f1_score(y, pred, average="samples", zero_division=0),
        "micro_precision": skm.precision_score(y, pred, average="micro", zero_division=0),
        "micro_recall": skm.recall_score(y, pred, average="micro", zero_division=0),
        "mAP": skm.average_precision_score(y, prob, average="macro"),
        "macro_roc_auc": skm.roc_auc_score(y, prob, average="macro"),
        "log_loss": np.mean([skm.log_loss(y[:, j], prob[:, j], labels=[0, 1]) for j in range(y.shape[1])]),
        "hamming_loss": skm.hamming_loss(y, pred),
        "subset_accuracy": skm.accuracy_score(y, pred),
        "top1_hit_rate": np.mean(y[np.arange(len(y)), prob.argmax(1)]),
        "jaccard": skm.jaccard_score(y, pred, average="samples", zero_division=0),
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("empty_rows", [False, True])
def test_objectives_equal_sklearn(data, empty_rows):
    y, prob, pred = data
    if empty_rows:  # images with no true and no predicted label: sklearn's zero_division=0 case
        y, pred = y.copy(), pred.copy()
        y[:5], pred[:5] = 0, 0
        pred[5:8] = 0
    expected = {
        "micro_f1": skm.f1_score(y, pred, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0),
        "samples_f1": skm.f1_score(y, pred, average="samples", zero_division=0),
        "samples_f2": skm.fbeta_score(y, pred, beta=2, average="samples", zero_division=0),
    }
    on_probabilities = {  # the probability metrics, column-wise
        "mean_roc_auc": skm.roc_auc_score(y, prob, average="macro"),
        "macro_ap": skm.average_precision_score(y, prob, average="macro"),
        "log_loss": -np.mean([skm.log_loss(y[:, j], prob[:, j], labels=[0, 1]) for j in range(y.shape[1])]),
    }
    assert set(expected) | set(on_probabilities) == set(m.OBJECTIVES)
    for name, value in expected.items():
        assert m.objective(name).score(y, pred) == pytest.approx(value), name
    for name, value in on_probabilities.items():
        assert m.objective(name).probabilities and m.objective(name).score(y, prob) == pytest.approx(value), name


def test_unknown_objective_names_the_valid_ones():
    from competition.errors import UserError
    with pytest.raises(UserError, match="unknown metric 'f1'; valid: micro_f1, macro_f1, samples_f1, samples_f2"):
        m.objective("f1")


def test_hand_computed_case():
    y = np.array([[1, 0, 1], [0, 1, 0]])
    prob = np.array([[0.9, 0.6, 0.2], [0.1, 0.3, 0.4]])
    pred = m.decide(prob, 0.5, min_labels=0)
    assert pred.tolist() == [[1, 1, 0], [0, 0, 0]]
    # TP=1, FP=1, FN=2 -> micro-F1 = 2/(2+1+2)
    assert m.f1(y, pred) == pytest.approx(0.4)
    assert m.top1_hit_rate(y, prob) == pytest.approx(0.5)  # row 0 top=0 (true), row 1 top=2 (false)
    assert m.hamming_loss(y, pred) == pytest.approx(3 / 6)


def test_at_least_one_label_rule():
    prob = np.array([[0.1, 0.3, 0.2], [0.7, 0.1, 0.9]])
    assert m.decide(prob, 0.5, 1).tolist() == [[0, 1, 0], [1, 0, 1]]
    assert m.decide(prob, 0.5, min_labels=2)[0].tolist() == [0, 1, 1]


def test_absent_label_does_not_crash():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])  # label 2 never true
    prob = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.2, 0.9, 0.3]])
    s = m.summary(y, prob, 0.5, 1)
    assert np.isfinite(s["mAP"]) and np.isfinite(s["macro_roc_auc"]) and np.isfinite(s["macro_f1"])
    assert s["mAP"] == pytest.approx(1.0)  # averaged over the two defined labels


@pytest.mark.parametrize("grid", [np.linspace(0.02, 0.98, 97), np.linspace(0.1, 0.9, 5), np.array([0.5]),
                                  np.array([0.1, 0.2, 0.5])])
def test_grid_bins_are_searchsorted(grid):
    """Counting by grid bins: arithmetic on an even grid, exact at the grid values and one ulp either side."""
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.random(20000), grid, np.nextafter(grid, 0), np.nextafter(grid, 1), [0.0, 1.0]])
    np.testing.assert_array_equal(m.grid_bins(grid, p), np.searchsorted(grid, p, side="right"))
