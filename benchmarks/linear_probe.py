"""Frozen ImageNet features + per-label logistic regression, by input size: the baseline to beat.

    .venv/bin/python benchmarks/linear_probe.py --data data/comp5329-6k \
        --model tf_efficientnet_lite0 --sizes 96 128 224

Fits on the first --train rows of train.csv, scores the next --val rows (a quick probe, not K-fold).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from competition import metrics
from competition.cli import Competition, competition_args
from competition.images import load_resized
from pipelines.config import resolve
from pipelines.model import build_model
from submissions.scoring import Scoring
from submissions.thresholds import global_threshold


def main():
    ap = argparse.ArgumentParser()
    competition_args(ap, runs=False, comp="comp5329")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 224])
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--val", type=int, default=600)
    a = ap.parse_args()
    ds = Competition.of(a).dataset(check=False)
    y = ds.targets()[: a.train + a.val]
    paths = ds.image_paths(ds.train)[: a.train + a.val]
    for size in a.sizes:
        net, _, mean, std = build_model(resolve(a.model, [f"img_size={size}"]), y.shape[1])
        net.eval()
        x = torch.from_numpy(np.stack([load_resized(p, size) for p in paths])).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = torch.cat([net.backbone(x[i:i + 100]) for i in range(0, len(x), 100)]).numpy()
        seconds = time.perf_counter() - t0
        tr, va = slice(0, a.train), slice(a.train, a.train + a.val)
        prob = np.stack([LogisticRegression(C=1.0, max_iter=2000).fit(feats[tr], y[tr, j])
                         .predict_proba(feats[va])[:, 1] for j in range(y.shape[1])], axis=1)
        sc = Scoring(y[va], np.zeros(a.val), "micro_f1", 1)  # COMP5329's metric and rule
        print(f"{a.model} {size}px  features {seconds:.0f}s  micro-F1@0.5 {sc.score(prob, 0.5):.4f}  "
              f"@global {sc.score(prob, global_threshold(sc, prob)):.4f}  "
              f"mAP {metrics.mean_average_precision(sc.y, prob):.4f}", flush=True)


if __name__ == "__main__":
    main()
