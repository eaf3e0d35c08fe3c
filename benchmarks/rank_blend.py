"""Rank averaging against the mean blend on a probability competition, through `make submit`'s own code.

    make demo-data COMP=ranzcr
    make folds COMP=ranzcr DATA=runs/ranzcr/data
    make train COMP=ranzcr DATA=runs/ranzcr/data MODEL=... (each member)
    .venv/bin/python benchmarks/rank_blend.py --comp ranzcr --data runs/ranzcr/data --models a,b,c

For each blend setting (the mean alone, the rank mean alone, then every default blend) `run_submit` runs
whole: members, blend, last step, fully nested estimate. Printed per setting: the blend chosen, its OOF score
(in-sample), the fully nested estimate, its outer folds' scores (min..max) and whether the estimate lies within
them; then rank_mean minus mean per outer fold (the same rows, paired), its mean and spread. It stops (exit 1)
if the estimate is not the row-weighted mean of its outer folds, or a blend other than the one asked for ran.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from competition import load_dataset, load_spec
from competition.layout import RunLayout
from submissions.blend import DEFAULT_BLENDS
from submissions.budget import Budget
from submissions.postprocess import Settings
from submissions.submit import run_submit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comp", default="ranzcr")
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--models", required=True, help="comma-separated members (trained)")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args(argv)
    spec = load_spec(a.comp)
    ds = load_dataset(spec, Path(a.data))
    run = RunLayout.of(Path(a.runs), spec.name)
    names = a.models.split(",")
    per_fold, failed = {}, False
    print(f"{spec.name}: {len(ds.train)} train rows, members {', '.join(names)}, metric {spec.metric}")
    print(f"{'blends tried':<20}{'chosen':<16}{'OOF':>8}{'nested':>8}  outer folds")
    for blends in (("mean",), ("rank_mean",), DEFAULT_BLENDS):
        settings = Settings(Budget(None, None), method=None, trials=1, seed=a.seed, blends=blends)
        sub = run_submit(spec, ds, run, settings, "benchmarks/rank_blend.py", names, log=lambda *_: None)
        folds = sub.nested.per_fold
        scores = np.array([f.score for f in folds])
        rows = np.array([(sub.ensemble.scoring.fold == f.fold).sum() for f in folds])
        within = scores.min() <= sub.nested.score <= scores.max()
        tried = "default" if blends == DEFAULT_BLENDS else blends[0]
        print(f"{tried:<20}{sub.ensemble.blend_name:<16}{sub.ensemble.blend.score:>8.4f}"
              f"{sub.nested.score:>8.4f}  {scores.min():.4f}..{scores.max():.4f} "
              f"({'within' if within else 'OUTSIDE'}; chosen per fold: {', '.join(f.blend for f in folds)})")
        if abs(np.dot(scores, rows) / rows.sum() - sub.nested.score) > 1e-12 or (
                len(blends) == 1 and {f.blend for f in folds} != set(blends)):
            failed = True
        per_fold[blends] = scores
    gain = per_fold[("rank_mean",)] - per_fold[("mean",)]
    print(f"rank_mean - mean, per outer fold: {' '.join(f'{g:+.4f}' for g in gain)}; mean {gain.mean():+.4f}, "
          f"sd {gain.std(ddof=1):.4f}")
    if failed:
        print("a check failed: the estimate is not its outer folds' row-weighted mean, or another blend ran",
              file=sys.stderr)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
