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


class Rows(np.lib.mixins.NDArrayOperatorsMixin):
    """Some rows of an array, gathered when read: `Rows(a, mask)[i:j]` is `a[mask][i:j]` without the copy of
    `a[mask]`. The fully nested estimate hands each member's K-1 folds of OOF rows this way (three copies of
    706 MB at iMet's 100,000 x 1,103, benchmarks/submit_scale.py): blends read them ROW_CHUNK rows at a time
    (weighted_mean) or every k-th row (tune_weights), a column reads its column. Anything else (np.asarray,
    arithmetic, an array method) gathers every row first: the very values of the copy, held for that use alone."""

    def __init__(self, base: np.ndarray, rows):
        rows = np.asarray(rows)
        self.base, self.rows = base, np.flatnonzero(rows) if rows.dtype == bool else rows
        self.shape, self.dtype, self.ndim = (len(self.rows),) + base.shape[1:], base.dtype, base.ndim
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.base[self.rows]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if first is Ellipsis or first is None or any(not isinstance(k, (slice, int, np.integer)) for k in rest):
            return np.asarray(self)[key]  # indices that index several axes at once: the copy's own indexing
        return self.base[(self.rows[first],) + rest]

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return getattr(ufunc, method)(*(np.asarray(x) if isinstance(x, Rows) else x for x in inputs), **kwargs)

    def __getattr__(self, name):  # the array's other attributes and methods (sum, astype, T), on the gathered rows
        if name.startswith("__") or name in ("base", "rows"):  # numpy's protocol probes (__array_interface__...)
            raise AttributeError(name)
        return getattr(np.asarray(self), name)


ROW_CHUNK = 8192  # rows per step of a blend: three members' copies of a step stay ~200 MB at 1,103 labels


def weighted_mean(arrays, weights=None, of=None, then=None) -> np.ndarray:
    """The weighted mean of same-shape arrays (equal weights for None; normalised to sum 1), of `of(array)` if
    given, mapped by `then` if given, ROW_CHUNK rows at a time: no stacked copy of every member (three members of
    iMet's 100,000 x 1,103 are 2.6 GB, and their logits as many again), nor a whole-array temporary of `then`.
    Each row's sum is the one a whole-array tensordot gives."""
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    first = arrays[0] if isinstance(arrays[0], Rows) else np.asarray(arrays[0])
    out = np.empty(first.shape, dtype=np.result_type(first.dtype, w))
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
