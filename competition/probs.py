"""Probability arithmetic shared by blending (submissions.blend) and prediction (bundle.predict), so a bundle
blends new rows exactly as the submission blended its test rows."""
from __future__ import annotations

import numpy as np

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before taking logits


def logit(p):
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


ROW_CHUNK = 8192  # rows per step of a blend: three members' copies of a step stay ~200 MB at 1,103 labels


def weighted_mean(arrays, weights=None, of=None, then=None) -> np.ndarray:
    """The weighted mean of same-shape arrays (equal weights for None; normalised to sum 1), of `of(array)` if
    given, mapped by `then` if given, ROW_CHUNK rows at a time: no stacked copy of every member (three members of
    iMet's 100,000 x 1,103 are 2.6 GB, and their logits as many again), nor a whole-array temporary of `then`.
    Each row's sum is the one a whole-array tensordot gives."""
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    first = np.asarray(arrays[0])
    out = np.empty(first.shape, dtype=np.result_type(first, w))
    for start in range(0, len(first), ROW_CHUNK):
        rows = [np.asarray(a[start:start + ROW_CHUNK]) for a in arrays]
        mean = np.tensordot(w, np.stack([of(r) for r in rows] if of else rows), 1)
        out[start:start + ROW_CHUNK] = then(mean) if then else mean
    return out


def stack_features(probs) -> np.ndarray:
    """A second level's inputs: every member's logits of every label, side by side."""
    return np.concatenate([logit(p) for p in probs], axis=1)


def calibrate(prob, temperatures) -> np.ndarray:
    """Per-label temperature, sigmoid(logit(p) / T): a probability submission's last step (log loss). A label at
    T = 1 keeps its probabilities exactly (the blends of ranking metrics pass through untouched)."""
    prob = np.asarray(prob, dtype=np.float64)
    t = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), prob.shape[1:])
    out = prob.copy()
    cols = t != 1
    if cols.any():
        out[:, cols] = sigmoid(logit(prob[:, cols]) / t[cols])
    return out
