"""All augmentation lives here (albumentations), so the library can be swapped in one place.

Transforms work on uint8 HWC arrays; normalisation happens later, on the device, per batch.
"""
from __future__ import annotations

import albumentations as A


def train_transform(level: str, size: int):
    """none | light | strong. Crops keep >= 50-70% of the image: a multi-label scene loses labels to tight crops."""
    if level == "none":
        return eval_transform(size)
    if level == "light":
        return A.Compose([
            A.RandomResizedCrop(size=(size, size), scale=(0.7, 1.0), ratio=(0.8, 1.25)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.Affine(rotate=(-10, 10), p=0.3),
        ])
    if level == "strong":
        return A.Compose([
            A.RandomResizedCrop(size=(size, size), scale=(0.5, 1.0), ratio=(0.75, 1.33)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), p=0.5),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                            hole_width_range=(0.05, 0.15), p=0.3),
        ])
    raise KeyError(f"unknown augment level {level!r}; valid: none, light, strong")


def eval_transform(size: int):
    """Cached images already have the training size; resize only when a cache of another size is reused."""
    return A.Compose([A.Resize(height=size, width=size)])
