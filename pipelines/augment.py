"""All augmentation lives here, in two implementations of the same levels (`none | light | strong`).

- `train_transform`: albumentations on one uint8 HWC image (the DataLoader path, CPU workers).
- `BatchAugment`: the same operations on a whole uint8 batch already on the device (the device
  path): crop, flip, rotation and scale as one per-sample affine `grid_sample`; brightness,
  contrast, saturation and hue as per-sample scalars; dropout holes as per-sample rectangles.
  No per-sample Python: this is what keeps a GPU fed.

Both read their parameters from LEVELS, so a level means the same thing on either path (a test
compares the distributions of crop area and flips). Both are seeded from (run seed, epoch[, row]),
so a re-run or a resumed run draws the same augmentation.
"""
from __future__ import annotations

import math

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

# Crops keep >= 50-70% of the image: a multi-label scene loses labels to tight crops.
LEVELS = {
    "none": None,
    "light": dict(crop_scale=(0.7, 1.0), crop_ratio=(0.8, 1.25), flip=0.5,
                  jitter=(0.2, 0.2, 0.2, 0.02), jitter_p=0.5, rotate=10.0, zoom=(1.0, 1.0), affine_p=0.3,
                  holes=(0, 0), hole_size=(0.0, 0.0), holes_p=0.0),
    "strong": dict(crop_scale=(0.5, 1.0), crop_ratio=(0.75, 1.33), flip=0.5,
                   jitter=(0.3, 0.3, 0.3, 0.05), jitter_p=0.8, rotate=15.0, zoom=(0.9, 1.1), affine_p=0.5,
                   holes=(1, 4), hole_size=(0.05, 0.15), holes_p=0.3),
}


def level_params(level: str) -> dict | None:
    return LEVELS[level]  # pipelines.config checked the name against this table (REGISTRIES)


def train_transform(level: str, size: int, channels: int = 3):
    """The per-image albumentations pipeline of a level (DataLoader path). Saturation and hue are RGB's: other
    channels (microscopy's stains) get brightness and contrast only."""
    p = level_params(level)
    if p is None:
        return eval_transform(size)
    b, c, s, h = p["jitter"]
    ops = [
        A.RandomResizedCrop(size=(size, size), scale=p["crop_scale"], ratio=p["crop_ratio"]),
        A.HorizontalFlip(p=p["flip"]),
        A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=p["jitter_p"]) if channels == 3 else
        A.RandomBrightnessContrast(brightness_limit=b, contrast_limit=c, p=p["jitter_p"]),
        A.Affine(rotate=(-p["rotate"], p["rotate"]), scale=p["zoom"], p=p["affine_p"]),
    ]
    if p["holes_p"]:
        ops.append(A.CoarseDropout(num_holes_range=p["holes"], hole_height_range=p["hole_size"],
                                   hole_width_range=p["hole_size"], p=p["holes_p"]))
    return A.Compose(ops)


def eval_transform(size: int):
    """Cached images already have the training size; resize only when a cache of another size is reused."""
    return A.Compose([A.Resize(height=size, width=size)])


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, epoch, ...): independent streams per epoch and per row."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_transform(transform, seed: int) -> None:
    """Albumentations keeps its own random state; reseeding it per sample makes workers irrelevant."""
    transform.set_random_seed(seed)


class BatchAugment:
    """A level's augmentation on a (B, C, H, W) float batch in [0, 255], on whatever device it lives (C other than
    RGB's 3: brightness and contrast only, as `train_transform`)."""

    def __init__(self, level: str, size: int):
        self.p, self.size = level_params(level), size
        self.generator = None

    def reseed(self, device, *parts: int) -> None:
        self.generator = torch.Generator(device=device).manual_seed(stream_seed(*parts))

    def rand(self, *shape, device):
        return torch.rand(*shape, generator=self.generator, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.p is None:
            return x
        if self.generator is None or self.generator.device != x.device:
            self.reseed(x.device, 0)
        x = self.geometry(x)
        x = self.colour(x)
        return self.holes(x) if self.p["holes_p"] else x

    def crop_boxes(self, n: int, device, tries: int = 10):
        """RandomResizedCrop's sampling: area and log-ratio uniform, first candidate that fits, else the whole image."""
        p = self.p
        area = p["crop_scale"][0] + (p["crop_scale"][1] - p["crop_scale"][0]) * self.rand(n, tries, device=device)
        lo, hi = math.log(p["crop_ratio"][0]), math.log(p["crop_ratio"][1])
        ratio = torch.exp(lo + (hi - lo) * self.rand(n, tries, device=device))
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # fractions of the side
        fits = (w <= 1) & (h <= 1)
        first = torch.argmax(fits.int(), dim=1, keepdim=True)
        ok = fits.any(1)
        w = torch.where(ok, w.gather(1, first)[:, 0], torch.ones_like(ok, dtype=w.dtype))
        h = torch.where(ok, h.gather(1, first)[:, 0], torch.ones_like(ok, dtype=h.dtype))
        cx = (w / 2 + (1 - w) * self.rand(n, device=device)) * 2 - 1  # crop centre in [-1, 1] units
        cy = (h / 2 + (1 - h) * self.rand(n, device=device)) * 2 - 1
        return w, h, cx, cy

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Crop -> flip -> rotate/zoom about the centre, composed into one sampling grid per image."""
        p, n, dev = self.p, x.shape[0], x.device
        w, h, cx, cy = self.crop_boxes(n, dev)
        flip = torch.where(self.rand(n, device=dev) < p["flip"], -1.0, 1.0)
        affine = self.rand(n, device=dev) < p["affine_p"]
        angle = torch.deg2rad((self.rand(n, device=dev) * 2 - 1) * p["rotate"]) * affine
        zoom = p["zoom"][0] + (p["zoom"][1] - p["zoom"][0]) * self.rand(n, device=dev)
        zoom = torch.where(affine, zoom, torch.ones_like(zoom))
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # Output -> input: undo rotation/zoom, mirror, then map the unit square onto the crop box.
        theta = torch.stack([
            torch.stack([w * flip * cos, w * flip * sin, cx], 1),
            torch.stack([-h * sin, h * cos, cy], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Cropping happens before rotation: what a rotation brings in from outside the crop is padding
        # (black), as with albumentations, not the neighbouring scene.
        px = (grid[..., 0] - cx.view(n, 1, 1)) / w.view(n, 1, 1)
        py = (grid[..., 1] - cy.view(n, 1, 1)) / h.view(n, 1, 1)
        inside = (px.abs() <= 1) & (py.abs() <= 1)
        return out * inside.unsqueeze(1).to(out.dtype)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        p, n, dev = self.p, x.shape[0], x.device
        on = (self.rand(n, device=dev) < p["jitter_p"]).to(x.dtype).view(n, 1, 1, 1)
        b, c, s, hue = p["jitter"]

        def factor(k):  # 1 +- k, 1 where jitter is off for this image
            return 1 + on * k * (self.rand(n, device=dev).view(n, 1, 1, 1) * 2 - 1)
        x = x * factor(b)
        if x.shape[1] != 3:  # not RGB: contrast about each image's mean, no saturation or hue
            level = x.mean((1, 2, 3), keepdim=True)
            return ((x - level) * factor(c) + level).clamp_(0, 255)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray.mean((2, 3), keepdim=True)) * factor(c) + gray.mean((2, 3), keepdim=True)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray) * factor(s) + gray
        if hue:  # only where jitter is on: the YIQ round trip is not exact, "off" images must stay untouched
            x = torch.where(on.bool(), self.hue_shift(x, on.view(n) * hue * (self.rand(n, device=dev) * 2 - 1)), x)
        return x.clamp_(0, 255)

    @staticmethod
    def hue_shift(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        """Rotate the chroma plane in YIQ space by `turns` of a full circle (a cheap, batched hue shift)."""
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              device=x.device, dtype=x.dtype)
        a = turns.to(x.dtype) * 2 * math.pi
        rot = torch.zeros(len(a), 3, 3, device=x.device, dtype=x.dtype)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
        return torch.einsum("nij,njhw->nihw", m, x)

    def holes(self, x: torch.Tensor) -> torch.Tensor:
        """CoarseDropout: 1..k rectangles per chosen image, set to 0."""
        p, (n, _, hgt, wid), dev = self.p, x.shape, x.device
        k = p["holes"][1]
        count = p["holes"][0] + (self.rand(n, device=dev) * (k - p["holes"][0] + 1)).long()
        active = (torch.arange(k, device=dev) < count[:, None]) & (self.rand(n, 1, device=dev) < p["holes_p"])
        lo, hi = p["hole_size"]
        hh = (lo + (hi - lo) * self.rand(n, k, device=dev)) * hgt
        hw = (lo + (hi - lo) * self.rand(n, k, device=dev)) * wid
        y0, x0 = self.rand(n, k, device=dev) * (hgt - hh), self.rand(n, k, device=dev) * (wid - hw)
        rows = torch.arange(hgt, device=dev, dtype=x.dtype).view(1, 1, hgt, 1)
        cols = torch.arange(wid, device=dev, dtype=x.dtype).view(1, 1, 1, wid)
        inside = ((rows >= y0[..., None, None]) & (rows < (y0 + hh)[..., None, None])
                  & (cols >= x0[..., None, None]) & (cols < (x0 + hw)[..., None, None]) & active[..., None, None])
        return x.masked_fill(inside.any(1, keepdim=True), 0)


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, prob: float):
    """Multi-label mixup / cutmix of a training batch (images, or cached trunk features: feature mixup), with
    the targets mixed linearly by the same share: a mixed image holds both label sets, in part. timm's Mixup
    assumes one-hot targets (it smooths and mixes class ids). With both set, each mixed batch draws one of the
    two. The draws come from torch's CPU generator, which `start_epoch` seeds per epoch (a resume repeats them)."""
    if (not mixup and not cutmix) or float(torch.rand(())) >= prob:
        return x, y
    use_cutmix = cutmix > 0 and (mixup == 0 or float(torch.rand(())) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x)).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the share of each image that is its own
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * y + (1 - lam) * y[perm]
