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


def weighted_mean(arrays, weights=None) -> np.ndarray:
    """The weighted mean of same-shape arrays (equal weights for None); weights are normalised to sum 1."""
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), np.stack(arrays), 1)


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
