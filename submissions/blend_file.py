"""A fitted blend's saved form: written by `make submit` beside its submission, copied into the bundle by
`make export`, and applied by `apply_saved`, the one function both `make submit` (its test rows) and
`make predict` (new rows) blend with.

Mean blends are their method and weights (the sidecar holds them). A stacked blend's final second level is
a file, never a pickle: per-label logistic regressions as arrays (`.npz`); trees and the MLP, which arrays
cannot hold, with skops (`.skops`), whose loader builds only the types SKOPS_TRUSTED names.
"""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np

from competition.errors import UserError
from competition.probs import logit, sigmoid, stack_features, weighted_mean

MEAN_METHODS = ("mean", "weighted", "weighted_logit")
# Each stacked blend (submissions.blend.LEARNERS) and the form its second level is saved in.
SAVED_FORMS = {"stack": "npz", "stack_hgb": "skops", "stack_mlp": "skops"}
# What a .skops file may build beyond skops' default-trusted scikit-learn and numpy types: the trees of
# HistGradientBoostingClassifier and the optimizer an MLPClassifier keeps. Anything else in the file is refused.
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]
SKOPS_HINT = "pip install skops (its stacked blend is a skops file)"


def saved_path(submission: Path, learner: str) -> Path:
    """Where `make submit` writes a stacker beside `submission`: <stem>.blend.npz (LR) or .blend.skops."""
    return submission.with_name(f"{submission.stem}.blend.{SAVED_FORMS[learner]}")


def lr_arrays(models: list) -> dict[str, np.ndarray]:
    """Per-label logistic regressions (a float: a label with one class) as arrays: what `apply` needs."""
    width = max((m.coef_.shape[1] for m in models if not isinstance(m, float)), default=0)
    return {"coef": np.stack([np.zeros(width) if isinstance(m, float) else m.coef_[0] for m in models]),
            "intercept": np.array([0.0 if isinstance(m, float) else m.intercept_[0] for m in models]),
            "constant": np.array([m if isinstance(m, float) else np.nan for m in models])}


def skops_state(final) -> dict:
    """A PerLabel (trees) or MultiOutputMLP as plain skops-serialisable state."""
    if hasattr(final, "models"):
        return {"models": [None if isinstance(m, float) else m for m in final.models],
                "constant": np.array([m if isinstance(m, float) else np.nan for m in final.models])}
    constant = np.full(len(final.net.classes_), np.nan)  # one network for every label; constants where one class
    constant[list(final.constant)] = list(final.constant.values())
    return {"net": final.net, "constant": constant}


def write_saved(blend, path: Path) -> Path:
    """The final second level of a fitted StackBlend at `path` (atomically); its path."""
    from competition.artifacts import atomic_path
    with atomic_path(path) as tmp:
        if SAVED_FORMS[blend.learner] == "npz":
            with open(tmp, "wb") as f:  # np.savez would add .npz to a name without it
                np.savez(f, **lr_arrays(blend.final.models))
        else:
            import skops.io
            skops.io.dump(skops_state(blend.final), tmp)
    return path


def require_reader(path: Path | None) -> None:
    """What reading `path` needs, checked before any work."""
    if path is not None and path.suffix == ".skops" and importlib.util.find_spec("skops") is None:
        raise UserError(f"this blend needs skops: {SKOPS_HINT}")


def load_stacker(path: Path, n_labels: int | None = None, n_features: int | None = None):
    """A saved second level, read and checked before any member runs: a function of the stacked features `x`.
    A file that is not one (another format, a skops file holding types this project does not build, arrays of
    another shape than `n_labels` x `n_features`) is one UserError naming it."""
    again = "make it again with this project's `make submit` and `make export`"
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                coef, intercept, constant = (np.asarray(arrays[k], dtype=np.float64)
                                             for k in ("coef", "intercept", "constant"))
            rows = {coef.shape[0] if coef.ndim == 2 else -1, len(intercept), len(constant)}
            if coef.ndim != 2 or len(rows) != 1 or rows != ({n_labels} if n_labels else rows) or (
                    n_features is not None and coef.shape[1] != n_features):
                raise ValueError(f"coef {coef.shape}, intercept {intercept.shape}, constant {constant.shape} for "
                                 f"{n_labels} labels x {n_features} features")
            return lambda x: with_constants(sigmoid(x @ coef.T + intercept), constant)
        import skops.io
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
        if untrusted:
            raise UserError(f"{path}: holds types this project does not build ({', '.join(untrusted)}); {again}")
        state = skops.io.load(path, trusted=SKOPS_TRUSTED)
        constant = np.asarray(state["constant"], dtype=np.float64)
        if n_labels is not None and len(constant) != n_labels:
            raise ValueError(f"{len(constant)} labels, not {n_labels}")
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a saved second level ({type(e).__name__}: {str(e)[:200]}); {again}") from None
    if "net" in state:
        return lambda x: with_constants(state["net"].predict_proba(x), constant)
    return lambda x: with_constants(np.stack([np.zeros(len(x)) if m is None else m.predict_proba(x)[:, 1]
                                              for m in state["models"]], axis=1), constant)


def with_constants(prob: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """A label seen with one class only in the second level's rows is that constant."""
    prob[:, ~np.isnan(constant)] = constant[~np.isnan(constant)]
    return prob


def apply_saved(method: str, weights, saved, probs: list[np.ndarray]) -> np.ndarray:
    """The blend of the members' probabilities, from its saved form: weights, or the second level (its file, or
    it loaded by `load_stacker`)."""
    if method == "weighted_logit":
        return sigmoid(weighted_mean([logit(p) for p in probs], weights))
    if method in MEAN_METHODS:
        return weighted_mean(probs, weights)
    if saved is None:
        raise UserError(f"a {method} blend needs its saved second level, and none was written; run `make submit` "
                        "again")
    return (load_stacker(saved) if isinstance(saved, Path) else saved)(stack_features(probs))
