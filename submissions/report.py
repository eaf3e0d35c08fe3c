"""`make report`: per-label F1 (blend vs members), thresholds, member correlation, learning curves."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from competition.eda import save  # noqa: E402
from competition.layout import ModelLayout  # noqa: E402
from competition.metrics import decide  # noqa: E402
from submissions import thresholds as th  # noqa: E402
from submissions.ensemble import Ensemble  # noqa: E402
from submissions.thresholds import ThresholdsRecord  # noqa: E402


def per_label_f1(y, prob, thr, min_labels):
    return f1_score(y, decide(prob, thr, min_labels), average=None, zero_division=0)


def make_report(spec, ens: Ensemble, art: ThresholdsRecord, out: Path) -> list[Path]:
    """Plots of an ensemble and its thresholds artifact `art` under `out`: the blend against its members,
    thresholds, correlation, curves."""
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{t} {n}" for t, n in spec.labels.items()]
    sc = ens.scoring
    members, y, ml = ens.members, sc.y, sc.min_labels
    thr = art.vector(spec.tokens)
    paths = []

    fig, ax = plt.subplots(figsize=(11, 5))
    x = np.arange(len(names))
    series = [(f"blend ({ens.blend_name}, tuned thr)", per_label_f1(y, ens.blend.oof, thr, ml))]
    for m in members:
        series.append((f"{m.name} (global thr)",
                       per_label_f1(y, m.oof, th.global_threshold(sc, m.oof), ml)))
    width = 0.8 / len(series)
    for i, (label, f1) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, f1, width, label=label)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("OOF F1")
    ax.set_ylim(0, 1)
    ax.set_title("per-label OOF F1: blend vs members")
    ax.legend(fontsize=8)
    paths.append(out / "per_label_f1.png")
    save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(names, thr, color="tab:orange")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_ylabel("threshold")
    ax.set_title(f"per-label thresholds ({art.method}; nested {sc.metric} {art.nested_score:.4f})")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    paths.append(out / "thresholds.png")
    save(fig, paths[-1])

    if len(members) > 1:
        flat = np.stack([m.oof.ravel() for m in members])
        corr = np.corrcoef(flat)
        fig, ax = plt.subplots(figsize=(1.2 * len(members) + 3, 1.2 * len(members) + 2))
        im = ax.imshow(corr, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(members)), [m.name for m in members], rotation=45, ha="right")
        ax.set_yticks(range(len(members)), [m.name for m in members])
        for i in range(len(members)):
            for j in range(len(members)):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title("members' OOF probability correlation")
        paths.append(out / "member_correlation.png")
        save(fig, paths[-1])

    for m in members:
        curve = ModelLayout(m.dir).learning_curves
        if curve.exists():
            paths.append(out / f"learning_curves_{m.name}.png")
            shutil.copyfile(curve, paths[-1])
    return paths
