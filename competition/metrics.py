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
    """Every metric at once, for reports and run metadata."""
    pred = decide(prob, thresholds, min_labels)
    return {
        "micro_f1": f1(y, pred, "micro"),
        "macro_f1": f1(y, pred, "macro"),
        "samples_f1": f1(y, pred, "samples"),
        "micro_precision": precision(y, pred),
        "micro_recall": recall(y, pred),
        "mAP": macro_ap(y, prob),
        "macro_roc_auc": mean_roc_auc(y, prob),
        "log_loss": -neg_log_loss(y, prob),
        "hamming_loss": hamming_loss(y, pred),
        "subset_accuracy": subset_accuracy(y, pred),
        "top1_hit_rate": top1_hit_rate(y, prob),
        "jaccard": jaccard(y, pred),
    }


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


# Probability metrics, column-wise as Kaggle scores them (RANZCR, Plant Pathology 2020: the mean of each label
# column's score); `weights` weigh the columns (None: equal). A column with one class has no AUC or AP and is left
# out of the mean, as sklearn's average=None then np.nanmean would do.

def column_mean(scores: np.ndarray, weights=None) -> float:
    ok = np.isfinite(scores)
    if not ok.any():
        return float("nan")
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.sum(scores[ok] * w[ok]) / np.sum(w[ok]))


def roc_auc_columns(y, prob) -> np.ndarray:
    """Each column's ROC-AUC (ties count one half, as sklearn's roc_auc_score), by ranks: all columns at once,
    fast enough for blend-weight searches; NaN where a column has one class."""
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
    exact_thresholds: bool = False  # thresholds.exact_per_label's counting argument holds (micro-F1 only)
    ranking: bool = False           # only each column's order counts (AUC, AP): rank blends apply, calibration cannot
                                    # change the score

    @property
    def probabilities(self) -> bool:
        return self.scores == "probabilities"


OBJECTIVES = {o.name: o for o in [
    Objective("micro_f1", fast_micro_f1, exact_thresholds=True),
    Objective("macro_f1", fast_macro_f1),
    Objective("samples_f1", functools.partial(fast_samples_fbeta, beta=1.0)),
    Objective("samples_f2", functools.partial(fast_samples_fbeta, beta=2.0)),
    Objective("mean_roc_auc", mean_roc_auc, "probabilities", ranking=True),
    Objective("macro_ap", macro_ap, "probabilities", ranking=True),
    Objective("log_loss", neg_log_loss, "probabilities"),
]}


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown metric {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def score_at(metric: str, y, prob, threshold: float, min_labels: int) -> float:
    """The metric of raw probabilities: decided at one threshold (label metrics) or as they are (probability ones)."""
    o = objective(metric)
    return o.score(y, prob) if o.probabilities else o.score(y, decide(prob, threshold, min_labels))
