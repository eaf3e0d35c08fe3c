"""A fitted blend's saved form: written by `make submit` beside its submission, copied into the bundle by
`make export`, and applied by `apply_saved`, the one function both `make submit` (its test rows) and
`make predict` (new rows) blend with.

Mean blends are their method and weights (the sidecar holds them). A stacked blend's final second level is
a file, never a pickle: per-label logistic regressions as arrays (`.npz`); trees and the MLP, which arrays
cannot hold, with skops (`.skops`), whose loader builds only the types SKOPS_TRUSTED names.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from competition.errors import UserError
from competition.probs import logit, sigmoid, stack_features, weighted_mean

MEAN_METHODS = ("mean", "weighted", "weighted_logit")
# What a .skops file may build beyond skops' default-trusted scikit-learn and numpy types: the trees of
# HistGradientBoostingClassifier and the optimizer an MLPClassifier keeps. Anything else in the file is refused.
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]
SKOPS_HINT = "pip install skops (its stacked blend is a skops file)"


def saved_path(submission: Path, learner: str) -> Path:
    """Where `make submit` writes a stacker beside `submission`: <stem>.blend.npz (LR) or .blend.skops."""
    return submission.with_name(f"{submission.stem}.blend.{'npz' if learner == 'stack' else 'skops'}")


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
        if blend.learner == "stack":
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


def stacker_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """A saved second level on the stacked features `x`: per-label LR arrays (npz), or trees / an MLP (skops)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            prob, constant = sigmoid(x @ arrays["coef"].T + arrays["intercept"]), arrays["constant"]
    else:
        import skops.io
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
        if untrusted:
            raise UserError(f"{path}: holds types this project does not build ({', '.join(untrusted)}); "
                            "make it again with this project's `make submit` and `make export`")
        state = skops.io.load(path, trusted=SKOPS_TRUSTED)
        prob = (state["net"].predict_proba(x) if "net" in state else
                np.stack([np.zeros(len(x)) if m is None else m.predict_proba(x)[:, 1] for m in state["models"]],
                         axis=1))
        constant = state["constant"]
    prob[:, ~np.isnan(constant)] = constant[~np.isnan(constant)]
    return prob


def apply_saved(method: str, weights, path: Path | None, probs: list[np.ndarray]) -> np.ndarray:
    """The blend of the members' probabilities, from its saved form."""
    if method == "weighted_logit":
        return sigmoid(weighted_mean([logit(p) for p in probs], weights))
    if method in MEAN_METHODS:
        return weighted_mean(probs, weights)
    if path is None:
        raise UserError(f"a {method} blend needs its saved second level, and none was written; run `make submit` "
                        "again")
    return stacker_probs(path, stack_features(probs))
