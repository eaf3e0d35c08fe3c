"""Time the threshold searches at the full competition's size: 30,000 rows x 18 labels.

    .venv/bin/python benchmarks/thresholds_speed.py [--oof runs/<COMP>/models/<MODEL>/oof.csv]

Without --oof, probabilities are simulated with COMP5329's label frequencies.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from submissions import thresholds as th
from submissions.scoring import Scoring

# Label counts of the full COMP5329 train set (30,000 images).
COUNTS = [22797, 1164, 4365, 1272, 1132, 1395, 1221, 2210, 1042, 1471, 604, 605, 252, 1934, 1099, 1430, 1525, 1020]


def simulated(n=30000, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 18)) < np.array(COUNTS) / 30000).astype(np.uint8)
    logits = rng.normal(-2.5, 1.2, y.shape) + y * rng.normal(3.5, 1.5, y.shape)
    return y, 1 / (1 + np.exp(-logits))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    a = ap.parse_args()
    y, prob = simulated()
    sc = Scoring(y, np.arange(len(y)) % 5, "micro_f1", 1)  # COMP5329's metric and rule
    print(f"{len(y)} rows x {y.shape[1]} labels")
    for method in ("global", "exact", "optuna"):
        t0 = time.perf_counter()
        thr = th.tune(method, sc, prob, a.trials, seed=0)
        tuned = time.perf_counter() - t0
        t0 = time.perf_counter()
        nested = th.nested_score(method, sc, prob, a.trials, seed=0)
        print(f"{method:<8} tune {tuned:6.2f}s  in-sample {sc.score(prob, thr):.4f}  "
              f"nested(5 folds) {nested:.4f} in {time.perf_counter() - t0:6.2f}s")


if __name__ == "__main__":
    main()
