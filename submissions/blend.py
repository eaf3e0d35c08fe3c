"""Blending members' probabilities: plain mean, OOF-tuned weights, and fold-wise stacking.

Every method gives the OOF, the test probabilities, and the test probabilities of each fold's models alone
(fold f's models never saw fold f's rows: what a distilled student of fold f may learn on test rows).
Stacking is fitted fold by fold, so its own OOF stays honest; the weighted mean's weights are tuned on OOF (few degrees of freedom), and a single
member is a weight vector too, so the weighted blend never scores below the best member.
"""
from __future__ import annotations

import itertools

import numpy as np
from sklearn.linear_model import LogisticRegression

from submissions.thresholds import global_threshold, score

EPS = 1e-6
BLENDS = ("mean", "weighted", "stack")


def logit(p):
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def quick_score(y, prob, min_labels, metric="micro_f1") -> float:
    """Blend selection score: the metric at the best single global threshold."""
    return score(y, prob, global_threshold(y, prob, min_labels, metric), min_labels, metric)


def mean_blend(oofs, tests, weights=None):
    w = np.ones(len(oofs)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return np.tensordot(w, np.stack(oofs), 1), np.tensordot(w, np.stack(tests), 1)


def tune_weights(oofs, y, min_labels, step=0.1, metric="micro_f1") -> np.ndarray:
    """Grid over the weight simplex (exhaustive for <= 4 members, coordinate ascent beyond)."""
    m = len(oofs)
    if m == 1:
        return np.ones(1)
    grid = np.round(np.arange(0, 1 + 1e-9, step), 6)
    best_w, best = None, -1.0
    if m <= 4:
        candidates = (np.array(c) for c in itertools.product(grid, repeat=m) if abs(sum(c) - 1) < 1e-6)
        for w in candidates:
            s = quick_score(y, np.tensordot(w, np.stack(oofs), 1), min_labels, metric)
            if s > best:
                best, best_w = s, w
        return best_w
    w = np.full(m, 1.0 / m)
    best = quick_score(y, np.tensordot(w, np.stack(oofs), 1), min_labels, metric)
    for _ in range(3):
        for i in range(m):
            for v in grid:
                trial = w.copy()
                trial[i] = v
                if trial.sum() == 0:
                    continue
                trial /= trial.sum()
                s = quick_score(y, np.tensordot(trial, np.stack(oofs), 1), min_labels, metric)
                if s > best:
                    best, w = s, trial
    return w


def stack_features(probs):
    return np.concatenate([logit(p) for p in probs], axis=1)


def stacking(oofs, tests, fold_tests, y, fold, C=1.0):
    """Per label, logistic regression on every member's logits of every label (co-occurrence included).
    Returns (oof, test, by_fold): by_fold[f] is fold f's stacker on fold f's models' test probabilities."""
    x, x_test = stack_features(oofs), stack_features(tests)
    folds = np.unique(fold)
    x_fold = [stack_features([t[f] for t in fold_tests]) for f in folds]
    oof, test = np.zeros_like(oofs[0]), np.zeros_like(tests[0])
    by_fold = np.zeros((len(folds), *tests[0].shape))
    for j in range(y.shape[1]):
        for f in folds:
            inner, outer = fold != f, fold == f
            oof[outer, j], by_fold[f, :, j] = fit_predict(x[inner], y[inner, j], [x[outer], x_fold[f]], C)
        test[:, j] = fit_predict(x, y[:, j], [x_test], C)[0]
    return oof, test, by_fold


def fit_predict(x, yj, x_new: list, C) -> list:
    if yj.min() == yj.max():
        return [np.full(len(v), float(yj[0])) for v in x_new]
    lr = LogisticRegression(C=C, max_iter=2000).fit(x, yj)
    return [lr.predict_proba(v)[:, 1] for v in x_new]


def blend_all(members, y, fold, min_labels, use_full: dict | None = None, metric="micro_f1") -> dict:
    """Every method's oof, test, fold_tests (k, test rows, labels), weights and selection score."""
    use_full = use_full or {}
    oofs = [m.oof for m in members]
    tests = [m.test(use_full.get(m.name, False)) for m in members]
    fold_tests = [m.test_by_fold for m in members]
    out = {}
    weights = {"mean": np.ones(len(members)) / len(members),
               "weighted": tune_weights(oofs, y, min_labels, metric=metric)}
    for name, w in weights.items():
        oof, test = mean_blend(oofs, tests, w)
        out[name] = {"oof": oof, "test": test, "fold_tests": mean_blend(fold_tests, fold_tests, w)[0],
                     "weights": [float(v) for v in w]}
    if len(members) > 1:
        oof, test, by_fold = stacking(oofs, tests, fold_tests, y, fold)
        out["stack"] = {"oof": oof, "test": test, "fold_tests": by_fold, "weights": None}
    for v in out.values():
        v["score"] = quick_score(y, v["oof"], min_labels, metric)
    return out
