"""Multi-label metrics as pure functions of (y_true, predictions or probabilities), via scikit-learn.

Macro metrics skip nothing silently: F1/precision/recall count a label absent from y_true and
never predicted as 0 (zero_division=0); ranking metrics (AP, ROC-AUC) are undefined for such a
label and average over the labels where they are defined.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from competition.errors import UserError


def decide(prob: np.ndarray, thresholds, min_labels: int) -> np.ndarray:
    """Binary predictions: prob >= threshold per label, then force the top `min_labels` on empty rows."""
    prob = np.asarray(prob, dtype=np.float64)
    pred = (prob >= np.asarray(thresholds, dtype=np.float64)).astype(np.uint8)
    if min_labels > 0:
        short = pred.sum(1) < min_labels
        if short.any():
            # Stable: among tied scores the first label wins, as np.argmax picks it (the threshold searches count so).
            top = np.argsort(-prob[short], axis=1, kind="stable")[:, :min_labels]
            rows = np.nonzero(short)[0][:, None]
            pred[rows, top] = 1
    return pred


def f1(y, pred, average="micro"):
    return float(skm.f1_score(y, pred, average=average, zero_division=0))


def precision(y, pred, average="micro"):
    return float(skm.precision_score(y, pred, average=average, zero_division=0))


def recall(y, pred, average="micro"):
    return float(skm.recall_score(y, pred, average=average, zero_division=0))


def hamming_loss(y, pred):
    return float(skm.hamming_loss(y, pred))


def subset_accuracy(y, pred):
    return float(skm.accuracy_score(y, pred))


def jaccard(y, pred):
    return float(skm.jaccard_score(y, pred, average="samples", zero_division=0))


def per_label(fn, y, score):
    """fn over the labels where y has both classes; NaN elsewhere."""
    y = np.asarray(y)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        if 0 < y[:, j].sum() < len(y):
            out[j] = fn(y[:, j], score[:, j])
    return out


def top1_hit_rate(y, prob):
    """Share of rows whose highest-scoring label is a true label."""
    y = np.asarray(y)
    return float(y[np.arange(len(y)), np.argmax(prob, axis=1)].mean())


def summary(y, prob, thresholds, min_labels: int) -> dict:
    """Every metric at once, for reports and run metadata. The decision metrics from counts (each equals
    scikit-learn's, tested), the ranking ones a block of columns at a time: at iMet's 100,000 x 1,103 scikit-learn's
    multi-label checks and a whole-matrix rank held 5 GB more than the OOF itself (benchmarks/submit_scale.py)."""
    y = np.asarray(y).astype(bool)
    pred = decide(prob, thresholds, min_labels).astype(bool)
    tp = y & pred
    tp_rows, pred_rows, true_rows = tp.sum(1), pred.sum(1), y.sum(1)
    union = true_rows + pred_rows - tp_rows
    return {
        "micro_f1": fast_micro_f1(y, pred),
        "macro_f1": fast_macro_f1(y, pred),
        "samples_f1": fast_samples_fbeta(y, pred),
        "micro_precision": ratio(tp_rows.sum(), pred_rows.sum()),
        "micro_recall": ratio(tp_rows.sum(), true_rows.sum()),
        "mAP": macro_ap(y, prob),
        "macro_roc_auc": mean_roc_auc(y, prob),
        "log_loss": -neg_log_loss(y, prob),
        "hamming_loss": float(np.mean(true_rows + pred_rows - 2 * tp_rows) / y.shape[1]),
        "subset_accuracy": float(np.mean((tp_rows == true_rows) & (tp_rows == pred_rows))),
        "top1_hit_rate": top1_hit_rate(y, prob),
        "jaccard": float(np.mean(np.where(union > 0, tp_rows / np.maximum(union, 1), 0.0))),
    }


def ratio(a, b) -> float:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    return float(a / b) if b else 0.0


# Objectives: what blending and thresholds maximise, named by a spec's `metric`. Each is a pure
# function of (y, binary predictions), equal to sklearn's (tested) and fast enough for search loops.

def fast_micro_f1(y, pred) -> float:
    """sklearn's f1_score(average='micro', zero_division=0), 30x faster."""
    tp = np.logical_and(y == 1, pred == 1).sum()
    denom = pred.sum() + y.sum()
    return float(2 * tp / denom) if denom else 0.0


def fast_macro_f1(y, pred) -> float:
    """sklearn's f1_score(average='macro', zero_division=0)."""
    tp = np.logical_and(y == 1, pred == 1).sum(0)
    denom = pred.sum(0) + y.sum(0)
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def fast_samples_fbeta(y, pred, beta: float = 1.0) -> float:
    """sklearn's fbeta_score(average='samples', zero_division=0): per-image F-beta, averaged (Planet used F2)."""
    tp = np.logical_and(y == 1, pred == 1).sum(1)
    b2 = beta * beta
    denom = b2 * y.sum(1) + pred.sum(1)
    return float(np.mean(np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1), 0.0)))


def micro_f1_at_each(y, prob, grid, min_labels: int) -> np.ndarray:
    """micro-F1 of decide(prob, t, min_labels) for every t of `grid` at once (min_labels 0 or 1), by counting
    with sorted scores instead of deciding once per t: blend weight searches call this thousands of times. Pooled
    counts need no per-row or per-label bins, so it keeps its sorts rather than summing counts_at_each's labels
    (the same counts, several times slower at COMP5329's size)."""
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)

    def at_least(sorted_values):  # how many values are >= each t
        return len(sorted_values) - np.searchsorted(sorted_values, grid, side="left")
    predicted = at_least(np.sort(prob.ravel()))
    tp = at_least(np.sort(prob[y]))
    if min_labels >= 1:  # a row with nothing above t gets its top label: its max is below t
        top = np.argmax(prob, axis=1)
        row_max = prob[np.arange(len(prob)), top]
        empty = len(prob) - at_least(np.sort(row_max))
        top_true = y[np.arange(len(prob)), top]
        empty_true = np.sum(top_true) - at_least(np.sort(row_max[top_true]))
        predicted, tp = predicted + empty, tp + empty_true
    denom = predicted + y.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


COUNT_CHUNK = 8192  # rows per pass of counts_at_each: its bin indices stay ~70 MB at a thousand labels


def grid_bins(grid: np.ndarray, p: np.ndarray) -> np.ndarray:
    """np.searchsorted(grid, p, side="right"): how many grid values are <= each p. An evenly spaced grid (the
    thresholds' GRID) by arithmetic, then one step each way where rounding put a value one bin off: samples F2 at
    every threshold of 100,000 x 1,103 random cells in 2.7 s against the binary search's 5.1 s (the best global
    threshold is the most frequent search of `make submit`, benchmarks/submit_scale.py)."""
    n = len(grid)
    step = (grid[-1] - grid[0]) / (n - 1) if n > 1 else 0.0
    if n < 2 or step <= 0 or not np.allclose(np.diff(grid), step, rtol=1e-9, atol=0):
        return np.searchsorted(grid, p, side="right")
    bins = np.floor((p - grid[0]) * (1 / step)).astype(np.int64) + 1
    np.clip(bins, 0, n, out=bins)
    bins += (bins < n) & (grid[np.minimum(bins, n - 1)] <= p)
    bins -= (bins > 0) & (grid[np.maximum(bins - 1, 0)] > p)
    return bins


def counts_at_each(y, prob, grid, min_labels: int, per: str) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predictions of decide(prob, t, min_labels) at every t of `grid` (min_labels 0 or 1),
    per row (`per="rows"`: arrays of rows x len(grid)) or per label (`"labels"`), by counting: each probability's
    grid bin once, then a cumulative sum over the bins, instead of deciding every cell once per t."""
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    n, labels = prob.shape
    width = len(grid) + 1
    hist = {"pred": np.zeros((n if per == "rows" else labels, width), np.int64)}
    hist["tp"] = np.zeros_like(hist["pred"])
    for start in range(0, n, COUNT_CHUNK):
        p, yy = prob[start:start + COUNT_CHUNK], y[start:start + COUNT_CHUNK]
        bins = grid_bins(grid, p)  # a cell is predicted at grid[g] exactly when g < its bin
        owner = np.arange(len(p))[:, None] if per == "rows" else np.arange(labels)[None, :]
        key = owner * width + bins
        size = (len(p) if per == "rows" else labels) * width
        place = slice(start, start + len(p)) if per == "rows" else slice(None)
        hist["pred"][place] += np.bincount(key.ravel(), minlength=size).reshape(-1, width)
        hist["tp"][place] += np.bincount(key[yy], minlength=size).reshape(-1, width)
    # predicted at grid[g]: the cells whose bin is above g
    tp, pred = (np.cumsum(hist[k][:, ::-1], axis=1)[:, ::-1][:, 1:] for k in ("tp", "pred"))
    if min_labels >= 1:  # a row with nothing at or above t gets its top label: its max is below t
        top = np.argmax(prob, axis=1)
        empty_from = np.searchsorted(grid, prob[np.arange(n), top], side="right")  # empty at grid[g] when g >= this
        top_true = y[np.arange(n), top]
        if per == "rows":
            empty = np.arange(len(grid))[None, :] >= empty_from[:, None]
            pred, tp = pred + empty, tp + (empty & top_true[:, None])
        else:
            for extra, rows in ((pred, slice(None)), (tp, top_true)):
                at = np.zeros((labels, width), np.int64)
                np.add.at(at, (top[rows], empty_from[rows]), 1)
                extra += np.cumsum(at, axis=1)[:, :-1]
    return tp, pred


def macro_f1_at_each(y, prob, grid, min_labels: int) -> np.ndarray:
    """fast_macro_f1 of decide(prob, t, min_labels) for every t of `grid` (min_labels 0 or 1)."""
    tp, pred = counts_at_each(y, prob, grid, min_labels, "labels")
    denom = pred + np.asarray(y).sum(0)[:, None]
    return np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0), axis=0)


def samples_fbeta_at_each(y, prob, grid, min_labels: int, beta: float = 1.0) -> np.ndarray:
    """fast_samples_fbeta of decide(prob, t, min_labels) for every t of `grid` (min_labels 0 or 1)."""
    tp, pred = counts_at_each(y, prob, grid, min_labels, "rows")
    b2 = beta * beta
    denom = b2 * np.asarray(y).sum(1)[:, None] + pred
    return np.mean(np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1), 0.0), axis=0)


# Probability metrics, column-wise as Kaggle scores them (RANZCR, Plant Pathology 2020: the mean of each label
# column's score); `weights` weigh the columns (None: equal). A column with one class has no AUC or AP and is left
# out of the mean, as sklearn's average=None then np.nanmean would do.

def column_mean(scores: np.ndarray, weights=None) -> float:
    ok = np.isfinite(scores)
    if not ok.any():
        return float("nan")
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.sum(scores[ok] * w[ok]) / np.sum(w[ok]))


COLUMN_CHUNK = 128  # columns per step of a column-wise metric: a step's ranks stay ~100 MB at 100,000 rows


def by_columns(fn):
    """A column-wise metric computed COLUMN_CHUNK columns at a time (each column's value is its own: the same
    numbers), so no whole-matrix temporary is held (several of 880 MB at iMet's 100,000 x 1,103)."""
    @functools.wraps(fn)
    def chunked(y, prob) -> np.ndarray:
        y, prob = np.asarray(y), np.asarray(prob)
        n = prob.shape[1]
        return np.concatenate([fn(y[:, a:a + COLUMN_CHUNK], prob[:, a:a + COLUMN_CHUNK])
                               for a in range(0, n, COLUMN_CHUNK)]) if n else np.zeros(0)
    return chunked


@by_columns
def roc_auc_columns(y, prob) -> np.ndarray:
    """Each column's ROC-AUC (ties count one half, as sklearn's roc_auc_score), by ranks: all columns of a chunk at
    once, fast enough for blend-weight searches; NaN where a column has one class."""
    y = np.asarray(y).astype(bool)
    ranks = rankdata(np.asarray(prob, dtype=np.float64), axis=0)
    pos = y.sum(0)
    neg = len(y) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def mean_roc_auc(y, prob, weights=None) -> float:
    return column_mean(roc_auc_columns(y, prob), weights)


def macro_ap(y, prob, weights=None) -> float:
    """mAP: each column's average precision (sklearn's, the VOC 2010+ definition), averaged."""
    return column_mean(per_label(skm.average_precision_score, y, prob), weights)


LOG_LOSS_CLIP = 1e-15  # Kaggle's log-loss scorers clip probabilities to [1e-15, 1 - 1e-15]


@by_columns
def log_loss_columns(y, prob) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    y = np.asarray(y).astype(bool)
    return -np.where(y, np.log(p), np.log1p(-p)).mean(0)


def neg_log_loss(y, prob, weights=None) -> float:
    """Minus the mean column-wise binary log loss: every objective is maximised (sklearn's neg_log_loss)."""
    return -column_mean(log_loss_columns(y, prob), weights)


SUBMISSIONS = ("labels", "probabilities")


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    score: Callable                 # (y, decisions or probabilities[, weights]) -> float, higher is better
    scores: str = "labels"          # labels: 0/1 decisions (thresholds are tuned) | probabilities: the probabilities
    counts: str | None = None       # micro | samples: an F-score of pooled or per-row counts, which the exact
    beta: float = 1.0               # threshold search (thresholds.CoordinateAscent) maximises label by label
    ranking: bool = False           # only each column's order counts (AUC, AP): rank blends apply, calibration cannot
                                    # change the score
    at_each: Callable | None = None  # (y, prob, grid, min_labels 0 or 1) -> the score at every threshold of the grid

    @property
    def probabilities(self) -> bool:
        return self.scores == "probabilities"

    @property
    def exact_thresholds(self) -> bool:
        return self.counts is not None


OBJECTIVES = {o.name: o for o in [
    Objective("micro_f1", fast_micro_f1, counts="micro", at_each=micro_f1_at_each),
    Objective("macro_f1", fast_macro_f1, at_each=macro_f1_at_each),
    Objective("samples_f1", functools.partial(fast_samples_fbeta, beta=1.0), counts="samples", beta=1.0,
              at_each=functools.partial(samples_fbeta_at_each, beta=1.0)),
    Objective("samples_f2", functools.partial(fast_samples_fbeta, beta=2.0), counts="samples", beta=2.0,
              at_each=functools.partial(samples_fbeta_at_each, beta=2.0)),
    Objective("mean_roc_auc", mean_roc_auc, "probabilities", ranking=True),
    Objective("macro_ap", macro_ap, "probabilities", ranking=True),
    Objective("log_loss", neg_log_loss, "probabilities"),
]}


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown metric {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def score_at(metric: str, y, prob, threshold: float, min_labels: int, weights=None) -> float:
    """The metric of raw probabilities: decided at one threshold (label metrics) or as they are, with the spec's
    column weights (probability ones)."""
    o = objective(metric)
    return o.score(y, prob, weights) if o.probabilities else o.score(y, decide(prob, threshold, min_labels))
