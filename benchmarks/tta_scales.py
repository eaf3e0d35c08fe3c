"""Multi-scale test-time augmentation, measured on a trained member's OOF before it is built into the pipeline:
each fold model predicts its own validation rows at every scale (flip TTA at each), and the OOF of the mean over
scales is scored against the OOF at the training size alone.

    .venv/bin/python benchmarks/tta_scales.py --comp comp5329 --data <folder> --runs <RUNS> \
        --model tf_efficientnet_lite2_cpu --scales 1.0,1.15

Networks are built, loaded and run by the code `make predict` uses (`bundle.predict.load_nets`, `batch_probs`: a
trunk in the runtime its features were trained on), images decoded and resized by the trunk cache's function
(`load_resized`) at round(img_size x scale). Self-check: the recomputed OOF at scale 1.0 must match the run's OOF
file (max |diff| under 1e-3), or it stops. Prints per scale: seconds and OOF
mAP / micro-F1 at the best global threshold, alone and averaged with the scales before it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bundle.predict import BATCH, batch_probs, load_nets, views_of
from competition import load_dataset, load_spec, metrics
from competition.formats import ModelMeta, read_probs
from competition.images import load_resized
from competition.layout import RunLayout
from folds.split import read_folds


def fold_probs(model_dir: Path, meta: ModelMeta, f: int, paths: list[Path], size: int, n_labels: int) -> np.ndarray:
    """Fold f's network on `paths` at `size` px with flip TTA, through `make predict`'s own steps (load_nets,
    views_of, batch_probs: the trunk in the runtime its features were trained on)."""
    record = {"config": {**meta.config, "img_size": size}, "weights": [meta.fold_weights(f)],
              "trunk_runtimes": [meta.folds[f].get("trunk_runtime") or "eager"]}
    cpu = torch.device("cpu")
    nets = load_nets(model_dir, [record], n_labels, cpu)
    out = []
    for start in range(0, len(paths), BATCH):
        batch = np.stack([load_resized(p, size) for p in paths[start:start + BATCH]])
        views = {n.view_key: views_of(batch, n.view_key, cpu) for n in nets}
        out.append((batch_probs(nets, views, 1, cpu)[0] / 2).numpy())
    return np.concatenate(out)


def best_global_f1(y, prob, min_labels: int) -> float:
    return max(metrics.f1(y, metrics.decide(prob, t, min_labels)) for t in np.arange(0.05, 0.95, 0.01))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comp", default="comp5329")
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--model", required=True)
    ap.add_argument("--scales", default="1.0,1.15")
    a = ap.parse_args()
    spec = load_spec(a.comp)
    ds, run = load_dataset(spec, a.data), RunLayout.of(a.runs, spec.name)
    model = run.model(a.model)
    meta = ModelMeta.read(model.meta)
    ids = list(ds.train["id"])
    fold = read_folds(run.folds, ids)
    y, paths = ds.targets(), ds.image_paths(ds.train)
    oof_file = read_probs(model.oof, ids, spec.tokens)
    total = None
    for i, scale in enumerate(float(s) for s in a.scales.split(",")):
        size = round(meta.config["img_size"] * scale)
        t0, prob = time.perf_counter(), np.zeros(y.shape)
        for f in range(meta.k):
            rows = np.nonzero(fold == f)[0]
            prob[rows] = fold_probs(model.dir, meta, f, [paths[r] for r in rows], size, len(spec.tokens))
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
