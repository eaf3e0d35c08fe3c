"""Grad-CAM panels for `make report` (the grad-cam package): where the best image member looks for each label.

For each label, a few validation images that carry it, each explained by the fold model that never saw it:
the image, its true and predicted labels, and the Grad-CAM map of that label's score over the backbone's last
feature stage (timm's feature_info names it for any backbone). One PNG per label under report/cam/."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from competition.artifacts import atomic_path  # noqa: E402
from competition.images import load_resized  # noqa: E402
from pipelines.config import ModelConfig  # noqa: E402
from pipelines.inference import fit_record, load_network  # noqa: E402
from submissions.ensemble import Ensemble  # noqa: E402
from submissions.members import Member  # noqa: E402
from submissions.thresholds import ThresholdsRecord  # noqa: E402


def best_image_member(ens: Ensemble) -> Member | None:
    """The best member that sees the image alone: a caption input's maps would also depend on the caption."""
    images = [m for m in ens.members if ModelConfig.from_json(m.meta.config, m.name).data_kind == "image"]
    return max(images, key=lambda m: ens.member_scores[m.name]) if images else None


def fold_net(member: Member, fold: int):
    """Fold `fold`'s network of an image member, built from its inference record, float32, eval mode, with
    gradients everywhere; and the record (input size, normalisation)."""
    record = fit_record(member.meta.folds[fold], f"{member.dir} fold {fold}")
    net = load_network(record, member.dir / member.meta.fold_weights(fold), torch.device("cpu")).net
    net.frozen = False  # a frozen backbone runs without gradients, which Grad-CAM needs
    return net, record


def target_layer(net) -> torch.nn.Module:
    """The backbone's last feature stage, as timm's feature_info names it (blocks.6, layer4, stages.3, ...)."""
    return net.backbone.get_submodule(net.backbone.feature_info[-1]["module"])


def label_maps(net, image: np.ndarray, record, labels: list[int]) -> np.ndarray:
    """(labels, H, W) Grad-CAM maps in [0, 1] of each label's score for one uint8 HWC image."""
    batch = torch.tensor(image[None])  # a copy: a decoded image is a read-only array
    x = record.normalizer(torch.device("cpu"), channels_last=False)(batch)
    with GradCAM(model=net, target_layers=[target_layer(net)]) as cam:
        return np.stack([cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])[0] for j in labels])


def cam_panels(spec, ds, ens: Ensemble, thresholds: ThresholdsRecord, out: Path, per_label: int = 4) -> list[Path]:
    """One PNG per label with up to `per_label` validation images that carry it: the member's most confident
    half, then its least confident (the ones it misses: does it look at the object there?)."""
    member = best_image_member(ens)
    if member is None or not ds.has_images:
        return []
    out.mkdir(parents=True, exist_ok=True)
    sc = ens.scoring
    pred = sc.decide(ens.blend.oof, thresholds.vector(spec.tokens))
    if sc.probabilities:  # a probability submission decides nothing: say which labels the blend puts at >= 0.5
        pred = pred >= 0.5
    nets, paths, ids = {}, [], list(ds.train["id"])
    for j, (token, name) in enumerate(spec.labels.items()):
        rows = np.nonzero(sc.y[:, j] == 1)[0]
        rows = rows[np.argsort(-member.oof[rows, j])]
        if len(rows) > per_label:
            rows = np.concatenate([rows[:(per_label + 1) // 2], rows[len(rows) - per_label // 2:]])
        if not len(rows):
            continue
        fig, axes = plt.subplots(2, len(rows), figsize=(3.2 * len(rows), 7.2), squeeze=False)
        for col, r in enumerate(rows):
            fold = int(sc.fold[r])
            if fold not in nets:
                nets[fold] = fold_net(member, fold)
            net, record = nets[fold]
            image = load_resized(ds.image_paths(ds.train.iloc[[r]])[0], record.net.img_size)
            heat = label_maps(net, image, record, [j])[0]
            image = as_picture(image, spec.channels)
            true = " ".join(spec.labels[t] for t, v in zip(spec.tokens, sc.y[r]) if v)
            said = " ".join(spec.labels[t] for t, v in zip(spec.tokens, pred[r]) if v)
            axes[0, col].imshow(image)
            axes[0, col].set_title(f"{ids[r]}\ntrue: {true}\nblend predicts: {said}", fontsize=7)
            axes[1, col].imshow(show_cam_on_image(image / 255.0, heat, use_rgb=True))
            axes[1, col].set_title(f"{name}: p={member.oof[r, j]:.2f} (fold {fold} model)", fontsize=7)
        for ax in axes.ravel():
            ax.axis("off")
        backbone = ModelConfig.from_json(member.meta.config, member.name).backbone
        shown = "" if not spec.channels else f"; shown: {picture_channels(spec.channels)}"
        fig.suptitle(f"Grad-CAM of '{name}' ({member.name}: {net.backbone.feature_info[-1]['module']} of "
                     f"{backbone}); validation images, most and least confident{shown}", fontsize=9)
        fig.tight_layout()
        path = out / f"{token}_{name.replace(' ', '_')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def shown_channels(channels) -> list[int]:
    """Which channels a picture shows as its red, green and blue: those named red, green and blue where there are
    such (Planet's bands are blue, green, red, nir), else the first three (HPA's red, green and blue are its
    microtubules, protein and nucleus stains). One channel: gray; two: the third black."""
    names = [str(c).lower() for c in channels]
    if {"red", "green", "blue"} <= set(names):
        return [names.index(c) for c in ("red", "green", "blue")]
    return list(range(min(3, len(names))))


def as_picture(image: np.ndarray, channels) -> np.ndarray:
    """An RGB picture of an image of the spec's `channels` (None: RGB already), as `shown_channels` says."""
    if channels is None:
        return image
    shown = image[..., shown_channels(channels)]
    if shown.shape[-1] == 1:
        return np.repeat(shown, 3, axis=-1)
    if shown.shape[-1] == 2:
        return np.concatenate([shown, np.zeros_like(shown[..., :1])], axis=-1)
    return shown


def picture_channels(channels) -> str:
    """What `as_picture` shows, for the panel's title."""
    names = list(channels)
    picked = shown_channels(names)
    if len(picked) == 1:
        return f"{names[0]} as gray"
    shown = ", ".join(f"{names[i]} as {c}" for i, c in zip(picked, ("red", "green", "blue")))
    rest = [n for i, n in enumerate(names) if i not in picked]
    return shown + (f" ({', '.join(rest)} not shown)" if rest else "")
