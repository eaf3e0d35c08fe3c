"""The `stack` blend's second level (one logistic regression per label on every member's logits): time and
objective of scikit-learn's solvers on a run's real OOF, where the fully nested estimate fits it ~31 times.

    .venv/bin/python benchmarks/stack_solvers.py --comp comp5329 --data <folder> --runs <RUNS> --models a,b

Fits every label on the rows outside fold 0 with each solver (C=1, as `submissions.blend.Stack`), and prints
seconds, the largest gap of the penalised objective to the best solver's (per label: C * sum of log losses +
|w|^2 / 2, what both minimise) and fold 0's mAP. Fails when a timing is under a second or the solver the
pipeline uses is not within 1e-6 (relative) of the lowest objective on every label.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from competition import metrics
from competition.cli import Competition, competition_args
from competition.formats import read_probs
from competition.probs import sigmoid, stack_features
from folds.split import read_folds
from submissions.blend import STACK_SOLVER

SOLVERS = ("lbfgs", "newton-cholesky")


def objective(x, y, coef, intercept, C=1.0) -> float:
    z = x @ coef + intercept
    return float(C * np.sum(np.logaddexp(0, z) - y * z) + 0.5 * coef @ coef)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    competition_args(ap, comp="comp5329")
    ap.add_argument("--models", required=True, help="comma list of trained members")
    a = ap.parse_args()
    comp = Competition.of(a)
    spec, ds, run = comp.spec, comp.dataset(check=False), comp.run
    ids = list(ds.train["id"])
    x = stack_features([read_probs(run.model(m).oof, ids, spec.tokens) for m in a.models.split(",")])
    y, fold = ds.targets(), read_folds(run.folds, ids)
    inner = fold != 0
    fits = {}
    for solver in SOLVERS:
        t0 = time.perf_counter()
        models = [LogisticRegression(C=1.0, max_iter=2000, solver=solver).fit(x[inner], y[inner, j])
                  for j in range(y.shape[1])]
        fits[solver] = (time.perf_counter() - t0, models)
    best = [min(objective(x[inner], y[inner, j], m[j].coef_[0], m[j].intercept_[0]) for _, m in fits.values())
            for j in range(y.shape[1])]
    print(f"{x.shape[0]} rows x {x.shape[1]} features ({a.models}), {y.shape[1]} labels, fitted on folds != 0")
    for solver, (seconds, models) in fits.items():
        gaps = [objective(x[inner], y[inner, j], m.coef_[0], m.intercept_[0]) / best[j] - 1
                for j, m in enumerate(models)]
        prob = sigmoid(np.stack([x[~inner] @ m.coef_[0] + m.intercept_[0] for m in models], axis=1))
        print(f"  {solver:<16} {seconds:6.2f} s   objective above the best by at most {max(gaps):.2e} (relative)"
              f"   fold 0 mAP {metrics.mean_average_precision(y[~inner], prob):.4f}")
        if seconds < 1.0 and solver == "lbfgs":
            raise SystemExit(f"FAILED: {seconds:.2f} s is too short to time")
        if solver == STACK_SOLVER and max(gaps) > 1e-6:
            raise SystemExit(f"FAILED: the pipeline's solver {solver} stops {max(gaps):.2e} above the optimum")


if __name__ == "__main__":
    main()
