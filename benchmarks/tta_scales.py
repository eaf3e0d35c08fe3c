"""Multi-scale test-time augmentation, measured on a trained member's OOF before it is built into the pipeline:
each fold model predicts its own validation rows at every scale (flip TTA at each), and the OOF of the mean over
scales is scored against the OOF at the training size alone.

    .venv/bin/python benchmarks/tta_scales.py --comp comp5329 --data <folder> --runs <RUNS> \
        --model tf_efficientnet_lite2_cpu --scales 1.0,1.15

Networks are built from their fits' inference records and run by the code `make predict` uses
(`pipelines.inference.load_network`, `bundle.predict.batch_probs`: a trunk in the runtime its features were
trained on), the record's input size replaced by each scale's, images decoded and resized by the trunk cache's function
(`load_resized`) at round(img_size x scale). Self-check: the recomputed OOF at scale 1.0 must match the run's OOF
file (max |diff| under 1e-3), or it stops. Prints per scale: seconds and OOF
mAP / micro-F1 at the best global threshold, alone and averaged with the scales before it.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bundle.predict import BATCH, batch_probs
from competition import metrics
from competition.cli import Competition, competition_args
from competition.formats import ModelMeta, read_probs
from competition.images import load_resized
from folds.split import read_folds
from pipelines.config import ModelConfig
from pipelines.inference import fit_record, load_network


def fold_probs(model_dir: Path, meta: ModelMeta, f: int, paths: list[Path], size: int) -> np.ndarray:
    """Fold f's network on `paths` at `size` px, as its record predicts otherwise (flip TTA, the trunk in the
    runtime its features were trained on), through `make predict`'s own step (batch_probs)."""
    record = fit_record(meta.folds[f], f"{model_dir} fold {f}")
    record = dataclasses.replace(record, net=dataclasses.replace(record.net, img_size=size))
    cpu = torch.device("cpu")
    nets = [(0, load_network(record, model_dir / meta.fold_weights(f), cpu))]
    out = []
    for start in range(0, len(paths), BATCH):
        batch = np.stack([load_resized(p, size) for p in paths[start:start + BATCH]])
        out.append(batch_probs(nets, {size: batch}, cpu)[0].mean(0).numpy())
    return np.concatenate(out)


def best_global_f1(y, prob, min_labels: int) -> float:
    return max(metrics.f1(y, metrics.decide(prob, t, min_labels)) for t in np.arange(0.05, 0.95, 0.01))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    competition_args(ap, comp="comp5329")
    ap.add_argument("--model", required=True)
    ap.add_argument("--scales", default="1.0,1.15")
    a = ap.parse_args()
    comp = Competition.of(a)
    spec, ds, run = comp.spec, comp.dataset(), comp.run
    model = run.model(a.model)
    meta = ModelMeta.read(model.meta)
    ids = list(ds.train["id"])
    fold = read_folds(run.folds, ids)
    y, paths = ds.targets(), ds.image_paths(ds.train)
    oof_file = read_probs(model.oof, ids, spec.tokens)
    total = None
    for i, scale in enumerate(float(s) for s in a.scales.split(",")):
        size = round(ModelConfig.from_json(meta.config, str(model.meta)).img_size * scale)
        t0, prob = time.perf_counter(), np.zeros(y.shape)
        for f in range(meta.k):
            rows = np.nonzero(fold == f)[0]
            prob[rows] = fold_probs(model.dir, meta, f, [paths[r] for r in rows], size)
        seconds = time.perf_counter() - t0
        if scale == 1.0 and np.abs(prob - oof_file).max() > 1e-3:
            raise SystemExit(f"FAILED: scale 1.0 differs from {model.oof} by {np.abs(prob - oof_file).max():.3f}")
        total = prob if total is None else total + prob
        mean, rule = total / (i + 1), spec.min_labels_per_image
        print(f"scale {scale:.2f} ({size} px, {seconds:.0f} s for {len(ids)} images x 2 views): "
              f"alone mAP {metrics.mean_average_precision(y, prob):.4f} F1 {best_global_f1(y, prob, rule):.4f}; "
              f"mean of scales so far mAP {metrics.mean_average_precision(y, mean):.4f} "
              f"F1 {best_global_f1(y, mean, rule):.4f}"
              + (f" (max |diff| vs the run's OOF {np.abs(prob - oof_file).max():.1e})" if scale == 1.0 else ""))


if __name__ == "__main__":
    main()
