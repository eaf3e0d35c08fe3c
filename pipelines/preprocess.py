"""A network's input: a uint8 NHWC batch -> normalised float NCHW on the device, augmented when training.

One class for every consumer (training's batches and trunk cache, `make predict`, Grad-CAM), so their inputs
agree to the bit: (x - 255 mean) / (255 std) and (x / 255 - mean) / std differ in float32 rounding, and a
frozen trunk's fp16-cached features then round differently at inference than in training.
"""
from __future__ import annotations

import torch


class DeviceNormalize:
    """uint8 NHWC batch -> (augmented) normalised float NCHW on the device, channels_last if asked."""

    def __init__(self, mean, std, device, channels_last: bool, augment=None):
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.channels_last = channels_last
        self.augment = augment  # BatchAugment on the device path, applied to training batches only

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if train and self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        # channels_last: the permuted NHWC batch already has that layout; convnets run faster on it.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
