"""Frozen-trunk fine-tuning: run the first stages once, cache their output, train the rest.

On a CPU, full fine-tuning at the resolution ImageNet features need (224 px) is ~12 img/s
for efficientnet-lite0; training only the stages after `train_from` on cached trunk outputs
is ~75 img/s, while the frozen-feature linear probe stays far behind. The cache keeps each
image and its mirror image, so horizontal flips still augment training and serve as TTA.
Supported: timm's EfficientNet family (efficientnet_*, tf_efficientnet_lite*, mobilenetv2_*).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from competition.artifacts import atomic_array, build_once
from competition.layout import RunLayout
from pipelines.augment import stream_seed
from pipelines.data import CachedImages
from pipelines.inference import FEATURE_DTYPE, InferenceRecord, views
from pipelines.model import pretraining_stats, trunk_digest
from pipelines.runtime import runtime_salt, trunk_runner


def trunk_cache(net, record: InferenceRecord, image_cache: Path, device, batch_size=64, quiet=False) -> Path:
    """(N, 2, C, H, W) fp16: the trunk output (before `record.train_from`) of each cached image and of its mirror
    image, computed in the record's runtime (pipelines.runtime: ONNX Runtime on a CPU where installed, 2.8x eager
    bf16 there) or eager under its autocast dtype (bf16 on a CPU with AMX: 2x fp32, benchmarks/cpu_bf16.py)."""
    start, dtype, runtime = record.train_from, record.dtype(device), record.trunk_runtime
    # Keyed by the trunk's weights and the compute that made the features: either changes them. So does a
    # normalisation other than the pretraining's (measured on the data, FoldData.channel_stats, or the spec's);
    # the pretraining's is fixed with the weights, and its caches keep their names.
    own = (tuple(record.mean), tuple(record.std)) != pretraining_stats(net.backbone, record.net.in_chans)
    measured = repr((record.mean, record.std)) if own else ""
    digest = trunk_digest(net, start, runtime_salt(runtime, dtype) + measured)
    arch = net.backbone.pretrained_cfg.get("architecture", "net")
    path = RunLayout.trunk_features(image_cache, arch, start, digest.hexdigest()[:10])

    def build(path: Path) -> None:
        images = np.load(image_cache, mmap_mode="r")
        assert images.shape[1] == record.net.img_size, f"{image_cache} holds {images.shape[1]} px images"
        run = trunk_runner(net.to(device).eval(), start, record.net.img_size, device, dtype, runtime)
        normalize = record.normalizer(device)
        probe = run(normalize(torch.from_numpy(np.array(images[:1]))))
        dtype_np = torch.empty(0, dtype=FEATURE_DTYPE).numpy().dtype
        with atomic_array(path, dtype_np, (len(images), 2, *probe.shape[1:])) as out:
            for i in tqdm(range(0, len(images), batch_size), desc=f"trunk features {path.stem}", disable=quiet,
                          mininterval=2 if sys.stderr.isatty() else 30):
                x = normalize(torch.from_numpy(np.array(images[i:i + batch_size])))
                for v, view in enumerate(views(x, tta=True)):  # both views: the flip also augments training
                    out[i:i + len(x), v] = run(view).to(FEATURE_DTYPE).cpu().numpy()
    return build_once(path, build)


class TrunkFeatures(CachedImages):
    """Rows of the trunk cache. Training: one of the two views, drawn from (seed, epoch, row) (the flip
    augmentation). Eval: both (flip TTA). With `captions` (every cache row's sentence embedding), an item's input
    is (features, its caption's embedding)."""

    def __init__(self, path, rows, targets=None, train=False, seed=0, captions: np.ndarray | None = None):
        super().__init__(path, rows, targets, seed=seed)
        self.train, self.captions = train, captions

    def __getitem__(self, i):
        views = self.image(i)
        # Not a per-worker RNG: each worker would repeat the others' flips, and a resume would not reproduce them.
        x = views[stream_seed(self.seed, self.epoch, self.rows[i]) % 2] if self.train else views
        x = torch.from_numpy(np.array(x, dtype=np.float32))
        if self.captions is not None:
            return (x, torch.from_numpy(np.array(self.captions[self.rows[i]], dtype=np.float32))), self.target(i)
        return x, self.target(i)
