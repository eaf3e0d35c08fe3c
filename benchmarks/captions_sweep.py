"""Choose the captions member's settings by 5-fold OOF micro-F1 (best global threshold).

    .venv/bin/python benchmarks/captions_sweep.py --data ../shared/datasets/comp5329-text --runs runs/text

Needs `make folds` for the same data first. Prints one line per setting.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from competition import load_dataset, load_spec
from competition.layout import RunLayout
from folds.split import read_folds
from pipelines.captions import CaptionModel
from pipelines.config import resolve
from submissions import thresholds as th

GRID = [
    {"C": c, "ngram_max": 2} for c in (1.0, 2.0, 4.0, 8.0, 16.0)
] + [
    {"C": 4.0, "ngram_max": 1}, {"C": 4.0, "ngram_max": 3},
    {"C": 4.0, "ngram_max": 2, "char_ngrams": True},
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comp", default="comp5329")
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", default="runs")
    a = ap.parse_args()
    spec = load_spec(a.comp)
    ds = load_dataset(spec, a.data, check=False)
    fold = read_folds(RunLayout.of(a.runs, spec.name).folds, list(ds.train["id"]))
    texts, y = ds.train["caption"].to_numpy(), ds.targets()
    for overrides in GRID:
        cfg = resolve("captions", overrides)
        t0 = time.perf_counter()
        oof = np.zeros(y.shape)
        for f in np.unique(fold):
            model = CaptionModel(cfg).fit(texts[fold != f], y[fold != f])
            oof[fold == f] = model.predict(texts[fold == f])
        g = th.global_threshold(y, oof)
        print(f"{str(overrides):<40} OOF micro-F1 @0.5 {th.score(y, oof, 0.5):.4f}  "
              f"@global {th.score(y, oof, g):.4f} (t={g[0]:.2f})  {time.perf_counter() - t0:5.1f}s", flush=True)


if __name__ == "__main__":
    main()
