"""Adapter from the fold orchestration (pipelines.run) to the image training loop."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipelines.cache import build_cache
from pipelines.distributed import Dist
from pipelines.train import FoldData, fit


def fit_images(cfg, ds, comp_dir: Path, train_idx, val_idx, out_dir: Path, label: str, log=print):
    cache = build_cache(ds, comp_dir / "cache", cfg["img_size"])
    n_train = len(ds.train)
    y = ds.targets()
    data = FoldData(cache, train_idx, y[train_idx], val_idx, y[val_idx], n_train + np.arange(len(ds.test)))
    dist = Dist.from_env()
    t0 = time.time()
    result = fit(cfg, data, out_dir, label, dist=dist, log=log)
    on_gpu = torch.cuda.is_available()
    result.device = torch.cuda.get_device_name() if on_gpu else "cpu"
    result.gpu_hours = (time.time() - t0) / 3600 * dist.world if on_gpu else 0.0
    return result
