"""`make bench MODEL=x`: where the time goes in the data path and the train step, on this machine.

Prints, for the model's config: cache build images/s; loader images/s from the cache vs
decoding JPEGs; train-step images/s fed by the real loader vs by a batch already in memory,
and their ratio (the feed ratio: 1.0 means the loader never starves the model); peak memory.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.augment import train_transform
from pipelines.cache import build_cache
from pipelines.data import CachedImages, DecodedImages, auto_workers, make_loader
from pipelines.distributed import Dist
from pipelines.train import FoldData, setup, train_step


def loader_rate(dataset, cfg, device, batches: int) -> float:
    loader = make_loader(dataset, cfg["batch_size"], True, auto_workers(cfg["workers"], device), device)
    seen, t0 = 0, None
    for i, (x, _) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up
            seen, t0 = 0, time.perf_counter()
        seen += len(x)
        if i >= batches:
            break
    return seen / (time.perf_counter() - t0)


def step_rate(s, batches, source) -> float:
    seen, t0 = 0, None
    for i, (x, y) in enumerate(source):
        if i == 1:
            if s.device.type == "cuda":
                torch.cuda.synchronize()
            seen, t0 = 0, time.perf_counter()
        train_step(s, x, y)
        seen += len(x)
        if i >= batches:
            break
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def repeat(batch, n):
    for _ in range(n):
        yield batch


def run_bench(spec, ds, runs: Path, cfg: dict, n_images: int = 640, batches: int = 12) -> dict:
    ds.require_images()
    size = cfg["img_size"]
    sub = dataclasses.replace(ds, train=ds.train.iloc[:n_images].reset_index(drop=True), test=ds.test.iloc[:0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {"model": cfg["name"], "img_size": size, "batch_size": cfg["batch_size"], "train_from": cfg["train_from"],
           "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
           "machine": platform.processor() or platform.machine(), "images": len(sub.train)}
    with tempfile.TemporaryDirectory(dir=runs) as tmp:
        t0 = time.perf_counter()
        cache = build_cache(sub, Path(tmp), size, quiet=True)
        out["cache_build_images_per_s"] = len(sub.train) / (time.perf_counter() - t0)
        aug = train_transform(cfg["augment"], size)
        y = sub.targets()
        out["loader_cache_images_per_s"] = loader_rate(CachedImages(cache, np.arange(len(y)), y, aug), cfg, device, batches)
        out["loader_jpeg_images_per_s"] = loader_rate(DecodedImages(sub.image_paths(sub.train), size, y, aug),
                                                      cfg, device, min(batches, 6))
        rows = np.arange(len(y))
        data = FoldData(cache, rows, y, rows[:0], y[:0], rows[:0])
        s = setup({**cfg, "ema": False}, data, Dist())
        s.model.train()
        out["train_step_loader_images_per_s"] = step_rate(s, batches, s.train_loader)
        x, yb = next(iter(s.train_loader))
        out["train_step_in_memory_images_per_s"] = step_rate(s, batches, repeat((x, yb), batches + 1))
    out["feed_ratio"] = out["train_step_loader_images_per_s"] / out["train_step_in_memory_images_per_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for k, v in out.items():
        print(f"{k:<36} {v:.4g}" if isinstance(v, float) else f"{k:<36} {v}")
    print(json.dumps(out))
    return out
