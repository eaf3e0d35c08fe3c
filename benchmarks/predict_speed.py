"""Throughput of `make predict` against its members' bare forward passes, in one run on this machine.

    .venv/bin/python benchmarks/predict_speed.py --bundle runs/<COMP>/bundles/<name> --data <folder> [--images N]

`predict_bundle` end to end (manifest check, reading test.csv, decoding and resizing every image, every member,
blend, thresholds, validation, the CSV), then its network step alone (`batch_probs`: every image network, a trunk
that members share once) on the same images already decoded to tensors, in the same batches. The ratio says what
decoding, resizing and blending cost beside the networks; 10,000 test images (COMP5329's) are projected from the
end-to-end rate. It fails under 100 images or when a timing is under a second.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bundle.predict import BATCH, batch_probs, load_nets, predict_bundle, views_of
from competition import load_spec
from competition.images import load_resized
from competition.reader import load_test


def subset(data: Path, spec, n: int, out: Path) -> Path:
    """A copy of `data` whose test.csv keeps its first n rows (images linked, not copied)."""
    lines = (data / spec.test_csv).read_text().splitlines()
    shutil.rmtree(out, ignore_errors=True)
    (out / spec.image_dir).mkdir(parents=True)
    (out / spec.test_csv).write_text("\n".join(lines[:n + 1]) + "\n")
    for image in (data / spec.image_dir).iterdir():
        (out / spec.image_dir / image.name).symlink_to(image.resolve())
    return out


@torch.no_grad()
def bare_forward_seconds(folder: Path, bundle: dict, spec, test, data: Path, device) -> float:
    """`make predict`'s own network step (bundle.predict.batch_probs: every image network, a shared trunk once)
    on the same images, decoded and normalised beforehand, in the same batches."""
    records = [m for m in bundle["members"] if m["kind"] == "image"]
    nets = load_nets(folder, records, len(spec.tokens), device)
    decoded = {s: np.stack([load_resized(data / spec.image_dir / i, s) for i in test["id"]])
               for s in {n.view_key[0] for n in nets}}
    batches = [{n.view_key: views_of(decoded[n.view_key[0]][i:i + BATCH], n.view_key, device) for n in nets}
               for i in range(0, len(test), BATCH)]
    t0 = time.perf_counter()
    for views in batches:
        for total in batch_probs(nets, views, len(records), device):
            total.cpu()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=None, help="the first N test rows (default: all)")
    a = ap.parse_args()
    folder, data = Path(a.bundle), Path(a.data)
    bundle = json.loads((folder / "bundle.json").read_text())
    spec = load_spec(str(folder / "spec.yaml"))
    if a.images:
        data = subset(data, spec, a.images, Path("/tmp/predict_speed_data"))
    test = load_test(spec, data, any(m["kind"] == "captions" for m in bundle["members"]))
    if len(test) < 100:
        raise SystemExit(f"FAILED: {len(test)} images; time at least 100")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:  # a fresh OUT each time: never another run's predictions
        t0 = time.perf_counter()
        predict_bundle(folder, data, Path(tmp) / "predictions.csv", log=lambda *_: None)
        end_to_end = time.perf_counter() - t0
    bare = bare_forward_seconds(folder, bundle, spec, test, data, device)
    if min(end_to_end, bare) < 1.0:
        raise SystemExit(f"FAILED: timings {end_to_end:.2f} s / {bare:.2f} s are too short to mean anything")
    rate = len(test) / end_to_end
    print(f"{len(test)} images on {device} ({torch.get_num_threads()} threads): make predict {end_to_end:.1f} s "
          f"= {rate:.1f} img/s; the networks alone {bare:.1f} s = {len(test) / bare:.1f} img/s; ratio "
          f"{bare / end_to_end:.2f}; 10,000 images: {10000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
