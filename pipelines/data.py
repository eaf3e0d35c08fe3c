"""Two ways to feed a model from the uint8 cache (the uint8 -> normalised float step: pipelines.preprocess).

- Loader path: a DataLoader over memory-mapped cache rows, albumentations per image in workers.
- Device path (`DeviceBatches`): the cache rows live on the device (or in pinned host memory when
  they do not fit there); each batch is an index_select, augmented in batch by `BatchAugment`.
  No workers and no per-sample Python: on a GPU the per-sample CPU path was the bottleneck.

Every random draw is a function of (run seed, epoch[, row]), so a re-run and a resumed run see
the same batches and augmentations as an uninterrupted one, whatever the number of workers.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from competition.images import load_resized
from pipelines.augment import seed_transform, stream_seed


class CachedImages(Dataset):
    """Rows of the memory-mapped cache; the file is opened lazily so workers don't pickle the array."""

    def __init__(self, path, rows, targets=None, transform=None, seed=0):
        self.path, self.rows, self.targets, self.transform = str(path), np.asarray(rows), targets, transform
        self.seed, self.epoch = seed, 0
        self._array = None

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, i):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array[self.rows[i]]

    def target(self, i) -> torch.Tensor:
        return torch.from_numpy(self.targets[i].astype(np.float32)) if self.targets is not None else torch.zeros(0)

    def __getitem__(self, i):
        image = self.image(i)
        if self.transform is not None:
            seed_transform(self.transform, stream_seed(self.seed, self.epoch, self.rows[i]))
            image = self.transform(image=image)["image"]
        return torch.from_numpy(np.require(image, requirements=["C", "W"])), self.target(i)  # memmap: read-only


class DecodedImages(CachedImages):
    """Decodes the JPEG on every access: the slow path the cache replaces (used by the benchmark)."""

    def __init__(self, paths, size, targets=None, transform=None):
        super().__init__("", np.arange(len(paths)), targets, transform)
        self.paths, self.size = list(paths), size

    def image(self, i):
        return load_resized(self.paths[i], self.size)


def auto_workers(requested: int, device: torch.device) -> int:
    """-1: on CUDA up to 8 cores feed the GPU; on CPU none, since workers would take the cores the model
    computes on (the loader path then augments in the training process)."""
    if requested >= 0:
        return requested
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def make_loader(dataset, batch_size, shuffle, workers, device, drop_last=False, sampler=None, seed=0):
    # Training datasets change with the epoch (their augmentation seed): non-persistent workers
    # receive a fresh copy each epoch. Shuffling draws from `generator`, reseeded per epoch.
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=drop_last,
        persistent_workers=workers > 0 and not shuffle, generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader, seed: int, epoch: int) -> None:
    """Shuffle order and augmentation of `epoch` from the run seed alone (resume = uninterrupted run)."""
    if hasattr(loader, "set_epoch"):  # a batch source of ours (DeviceBatches, caption_tuning.TokenBatches)
        loader.set_epoch(epoch)
        return
    if getattr(loader.sampler, "set_epoch", None):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(stream_seed(seed, epoch, 1))
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def load_cache_rows(path, device: torch.device) -> torch.Tensor:
    """The whole uint8 cache as one tensor: on the device if it fits in half its free memory, else pinned host."""
    # Copy-on-write map: a writable view for torch without reading the file twice or touching it.
    host = torch.from_numpy(np.load(path, mmap_mode="c"))
    if fits_on_device(host.numel(), device):
        return host.to(device)
    return host.pin_memory() if device.type == "cuda" else host


class DeviceBatches:
    """Batches of cache rows, drawn on the device; a DataLoader stand-in for `fit` (len, iter, set_epoch)."""

    def __init__(self, images: torch.Tensor, rows, targets, batch_size: int, device: torch.device,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, rank: int = 0, world: int = 1):
        self.images, self.device, self.batch_size = images, device, batch_size
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.targets = None if targets is None else torch.as_tensor(np.asarray(targets, dtype=np.float32)).to(device)
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        n = len(self.rows)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, 1))
        order = torch.randperm(n, generator=g)
        return order[self.rank:n - n % self.world:self.world] if self.world > 1 else order

    def __len__(self) -> int:
        n = len(self.rows) // self.world
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self.order()
        for b in range(len(self)):
            pick = order[b * self.batch_size:(b + 1) * self.batch_size]
            rows = self.rows[pick]
            if self.images.device == self.device:
                x = self.images.index_select(0, rows.to(self.device))
            else:  # pinned host copy: gather there, copy asynchronously
                x = self.images.index_select(0, rows).pin_memory().to(self.device, non_blocking=True)
            y = self.targets.index_select(0, pick.to(self.device)) if self.targets is not None else torch.zeros(0)
            yield x, y
