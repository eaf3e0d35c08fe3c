"""Decoding 4000 x 2672 px photos (Plant Pathology's size) for a 384 px model: `competition.images.load_resized`,
the one decode function of the image cache, training, the trunk cache, Grad-CAM and `make predict`, as it runs
(JPEG draft: decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers the model's size), and the same
function with the draft disabled (Pillow's JPEG `draft` a no-op: every pixel decoded, then resized).

    .venv/bin/python benchmarks/large_photos.py [--images 24] [--size 384]

Generates `--images` photo-like JPEGs (the demo's scenes rendered at 4000 x 2672, quality 90) in a temporary
folder, decodes them both ways (after one warm-up pass each; best of 3 passes), and prints images/s of each, the
mean and largest pixel difference, and what it changes in a network's outputs: tf_efficientnet_lite0 with its
offline ImageNet weights at `--size`, a seeded 18-label head (`pipelines.model.build_model`), max |sigmoid
difference| and the relative difference of the pooled features. Fails if the draft path did not decode at
reduced scale, or was not at least 2x faster.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from competition.demo_data import render, sample_labels
from competition.images import load_resized
from pipelines.config import resolve
from pipelines.model import build_model

SIZE = (4000, 2672)


def photos(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        square = render(i, sample_labels(rng), 1024)  # the demo's scene, then stretched to the photo's shape
        path = folder / f"photo_{i}.jpg"
        square.resize(SIZE, Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def decode_all(paths, size: int, draft: bool) -> tuple[np.ndarray, float]:
    """Every image by load_resized (best of 3 timed passes after a warm-up), with Pillow's draft on or off."""
    real = JpegImagePlugin.JpegImageFile.draft  # the JPEG plugin's own (Image.Image.draft is a no-op base)
    if not draft:
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None
    try:
        load_resized(paths[0], size)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = np.stack([load_resized(p, size) for p in paths])
            best = min(best, time.perf_counter() - t0)
    finally:
        JpegImagePlugin.JpegImageFile.draft = real
    return out, len(paths) / best


@torch.no_grad()
def outputs(images: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    cfg = resolve("tf_efficientnet_lite0", [f"img_size={size}"])
    net, _, mean, std = build_model(cfg, 18)
    net.eval()
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    x = x.permute(0, 3, 1, 2).contiguous()
    features = net.backbone(x)
    return torch.sigmoid(net.head(features)).numpy(), features.numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=384)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp), a.images)
        with Image.open(paths[0]) as im:
            scale = im.draft("RGB", (a.size, a.size))[1]  # (mode, box) of what the draft decodes
        reduced = (scale[2] - scale[0], scale[3] - scale[1])
        if reduced[0] >= SIZE[0]:
            raise SystemExit(f"the draft did not reduce the decode ({reduced}): the measurement is broken")
        full, full_rate = decode_all(paths, a.size, draft=False)
        fast, fast_rate = decode_all(paths, a.size, draft=True)
    diff = np.abs(full.astype(np.int16) - fast.astype(np.int16))
    p_full, f_full = outputs(full, a.size)
    p_fast, f_fast = outputs(fast, a.size)
    rel = np.linalg.norm(f_full - f_fast, axis=1) / np.linalg.norm(f_full, axis=1)
    print(f"{a.images} JPEGs of {SIZE[0]}x{SIZE[1]} -> {a.size}px; the draft decodes {reduced[0]}x{reduced[1]}")
    print(f"full decode {full_rate:.2f} img/s, draft {fast_rate:.2f} img/s: {fast_rate / full_rate:.1f}x")
    print(f"pixels: mean |diff| {diff.mean():.3f}, max {diff.max()} (of 255)")
    print(f"lite0 (offline ImageNet weights, seeded head): max |sigmoid diff| {np.abs(p_full - p_fast).max():.2e}, "
          f"pooled features relative diff mean {rel.mean():.4f}, max {rel.max():.4f}")
    if fast_rate < 2 * full_rate:
        raise SystemExit("the draft path was not 2x faster: the measurement or the decode is broken")


if __name__ == "__main__":
    main()
