"""CPU inference in bf16 (what `amp: true` does on a CPU with AMX or AVX512-BF16): speed, and what it changes
in a trained model's validation predictions.

    .venv/bin/python benchmarks/cpu_bf16.py --comp comp5329 --data data/comp5329-6k \
        --runs runs/6k --model tf_efficientnet_lite2_cpu --fold 0 --rows 600

Loads fold `--fold` of a trained image model (its saved full network), and predicts `--rows` of that fold's
validation images from the image cache with `pipelines.train.predict` (flip TTA), once in fp32 and once under
bf16 autocast, after a warm-up batch each. Prints img/s of both, the largest probability difference, and
mAP / micro-F1 at 0.5 of both against the true labels. Fails if bf16 is not at least 1.2x faster or moves
mAP by more than 0.005.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from competition import metrics
from competition.cli import Competition, competition_args
from competition.formats import ModelMeta
from folds.split import read_folds
from pipelines.cache import build_cache
from pipelines.data import DeviceBatches, load_cache_rows
from pipelines.inference import fit_record, load_network
from pipelines.model import cpu_has_bf16
from pipelines.train import predict


def main():
    ap = argparse.ArgumentParser()
    competition_args(ap, comp="comp5329")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--rows", type=int, default=600)
    a = ap.parse_args()
    if not cpu_has_bf16():
        raise SystemExit("this CPU has no native bf16 (AMX or AVX512-BF16): amp stays off on it")
    comp = Competition.of(a)
    spec, ds, run = comp.spec, comp.dataset(check=False), comp.run
    model = run.model(a.model)
    meta = ModelMeta.read(model.meta)
    # The whole network from images (a trunk-cached member's trunk included), as its record builds it.
    record = fit_record(meta.folds[a.fold], f"{model.dir} fold {a.fold}")
    net = load_network(record, model.dir / meta.fold_weights(a.fold), torch.device("cpu")).net
    fold = read_folds(run.folds, list(ds.train["id"]))
    rows = np.nonzero(fold == a.fold)[0][:a.rows]
    cpu = torch.device("cpu")
    images = load_cache_rows(build_cache(ds, run, record.net.img_size), cpu)
    to_input = record.normalizer(cpu)
    y = ds.targets()[rows]
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        predict(net, DeviceBatches(images, rows[:32], None, 32, cpu), to_input, cpu, dtype, tta=True)  # warm-up
        t0 = time.perf_counter()
        prob = predict(net, DeviceBatches(images, rows, None, 64, cpu), to_input, cpu, dtype, tta=True)
        seconds = time.perf_counter() - t0
        out[name] = prob
        print(f"{name}: {2 * len(rows) / seconds:6.1f} img/s (flip TTA: 2 passes per row)  "
              f"mAP {metrics.macro_ap(y, prob):.4f}  micro-F1@0.5 "
              f"{metrics.f1(y, metrics.decide(prob, 0.5, spec.min_labels_per_image)):.4f}", flush=True)
        out[name + "_s"] = seconds
    diff = np.abs(out["fp32"] - out["bf16"]).max()
    d_map = metrics.macro_ap(y, out["bf16"]) - metrics.macro_ap(y, out["fp32"])
    speedup = out["fp32_s"] / out["bf16_s"]
    print(f"bf16 vs fp32: {speedup:.2f}x faster, max |dp| {diff:.4f}, mAP change {d_map:+.4f}")
    if speedup < 1.2 or abs(d_map) > 0.005:
        raise SystemExit("bf16 inference is not worth it here: keep amp off on this CPU")


if __name__ == "__main__":
    main()
