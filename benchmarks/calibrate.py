"""A short figure of this machine's speed, recorded beside a recipe's timings so that times from two machines can
be compared: the recipe's lite2 trunk (tf_efficientnet_lite2_cpu: 288 px, the stages before train_from, in the
runtime training picks here) on the first --images train images of DATA, images and its mirror as the trunk
cache computes them.

    .venv/bin/python benchmarks/calibrate.py --data <folder> [--images 500]

Prints one line: img/s (each image and its mirror counted once), runtime, threads, the CPU model. Fails under
100 images or a timing under a second. Weights are offline ImageNet ones where installed, random otherwise
(the speed is the same; the line says which).
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from competition.cli import Competition, competition_args
from competition.images import load_resized
from pipelines.config import resolve
from pipelines.inference import InferenceRecord, views
from pipelines.model import build_model
from pipelines.runtime import trunk_runner
from pipelines.weights import WeightsError


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    competition_args(ap, runs=False, comp="comp5329")
    ap.add_argument("--images", type=int, default=500)
    a = ap.parse_args()
    ds = Competition.of(a).dataset(check=False)
    paths = ds.image_paths(ds.train)[:a.images]
    if len(paths) < 100:
        raise SystemExit(f"FAILED: {len(paths)} images; calibrate on at least 100")
    cfg, weights = resolve("tf_efficientnet_lite2_cpu"), "offline ImageNet"
    try:
        net, _, mean, std = build_model(cfg, len(ds.spec.tokens))
    except WeightsError:
        net, _, mean, std = build_model(cfg.replace(pretrained="none"), len(ds.spec.tokens))
        weights = "random"
    cpu = torch.device("cpu")
    record = InferenceRecord.of(cfg, len(ds.spec.tokens), mean, std, cpu)
    run = trunk_runner(net.eval(), record.train_from, record.net.img_size, cpu, record.dtype(cpu), record.trunk_runtime)
    images = np.stack([load_resized(p, record.net.img_size) for p in paths])
    normalize = record.normalizer(cpu)
    for view in views(normalize(torch.from_numpy(images[:8])), tta=True):  # warm-up
        run(view)
    t0 = time.perf_counter()
    for i in range(0, len(images), 64):
        for view in views(normalize(torch.from_numpy(images[i:i + 64])), tta=True):
            run(view)
    seconds = time.perf_counter() - t0
    if seconds < 1.0:
        raise SystemExit(f"FAILED: {seconds:.2f} s is too short to time")
    print(f"calibration: lite2 trunk {len(images) / seconds:.1f} img/s ({len(images)} images + mirrors, 288 px, "
          f"{record.trunk_runtime}, {torch.get_num_threads()} threads, {weights} weights) on {cpu_model()}")


if __name__ == "__main__":
    main()
