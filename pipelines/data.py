"""Datasets over the uint8 cache, loaders, and the on-device uint8 -> normalised float step."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from competition.images import load_resized


class CachedImages(Dataset):
    """Rows of the memory-mapped cache; the file is opened lazily so workers don't pickle the array."""

    def __init__(self, path, rows, targets=None, transform=None):
        self.path, self.rows, self.targets, self.transform = str(path), np.asarray(rows), targets, transform
        self._array = None

    def __len__(self):
        return len(self.rows)

    def image(self, i):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array[self.rows[i]]

    def __getitem__(self, i):
        image = self.image(i)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        x = torch.from_numpy(np.require(image, requirements=["C", "W"]))  # memmap rows are read-only
        y = torch.from_numpy(self.targets[i].astype(np.float32)) if self.targets is not None else torch.zeros(0)
        return x, y


class DecodedImages(CachedImages):
    """Decodes the JPEG on every access: the slow path the cache replaces (used by the benchmark)."""

    def __init__(self, paths, size, targets=None, transform=None):
        super().__init__("", np.arange(len(paths)), targets, transform)
        self.paths, self.size = list(paths), size

    def image(self, i):
        return load_resized(self.paths[i], self.size)


def auto_workers(requested: int, device: torch.device) -> int:
    """-1: on CUDA all cores feed the GPU; on CPU the model needs the cores, augmenting inline costs ~1%."""
    if requested >= 0:
        return requested
    import os
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def make_loader(dataset, batch_size, shuffle, workers, device, drop_last=False, sampler=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=drop_last,
        persistent_workers=workers > 0, generator=generator,
    )


class DeviceNormalize:
    """uint8 NHWC batch -> normalised float NCHW on the device (channels_last memory for free)."""

    def __init__(self, mean, std, device, channels_last: bool):
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        # permute of NHWC is already channels_last; NCHW-contiguous is faster on CPU convs.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
