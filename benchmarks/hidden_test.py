"""Unseen images, honestly scored: hold out labelled images of a COMP5329 layout as a hidden test, train on the
rest, predict the hidden images with the exported bundle alone, and score its rows against their labels.

    .venv/bin/python benchmarks/hidden_test.py split --data data/comp5329-6k --out runs/hidden-split
    benchmarks/recipe.sh runs/hidden-split/train runs/hidden               # or any recipe on that folder
    make export COMP=comp5329 DATA=runs/hidden-split/train RUNS=runs/hidden
    make predict BUNDLE=runs/hidden/comp5329/bundles/<name> DATA=runs/hidden-split/hidden OUT=runs/hidden-split/pred.csv
    .venv/bin/python benchmarks/hidden_test.py score --out runs/hidden-split --pred runs/hidden-split/pred.csv

`split` draws --rows labelled records at random (--seed) and writes
  OUT/train/   train.csv (the other records, byte for byte), the original test.csv, data/ (links to their images
               only: the run cannot read a hidden image)
  OUT/hidden/  test.csv (the held-out ids and captions, no labels), data/ (links to their images)
  OUT/hidden_labels.csv  the held-out records as they were, labels included
`score` prints the predictions' micro-F1 (and the per-label F1s, weakest first) against hidden_labels.csv, beside
the bundle's own fully nested CV estimate when --bundle is given.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from competition import load_spec, metrics
from competition.reader import decode_text, encode, file_lines, read_records, split_records

SPEC = "comp5329"


def write_records(path: Path, header: str, records: list[str]) -> None:
    path.write_text("\n".join([header, *records]) + "\n", encoding="utf-8")


def link_images(src: Path, dst: Path, ids: list[str]) -> None:
    dst.mkdir(parents=True)
    for i in ids:
        os.symlink((src / i).resolve(), dst / i)


def split(data: Path, out: Path, rows: int, seed: int) -> None:
    spec = load_spec(SPEC)
    if out.exists():
        raise SystemExit(f"{out} exists: pick a new folder")
    path = data / spec.train_csv
    lines = file_lines(decode_text(path))
    records = ["\n".join(parts) for _, parts in split_records(path, lines, spec.id_pattern)]
    ids = [r.split(",", 1)[0].strip().strip('"') for r in records]
    if rows >= len(records):
        raise SystemExit(f"--rows {rows}: {path} holds only {len(records)} records")
    hidden = set(np.random.default_rng(seed).permutation(len(records))[:rows].tolist())
    keep = [i for i in range(len(records)) if i not in hidden]
    held = sorted(hidden)
    (out / "train").mkdir(parents=True)
    (out / "hidden").mkdir()
    write_records(out / "train" / spec.train_csv, lines[0], [records[i] for i in keep])
    test_lines = (data / spec.test_csv).read_bytes()
    (out / "train" / spec.test_csv).write_bytes(test_lines)
    test_ids = read_records(data / spec.test_csv, spec.id_pattern, [spec.id_column, spec.caption_column])
    seen = [ids[i] for i in keep] + list(test_ids.iloc[:, 0])
    link_images(data / spec.image_dir, out / "train" / spec.image_dir, seen)
    # A train record is id,labels,caption: the hidden test.csv keeps the id and the caption as they were.
    header = f"{spec.id_column},{spec.caption_column}"
    write_records(out / "hidden" / spec.test_csv, header,
                  [f"{ids[i]},{records[i].split(',', 2)[2] if records[i].count(',') >= 2 else ''}" for i in held])
    link_images(data / spec.image_dir, out / "hidden" / spec.image_dir, [ids[i] for i in held])
    write_records(out / "hidden_labels.csv", lines[0], [records[i] for i in held])
    print(f"{out}: train {len(keep)} labelled + {len(test_ids)} test rows, hidden {len(held)} rows (seed {seed})")


def score(out: Path, pred: Path, bundle: Path | None) -> None:
    spec = load_spec(SPEC)
    columns = [spec.id_column, spec.label_column, spec.caption_column]
    truth = read_records(out / "hidden_labels.csv", spec.id_pattern, columns)
    guess = read_records(pred, spec.id_pattern, [spec.id_column, spec.label_column])
    if sorted(truth.iloc[:, 0]) != sorted(guess.iloc[:, 0]):
        raise SystemExit(f"FAILED: {pred} does not hold exactly the {len(truth)} hidden ids")
    guess = guess.set_index(spec.id_column).loc[truth[spec.id_column]]
    def tokens(column):
        return encode([[t for t in str(s).split(spec.label_separator) if t] for s in column], spec.tokens)
    y, p = tokens(truth[spec.label_column]), tokens(guess[spec.label_column])
    print(f"hidden rows {len(y)}: micro-F1 {metrics.f1(y, p, 'micro'):.4f}, macro-F1 {metrics.f1(y, p, 'macro'):.4f}")
    per = [(metrics.f1(y[:, j], p[:, j], "binary"), spec.labels[t], int(y[:, j].sum()))
           for j, t in enumerate(spec.tokens)]
    print("weakest labels: " + ", ".join(f"{name} {f:.2f} ({n})" for f, name, n in sorted(per)[:6]))
    if bundle:
        scores = json.loads((bundle / "bundle.json").read_text())["scores"]
        print(f"the bundle's CV estimates: fully nested {scores['nested']:.4f}, in-sample {scores['oof']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--rows", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("score")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--pred", type=Path, required=True)
    c.add_argument("--bundle", type=Path, default=None)
    a = ap.parse_args()
    split(a.data, a.out, a.rows, a.seed) if a.cmd == "split" else score(a.out, a.pred, a.bundle)


if __name__ == "__main__":
    main()
