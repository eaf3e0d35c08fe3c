"""`make bench MODEL=x`: where the time goes in the data path and the train step, on this machine.

Every rate times the code users run, after a warm-up, for enough steps to mean something:
- real loop: `train.train_one_epoch` itself (batch source, augmentation, step, EMA, schedule), cycling
  epochs, timed from after the warm-up (which drains any prefetched batches) for >= `steps` steps;
- in-memory step: `train.optimize` on one batch already prepared on the device, eager and compiled;
- batch source alone: the training batch source of the run's data path, >= `steps` batches after warm-up;
- cache vs JPEG: one process reading cached rows vs decoding JPEGs, no prefetch, same augmentation.
feed_ratio = real loop / in-memory step at the run's compile setting (1.0: the model never waits).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import re
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from competition.artifacts import write_json
from competition.errors import UserError
from competition.layout import RunLayout
from pipelines.augment import train_transform
from pipelines.cache import build_cache
from pipelines.config import ImageConfig
from pipelines.data import CachedImages, DecodedImages
from pipelines.distributed import Dist
from pipelines.images import caption_embeddings
from pipelines.train import FoldData, data_path, optimize, setup, start_epoch, train_one_epoch

MIN_STEPS = 50
# The settings a rate depends on: a plan uses a record only while the config still has them.
SPEED_KEYS = ("backbone", "img_size", "batch_size", "train_from", "mode", "data_path", "compile", "channels_last",
              "amp", "amp_dtype", "augment")


class Clock:
    """Wall time of everything after `warmup` calls, with the device drained at both ends."""

    def __init__(self, device, warmup: int):
        self.device, self.warmup, self.calls, self.items, self.t0 = device, warmup, 0, 0, None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tick(self, items: int) -> None:
        self.calls += 1
        if self.calls == self.warmup:
            self.sync()
            self.t0 = time.perf_counter()
        elif self.calls > self.warmup:
            self.items += items

    @property
    def timed(self) -> int:
        return max(self.calls - self.warmup, 0)

    def rate(self) -> float:
        self.sync()
        if self.timed < MIN_STEPS:
            raise RuntimeError(f"benchmark timed only {self.timed} steps (< {MIN_STEPS}): no rate from that")
        return self.items / (time.perf_counter() - self.t0)


def real_loop_rate(s, steps: int, warmup: int) -> tuple[float, int]:
    clock, epoch, step = Clock(s.device, warmup), 0, 0
    while clock.timed < steps:
        _, step = train_one_epoch(s, epoch, step, "bench", max_steps=warmup + steps - clock.calls,
                                  on_step=lambda i, n: clock.tick(n))
        epoch += 1
    return clock.rate(), clock.timed


def in_memory_rate(s, x, y, steps: int, warmup: int) -> float:
    clock = Clock(s.device, warmup)
    while clock.timed < steps:
        optimize(s, x, y)
        clock.tick(len(y))
    return clock.rate()


def source_rate(s, steps: int, warmup: int) -> float:
    """The training batch source alone, with the preparation (augmentation, normalisation) it feeds."""
    clock, epoch = Clock(s.device, warmup), 0
    while clock.timed < steps:
        start_epoch(s, epoch)
        for x, y in s.train_loader:
            s.to_input(x, train=True)
            clock.tick(len(y))
            if clock.timed >= steps:
                break
        epoch += 1
    return clock.rate()


def single_process_rate(dataset, seconds: float = 3.0) -> float:
    """Images/s of dataset[i] in this process, no workers, no prefetch: cache rows vs JPEG decoding."""
    dataset[0]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dataset[n % len(dataset)]
        n += 1
    return n / (time.perf_counter() - t0)


def bench_subset(ds, n_images: int | None, device):
    """Train rows for the benchmark: all on CUDA, at most 1,024 on a CPU (enough for >= 50 steps over epochs)."""
    n = n_images or (len(ds.train) if device.type == "cuda" else 1024)
    return dataclasses.replace(ds, train=ds.train.iloc[:n].reset_index(drop=True), test=ds.test.iloc[:0])


def run_bench(spec, ds, run: RunLayout, cfg: ImageConfig, steps: int = 60, n_images: int | None = None,
              compile_too: bool | None = None) -> dict:
    if steps < MIN_STEPS:
        raise UserError(f"bench needs at least {MIN_STEPS} timed steps, not {steps}")
    ds.require_images()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sub, size = bench_subset(ds, n_images, device), cfg.img_size
    out = {"model": cfg.name, "img_size": size, "batch_size": cfg.batch_size, "train_from": cfg.train_from,
           "data_path": data_path(cfg), "compile": cfg.compile,
           "device": this_device(),
           "machine": platform.processor() or platform.machine(), "images": len(sub.train)}
    few = dataclasses.replace(sub, train=sub.train.iloc[:256])
    run.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.root) as tmp:  # a fresh build, never a reused file
        t0 = time.perf_counter()
        build_cache(few, RunLayout(Path(tmp)), size, quiet=True)
        out["cache_build_images_per_s"] = len(few.train) / (time.perf_counter() - t0)
    cache = build_cache(sub, run, size, quiet=True)  # kept for later runs of the bench
    y, aug = sub.targets(), train_transform(cfg.augment, size, sub.spec.in_chans)
    out["cache_read_images_per_s"] = single_process_rate(CachedImages(cache, np.arange(len(y)), y, aug))
    out["jpeg_decode_images_per_s"] = single_process_rate(DecodedImages(sub.image_paths(sub.train), size, y, aug))
    if out["jpeg_decode_images_per_s"] >= out["cache_read_images_per_s"]:
        raise RuntimeError("JPEG decoding measured faster than reading the cache: the measurement is broken")
    rows = np.arange(len(y))
    captions = caption_embeddings(cfg, sub, run, run.model(cfg.name))[1]  # a caption input's, the member's own
    s = setup(cfg, FoldData(cache, rows, y, rows[:0], y[:0], rows[:0], min_labels=1, captions=captions), Dist())
    warmup = 10 + 2 * max(getattr(s.train_loader, "num_workers", 0), 1)  # drains the prefetch queue
    out["source_images_per_s"] = source_rate(s, steps, warmup)
    out["real_loop_images_per_s"], out["steps_timed"] = real_loop_rate(s, steps, warmup)
    x, yb = next(iter(s.train_loader))
    x, yb = s.to_input(x, train=True), yb.to(s.device)
    out["in_memory_images_per_s"] = in_memory_rate(s, x, yb, steps, warmup)
    if compile_too if compile_too is not None else device.type == "cuda":
        other = s.step_module
        s.step_module = s.trained if cfg.compile else torch.compile(s.trained)
        out["in_memory_other_compile_images_per_s"] = in_memory_rate(s, x, yb, steps, warmup)
        s.step_module = other
    out["feed_ratio"] = out["real_loop_images_per_s"] / out["in_memory_images_per_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for k, v in out.items():
        print(f"{k:<38} {v:.4g}" if isinstance(v, float) else f"{k:<38} {v}")
    print(json.dumps(out))
    out["config"] = {k: getattr(cfg, k) for k in SPEED_KEYS}
    record = run.bench_record(cfg.name, device_slug(out["device"]))
    write_json(record, out)
    print(f"recorded for `make plan`: {record}")
    return out


def device_slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def this_device() -> str:
    """The name a bench record of this machine carries (one kind of GPU, or this CPU's thread count)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
