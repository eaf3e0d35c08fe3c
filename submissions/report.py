"""`make report`: per-label F1, or AUC and AP (blend vs members), thresholds or temperatures, member correlation,
learning curves."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, f1_score  # noqa: E402

from competition import metrics  # noqa: E402
from competition.eda import save  # noqa: E402
from competition.layout import ModelLayout  # noqa: E402
from competition.metrics import decide  # noqa: E402
from submissions import thresholds as th  # noqa: E402
from submissions.ensemble import Ensemble  # noqa: E402
from submissions.thresholds import ThresholdsRecord  # noqa: E402


def per_label_f1(y, prob, thr, min_labels):
    return f1_score(y, decide(prob, thr, min_labels), average=None, zero_division=0)


def bars(names, series, ylabel: str, title: str, path: Path) -> Path:
    """Per-label bars, one series beside the other (the blend, then each member)."""
    fig, ax = plt.subplots(figsize=(11, 5))
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, path)
    return path


def per_label_plots(names, ens: Ensemble, thr, out: Path) -> list[Path]:
    """Labels submissions: per-label F1 at the tuned thresholds (members: their best global one). Probability
    submissions: per-label ROC-AUC and average precision, what their metrics average."""
    sc, members = ens.scoring, ens.members
    if sc.probabilities:
        blend = sc.decide(ens.blend.oof, thr)
        return [bars(names, [(f"blend ({ens.blend_name})", metrics.roc_auc_columns(sc.y, blend))] +
                     [(m.name, metrics.roc_auc_columns(sc.y, m.oof)) for m in members],
                     "OOF ROC-AUC", "per-label OOF ROC-AUC: blend vs members", out / "per_label_auc.png"),
                bars(names, [(f"blend ({ens.blend_name})", metrics.per_label(average_precision_score, sc.y, blend))] +
                     [(m.name, metrics.per_label(average_precision_score, sc.y, m.oof)) for m in members],
                     "OOF average precision", "per-label OOF AP: blend vs members", out / "per_label_ap.png")]
    series = [(f"blend ({ens.blend_name}, tuned thr)", per_label_f1(sc.y, ens.blend.oof, thr, sc.min_labels))]
    series += [(f"{m.name} (global thr)", per_label_f1(sc.y, m.oof, th.global_threshold(sc, m.oof), sc.min_labels))
               for m in members]
    return [bars(names, series, "OOF F1", "per-label OOF F1: blend vs members", out / "per_label_f1.png")]


def make_report(spec, ens: Ensemble, art: ThresholdsRecord, out: Path) -> list[Path]:
    """Plots of an ensemble and its thresholds artifact `art` under `out`: the blend against its members,
    thresholds (or temperatures), correlation, curves."""
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{t} {n}" for t, n in spec.labels.items()]
    sc = ens.scoring
    members = ens.members
    thr = art.vector(spec.tokens)
    paths = per_label_plots(names, ens, thr, out)

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(names, thr, color="tab:orange")
    ax.axhline(0.5 if not sc.probabilities else 1.0, color="grey", ls="--", lw=1)
    ax.set_ylabel(sc.step)
    ax.set_title(f"per-label {sc.step}s ({art.method}; nested {sc.metric} {art.nested_score:.4f})")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    paths.append(out / f"{sc.step}s.png")
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
