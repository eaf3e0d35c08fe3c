"""Exploratory plots and a text summary of a competition's train/test files."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from competition.reader import Dataset  # noqa: E402


def save(fig, path: Path) -> None:
    from competition.artifacts import atomic_path
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def summary_text(ds: Dataset) -> str:
    y = ds.targets()
    per_image = y.sum(1)
    sets = {tuple(r) for r in y}
    counts = dict(zip(ds.spec.tokens, y.sum(0).tolist()))
    lines = [
        f"{ds.spec.name}: {len(ds.train)} train, {len(ds.test)} test rows; {len(ds.spec.tokens)} labels; "
        f"images: {'yes' if ds.has_images else 'none (captions only)'}",
        f"labels per image: mean {per_image.mean():.2f}, max {per_image.max()}; "
        f"distribution {dict(zip(*(a.tolist() for a in np.unique(per_image, return_counts=True))))}",
        f"distinct label sets: {len(sets)}",
        "label counts: " + " ".join(f"{t}:{c}" for t, c in counts.items()),
        f"most common: {ds.spec.labels[max(counts, key=counts.get)]} on "
        f"{max(counts.values()) / len(y):.0%} of images; rarest: {ds.spec.labels[min(counts, key=counts.get)]} "
        f"({min(counts.values())})",
    ]
    if ds.spec.caption_column:
        words = ds.train["caption"].str.split().str.len()
        lines.append(f"caption words: {words.min()}..{words.max()}, mean {words.mean():.1f}")
    return "\n".join(lines)


EDA_STATS_IMAGES, EDA_STATS_SIZE = 256, 64


def channel_stats_yaml(ds: Dataset) -> str:
    """Each named channel's mean and standard deviation (in [0, 1]) over every k-th labelled image (at most
    EDA_STATS_IMAGES, decoded at EDA_STATS_SIZE px as training decodes them), as the spec's channel_mean and
    channel_std lines: a spec that lists them normalises by them instead of measuring its own when training."""
    from competition.images import channel_moments, load_resized
    paths = ds.image_paths(ds.train)
    picked = paths[::max(1, -(-len(paths) // EDA_STATS_IMAGES))]
    mean, std = channel_moments(np.stack([load_resized(p, EDA_STATS_SIZE) for p in picked]))
    return (f"# {', '.join(ds.spec.channels)} over {len(picked)} labelled images at {EDA_STATS_SIZE} px (make eda)\n"
            f"channel_mean: [{', '.join(f'{v:.4f}' for v in mean)}]\n"
            f"channel_std: [{', '.join(f'{v:.4f}' for v in std)}]\n")


def plot_all(ds: Dataset, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    y = ds.targets().astype(np.int64)
    names = [f"{t} {n}" for t, n in ds.spec.labels.items()]
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5))
    order = np.argsort(-y.sum(0))
    ax.barh([names[j] for j in order][::-1], y.sum(0)[order][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("images with the label (log scale)")
    ax.set_title(f"{ds.spec.name}: label frequency ({len(y)} train images)")
    for i, v in enumerate(y.sum(0)[order][::-1]):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    paths.append(out / "label_frequency.png")
    save(fig, paths[-1])

    co = y.T @ y
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = co / np.diag(co)[:, None]  # P(column label | row label)
    np.fill_diagonal(cond, np.nan)  # always 1: it would only flatten the colour scale
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(cond, cmap="viridis", vmin=0, vmax=np.nanmax(cond))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("label co-occurrence: P(column | row), diagonal blank")
    fig.colorbar(im, ax=ax, fraction=0.046)
    paths.append(out / "label_cooccurrence.png")
    save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(7, 4))
    k = y.sum(1)
    ax.bar(*np.unique(k, return_counts=True), color="tab:green")
    ax.set_xlabel("labels per image")
    ax.set_ylabel("images")
    ax.set_title(f"labels per image (mean {k.mean():.2f})")
    paths.append(out / "labels_per_image.png")
    save(fig, paths[-1])

    if ds.spec.caption_column:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, frame in (("train", ds.train), ("test", ds.test)):
            ax.hist(frame["caption"].str.split().str.len(), bins=range(0, 60), alpha=0.6, label=name, density=True)
        ax.set_xlabel("caption length (words)")
        ax.set_ylabel("share of rows")
        ax.legend()
        ax.set_title("caption length")
        paths.append(out / "caption_length.png")
        save(fig, paths[-1])
    return paths
