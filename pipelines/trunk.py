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
from pipelines.model import TopOfNet, trunk_digest, trunk_forward  # noqa: F401  (the split lives with the model)
from pipelines.preprocess import DeviceNormalize
from pipelines.runtime import runtime_salt, trunk_runner


def trunk_cache(net, start: int, image_cache: Path, mean, std, device, infer_dtype=None, batch_size=64,
                quiet=False, runtime: str = "eager") -> Path:
    """(N, 2, C, H, W) fp16: trunk output of each cached image and of its mirror image, computed in `runtime`
    (pipelines.runtime: ONNX Runtime on a CPU where installed, 2.8x eager bf16 there) or eager under autocast
    to `infer_dtype` when given (bf16 on a CPU with AMX: 2x faster than fp32, benchmarks/cpu_bf16.py)."""
    # Keyed by the trunk's weights and the compute that made the features: either changes them.
    digest = trunk_digest(net, start, runtime_salt(runtime, infer_dtype))
    arch = net.backbone.pretrained_cfg.get("architecture", "net")
    path = RunLayout.trunk_features(image_cache, arch, start, digest.hexdigest()[:10])

    def build(path: Path) -> None:
        images = np.load(image_cache, mmap_mode="r")
        run = trunk_runner(net.to(device).eval(), start, images.shape[1], device, infer_dtype, runtime)
        normalize = DeviceNormalize(mean, std, device, channels_last=True)
        probe = run(normalize(torch.from_numpy(np.array(images[:1]))))
        with atomic_array(path, np.float16, (len(images), 2, *probe.shape[1:])) as out:
            for i in tqdm(range(0, len(images), batch_size), desc=f"trunk features {path.stem}", disable=quiet,
                          mininterval=2 if sys.stderr.isatty() else 30):
                x = normalize(torch.from_numpy(np.array(images[i:i + batch_size])))
                out[i:i + len(x), 0] = run(x).half().cpu().numpy()
                out[i:i + len(x), 1] = run(torch.flip(x, dims=[3])).half().cpu().numpy()
    return build_once(path, build)


class TrunkFeatures(torch.utils.data.Dataset):
    """Training: one of the two views, drawn from (seed, epoch, row) (the flip augmentation). Eval: both (flip TTA)."""

    def __init__(self, path, rows, targets=None, train=False, seed=0):
        self.path, self.rows, self.targets, self.train = str(path), np.asarray(rows), targets, train
        self.seed, self.epoch = seed, 0
        self._array = None

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        views = self._array[self.rows[i]]
        # Not a per-worker RNG: each worker would repeat the others' flips, and a resume would not reproduce them.
        x = views[stream_seed(self.seed, self.epoch, self.rows[i]) % 2] if self.train else views
        y = torch.from_numpy(self.targets[i].astype(np.float32)) if self.targets is not None else torch.zeros(0)
        return torch.from_numpy(np.array(x, dtype=np.float32)), y
