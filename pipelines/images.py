"""Adapter from the fold orchestration (pipelines.run) to the image training loop."""
from __future__ import annotations

import numpy as np

from competition.layout import FitLayout, RunLayout
from pipelines.cache import build_cache
from pipelines.distributed import Dist
from pipelines.train import FoldData, fit


def fit_images(cfg, ds, run: RunLayout, train_idx, val_idx, out: FitLayout, label: str, log=print):
    cache = build_cache(ds, run, cfg["img_size"])
    y = ds.targets()
    data = FoldData(cache, train_idx, y[train_idx], val_idx, y[val_idx], len(ds.train) + np.arange(len(ds.test)))
    return fit(cfg, data, out, label, dist=Dist.from_env(), log=log)
