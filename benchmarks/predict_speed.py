"""Throughput of `make predict` against its members' bare forward passes, in one run on this machine.

    .venv/bin/python benchmarks/predict_speed.py --bundle runs/<COMP>/bundles/<name> --data <folder> [--images N]

`predict_bundle` end to end (manifest check, loading every member, reading test.csv, decoding and resizing every
image, every member, blend, thresholds, validation, the CSV), then the members' forward passes alone on the same
rows: the image networks through `make predict`'s own network step (`batch_probs`: normalisation, views, a trunk
that members share once) on images decoded beforehand, in the same batches, and each captions member's models on the
captions (a sentence encoder's embeddings once per member, as predict computes them). The ratio says what loading,
decoding, resizing and blending cost beside the forward passes. `--images N` above the test rows adds train rows
(image and caption, labels dropped: speed does not depend on whether the bundle saw an image), so a run can time
close to COMP5329's 10,000 test images, which are projected from the end-to-end rate. It fails under 100 images
or when a timing is under a second.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bundle.predict import BATCH, batch_probs, captions_models, captions_probs, load_nets, predict_bundle, read_record
from bundle.record import MemberRecord
from competition import load_spec
from competition.images import load_resized
from competition.reader import decode_text, file_lines, image_files, load_test, split_records


def subset(data: Path, spec, n: int, out: Path) -> Path:
    """A copy of `data` whose test.csv holds n rows: its test rows first, then train rows with their labels
    dropped (raw records copied as they are, quirks included); images linked, not copied."""
    lines = file_lines(decode_text(data / spec.test_csv))
    rows = ["\n".join(r) for _, r in split_records(data / spec.test_csv, lines, spec.id_pattern)]
    if n > len(rows):
        train = data / spec.train_csv
        for _, record in split_records(train, file_lines(decode_text(train)), spec.id_pattern):
            image, _labels, caption = "\n".join(record).split(",", 2)
            rows.append(f"{image},{caption}")
    if n > len(rows):
        raise SystemExit(f"FAILED: {data} has {len(rows)} rows with images; asked for {n}")
    shutil.rmtree(out, ignore_errors=True)
    (out / spec.image_dir).mkdir(parents=True)
    (out / spec.test_csv).write_text("\n".join([lines[0], *rows[:n]]) + "\n")
    for image in (data / spec.image_dir).iterdir():
        (out / spec.image_dir / image.name).symlink_to(image.resolve())
    return out


@torch.no_grad()
def image_forward_seconds(folder: Path, members: tuple[MemberRecord, ...], spec, test, data: Path,
                          device) -> float:
    """`make predict`'s own network step (bundle.predict.batch_probs: every image network, a shared trunk once)
    on the same images, decoded beforehand, in the same batches."""
    nets = load_nets(folder, members, device)
    if not nets:
        return 0.0
    decoded = {s: np.stack([load_resized(p, s) for p in image_files(data / spec.test_images, test["id"], spec)])
               for s in {n.record.net.img_size for _, n in nets}}
    seconds = 0.0
    for i in range(0, len(test), BATCH):
        batch = {size: images[i:i + BATCH] for size, images in decoded.items()}
        t0 = time.perf_counter()
        for prob in batch_probs(nets, batch, device).values():
            prob.cpu()
        seconds += time.perf_counter() - t0
    return seconds


def captions_forward_seconds(folder: Path, members: tuple[MemberRecord, ...], test) -> float:
    """Each captions member's loaded models on the captions, through `make predict`'s own step
    (bundle.predict.captions_probs: features, a sentence encoder's embeddings once per member, the linear layer)."""
    texts, seconds = test["caption"].to_numpy(), 0.0
    for member in (m for m in members if m.kind == "captions"):
        models = captions_models(folder, member)
        t0 = time.perf_counter()
        captions_probs(models, texts)
        seconds += time.perf_counter() - t0
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=None, help="N rows: test rows, then train rows (default: test rows)")
    a = ap.parse_args()
    folder, data = Path(a.bundle), Path(a.data)
    record = read_record(folder)
    spec = load_spec(str(folder / "spec.yaml"))
    if a.images:
        data = subset(data, spec, a.images, Path(tempfile.gettempdir()) / "predict_speed_data")
    test = load_test(spec, data, any(m.reads_captions for m in record.members))
    if len(test) < 100:
        raise SystemExit(f"FAILED: {len(test)} images; time at least 100")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:  # a fresh OUT each time: never another run's predictions
        t0 = time.perf_counter()
        predict_bundle(folder, data, Path(tmp) / "predictions.csv", log=lambda *_: None)
        end_to_end = time.perf_counter() - t0
    images = image_forward_seconds(folder, record.members, spec, test, data, device)
    captions = captions_forward_seconds(folder, record.members, test)
    bare = images + captions
    if min(end_to_end, bare) < 1.0:
        raise SystemExit(f"FAILED: timings {end_to_end:.2f} s / {bare:.2f} s are too short to mean anything")
    rate = len(test) / end_to_end
    print(f"{len(test)} images on {device} ({torch.get_num_threads()} threads): make predict {end_to_end:.1f} s "
          f"= {rate:.1f} img/s; the members' forward passes alone {bare:.1f} s (image networks {images:.1f}, "
          f"captions {captions:.1f}) = {len(test) / bare:.1f} img/s; ratio "
          f"{bare / end_to_end:.2f}; 10,000 images: {10000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
