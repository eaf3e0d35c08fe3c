"""A fitted blend's saved form: what every blend's numbers come from. `make submit` fits a blend
(submissions.blend), whose OOF, fold tests and fully nested estimate are computed by its form's `apply`; it
writes the form beside its submission and blends the test rows from that file; `make export` copies it into
the bundle and `make predict` applies it to new rows: one arithmetic for every path.

Mean blends are their method and weights (the sidecar holds them). A stacked blend's final second level is
a file, never a pickle: per-label logistic regressions as arrays (`.npz`); trees and the MLP, which arrays
cannot hold, with skops (`.skops`), whose loader builds only the types SKOPS_TRUSTED names. The rank blend's
reference quantiles are arrays too (`.ranks`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from competition.errors import UserError, loading
from competition.probs import logit, sigmoid, stack_features, weighted_mean

MEAN_METHODS = ("mean", "weighted", "weighted_logit")  # MeanForm's: the mean blends of submissions.blend
# What a .skops file may build beyond skops' default-trusted scikit-learn and numpy types: the trees of
# HistGradientBoostingClassifier and the optimizer an MLPClassifier keeps. Anything else in the file is refused.
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]
SKOPS_HINT = "pip install skops (its stacked blend is a skops file)"
AGAIN = "make it again with this project's `make submit` and `make export`"


def with_constants(prob: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """A label seen with one class only in the second level's rows is that constant."""
    prob[:, ~np.isnan(constant)] = constant[~np.isnan(constant)]
    return prob


def constants(models) -> np.ndarray:
    """Per label: the constant of a label the second level saw with one class (a float), else NaN."""
    return np.array([m if isinstance(m, float) else np.nan for m in models])


class MeanForm:
    """A mean blend's saved form: its method and weights (the sidecar and bundle.json hold them)."""

    def __init__(self, method: str, weights):
        self.method, self.weights = method, weights

    def apply(self, probs: list[np.ndarray]) -> np.ndarray:
        if self.method == "weighted_logit":
            return weighted_mean(probs, self.weights, of=logit, then=sigmoid)
        return weighted_mean(probs, self.weights)


class LinearForm:
    """Per-label logistic regressions on the stacked features as arrays (`.npz`): what `stack` applies, in
    memory (its OOF, fold tests, the nested estimate, the teacher) and from its file (the test rows, predict)."""
    suffix = "npz"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, constant: np.ndarray):
        self.coef, self.intercept, self.constant = coef, intercept, constant

    @classmethod
    def of(cls, learner) -> LinearForm:
        """A fitted PerLabel of LogisticRegression (a float: a label with one class)."""
        models = learner.models
        width = max((m.coef_.shape[1] for m in models if not isinstance(m, float)), default=0)
        return cls(np.stack([np.zeros(width) if isinstance(m, float) else m.coef_[0] for m in models]),
                   np.array([0.0 if isinstance(m, float) else m.intercept_[0] for m in models]), constants(models))

    def apply(self, probs: list[np.ndarray]) -> np.ndarray:
        return with_constants(sigmoid(stack_features(probs) @ self.coef.T + self.intercept), self.constant.copy())

    def save(self, f) -> None:
        np.savez(f, coef=self.coef, intercept=self.intercept, constant=self.constant)

    @classmethod
    def load(cls, path: Path, n_labels: int | None, n_features: int | None) -> LinearForm:
        with np.load(path, allow_pickle=False) as arrays:
            coef, intercept, constant = (np.asarray(arrays[k], dtype=np.float64)
                                         for k in ("coef", "intercept", "constant"))
        rows = {coef.shape[0] if coef.ndim == 2 else -1, len(intercept), len(constant)}
        if coef.ndim != 2 or len(rows) != 1 or rows != ({n_labels} if n_labels else rows) or (
                n_features is not None and coef.shape[1] != n_features):
            raise ValueError(f"coef {coef.shape}, intercept {intercept.shape}, constant {constant.shape} for "
                             f"{n_labels} labels x {n_features} features")
        return cls(coef, intercept, constant)


class SkopsForm:
    """Trees per label or one MLP (`.skops`): scikit-learn estimators that arrays cannot hold, loaded with a trust
    list of types."""
    suffix = "skops"

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def of(cls, learner) -> SkopsForm:
        """A fitted PerLabel (trees) or MultiOutputMLP as plain skops-serialisable state."""
        if hasattr(learner, "models"):
            return cls({"models": [None if isinstance(m, float) else m for m in learner.models],
                        "constant": constants(learner.models)})
        constant = np.full(len(learner.net.classes_), np.nan)  # one network for every label; constants: one class
        constant[list(learner.constant)] = list(learner.constant.values())
        return cls({"net": learner.net, "constant": constant})

    def apply(self, probs: list[np.ndarray]) -> np.ndarray:
        x, state = stack_features(probs), self.state
        prob = (state["net"].predict_proba(x) if "net" in state else
                np.stack([np.zeros(len(x)) if m is None else m.predict_proba(x)[:, 1] for m in state["models"]],
                         axis=1))
        return with_constants(prob, np.asarray(state["constant"], dtype=np.float64))

    def save(self, f) -> None:
        import skops.io
        skops.io.dump(self.state, f)

    @classmethod
    def load(cls, path: Path, n_labels: int | None, n_features: int | None) -> SkopsForm:
        import skops.io
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
        if untrusted:
            raise UserError(f"{path}: holds types this project does not build ({', '.join(untrusted)}); {AGAIN}")
        state = skops.io.load(path, trusted=SKOPS_TRUSTED)
        if n_labels is not None and len(state["constant"]) != n_labels:
            raise ValueError(f"{len(state['constant'])} labels, not {n_labels}")
        return cls(state)


RANK_KNOTS = 1001  # quantiles per member and label (0.1% steps of the OOF ranks): 720 KB for 5 members x 18 labels


class RankForm:
    """rank_mean's saved form (`.ranks`, npz arrays): per member and label, RANK_KNOTS quantiles of its OOF
    probabilities. A row's value is the mean over members of where its probability falls among that member's OOF
    rows (interpolated between the quantiles): a rank average whose reference is the OOF, not the rows at hand,
    so one image predicted alone gets the value it gets in a batch."""
    suffix = "ranks"

    def __init__(self, knots: np.ndarray):
        self.knots = knots  # (members, RANK_KNOTS, labels), non-decreasing along the knots

    @classmethod
    def of(cls, oofs) -> RankForm:
        levels = np.linspace(0, 1, RANK_KNOTS)
        return cls(np.stack([np.quantile(np.asarray(o, dtype=np.float64), levels, axis=0) for o in oofs]))

    def apply(self, probs: list[np.ndarray]) -> np.ndarray:
        levels = np.linspace(0, 1, self.knots.shape[1])
        out = np.zeros(np.shape(probs[0]))
        for m, p in enumerate(probs):
            for j in range(out.shape[1]):
                out[:, j] += np.interp(p[:, j], self.knots[m, :, j], levels)
        return out / len(probs)

    def save(self, f) -> None:
        np.savez(f, knots=self.knots)

    @classmethod
    def load(cls, path: Path, n_labels: int | None, n_features: int | None) -> RankForm:
        with np.load(path, allow_pickle=False) as arrays:
            knots = np.asarray(arrays["knots"], dtype=np.float64)
        if knots.ndim != 3 or (n_labels and knots.shape[2] != n_labels) or (
                n_features is not None and knots.shape[0] * knots.shape[2] != n_features) or \
                not np.isfinite(knots).all() or (np.diff(knots, axis=1) < 0).any():
            raise ValueError(f"knots {knots.shape} for {n_labels} labels x {n_features} features (members x labels), "
                             "each member's and label's non-decreasing")
        return cls(knots)


# The forms a blend that is more than its weights is saved in, by file suffix (each such blend of
# submissions.blend names its own): what `make predict` reads, knowing no blend's fitting.
FORMS = {form.suffix: form for form in (LinearForm, SkopsForm, RankForm)}


def saved_path(submission: Path, form) -> Path:
    """Where `make submit` writes a stacker's saved form beside `submission`: <stem>.blend.npz or .blend.skops."""
    return submission.with_name(f"{submission.stem}.blend.{form.suffix}")


def write_saved(form, path: Path) -> Path:
    """A fitted stacker's saved form at `path` (atomically); its path."""
    from competition.artifacts import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # np.savez would add .npz to a name without it
            form.save(f)
    return path


def require_reader(path: Path | None) -> None:
    """What reading `path` needs, checked before any work."""
    if path is not None and path.suffix == ".skops" and importlib.util.find_spec("skops") is None:
        raise UserError(f"this blend needs skops: {SKOPS_HINT}")


def load_stacker(path: Path, n_labels: int | None = None, n_features: int | None = None):
    """A saved second level, read and checked before any member runs (its form, by the file's suffix). A file
    that is not one (another format, a skops file holding types this project does not build, arrays of another
    shape than `n_labels` x `n_features`) is one UserError naming it."""
    if path.suffix.lstrip(".") not in FORMS:
        raise UserError(f"{path}: not a saved blend ({', '.join('.' + s for s in FORMS)}); {AGAIN}")
    with loading(path, "not a saved second level", AGAIN):
        return FORMS[path.suffix.lstrip(".")].load(path, n_labels, n_features)


def apply_saved(method: str, weights, saved, probs: list[np.ndarray]) -> np.ndarray:
    """The blend of the members' probabilities, from its saved form: a mean's weights, or a stacker's second
    level (its file, or it loaded by `load_stacker`). The forms' `apply` is the one arithmetic of every blend."""
    if method in MEAN_METHODS:
        return MeanForm(method, weights).apply(probs)
    if saved is None:
        raise UserError(f"a {method} blend needs its saved second level, and none was written; run `make submit` "
                        "again")
    return (load_stacker(saved) if isinstance(saved, Path) else saved).apply(probs)
