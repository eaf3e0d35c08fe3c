"""Adapter from the fold orchestration (pipelines.fits) to the image training loop."""
from __future__ import annotations

import numpy as np

from competition.layout import FitLayout, RunLayout
from pipelines.cache import build_cache
from pipelines.distributed import Dist
from pipelines.result import SoftTargets, training_rows
from pipelines.train import FoldData, fit


def fit_images(cfg, ds, run: RunLayout, train_idx, val_idx, out: FitLayout, label: str, log=print,
               targets: SoftTargets | None = None):
    cache = build_cache(ds, run, cfg["img_size"])
    y = ds.targets()
    test_rows = len(ds.train) + np.arange(len(ds.test))  # the cache holds train rows, then test rows
    train_rows, train_y = training_rows(train_idx, y, targets)
    data = FoldData(cache, train_rows, train_y.astype(np.float32), val_idx, y[val_idx], test_rows,
                    min_labels=ds.spec.min_labels_per_image)
    return fit(cfg, data, out, label, dist=Dist.from_env(), log=log)
