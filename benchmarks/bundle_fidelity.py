"""Fidelity of a bundle: `make predict`'s member probabilities against those its training run wrote, and its
submission rows against `make submit`'s, on the same test.csv.

    .venv/bin/python benchmarks/bundle_fidelity.py --runs runs --comp demo [--bundle runs/demo/bundles/<name>]

Per member: the largest and the mean absolute difference between the bundle's probabilities (bundle.predict's
own member functions, as `make predict` runs them) and the run's test probabilities of the same models (the
fold files' mean, or the refit's). Then the rows whose labels differ between the bundle's predictions and the
submission it was exported from. It fails if a member or the row count does not match.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bundle.predict import member_probs, predict_bundle, read_record
from bundle.record import MemberRecord
from competition import load_spec
from competition.cli import Competition, competition_args
from competition.layout import RunLayout
from competition.reader import image_files, load_test


def run_probs(run: RunLayout, member: MemberRecord, tokens) -> np.ndarray:
    model = run.model(member.name)
    files = [model.test_full] if member.refit else [model.test_fold(f) for f in range(len(member.weights))]
    return np.mean([pd.read_csv(p)[tokens].to_numpy() for p in files], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    competition_args(ap)
    ap.add_argument("--bundle", default=None, help="default: the newest bundle of the run")
    a = ap.parse_args()
    comp = Competition.of(a)
    run, run_spec = comp.run, comp.spec
    folder = Path(a.bundle) if a.bundle else max((p for p in run.bundles.iterdir() if p.is_dir()),
                                                 key=lambda p: p.stat().st_mtime)
    bundle = read_record(folder)
    spec = load_spec(str(folder / "spec.yaml"))
    data = Path(a.data or (run.demo_data if run_spec.name.startswith("demo") else run_spec.data))
    test = load_test(spec, data, any(m.reads_captions for m in bundle.members))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probs = member_probs(folder, bundle, test, image_files(data / spec.test_images, test["id"], spec), device)
    for record, mine in zip(bundle.members, probs):
        theirs = run_probs(run, record, spec.tokens)
        if mine.shape != theirs.shape:
            raise SystemExit(f"FAILED: {record.name}: {mine.shape} vs {theirs.shape}")
        diff = np.abs(mine - theirs)
        print(f"{record.name:<32} ({record.uses}): max |diff| {diff.max():.2e}, mean {diff.mean():.2e}")
    with tempfile.TemporaryDirectory() as tmp:  # a fresh OUT: never the predictions of an earlier export
        ours = pd.read_csv(predict_bundle(folder, data, Path(tmp) / "fidelity.csv", log=lambda *_: None), dtype=str,
                           keep_default_na=False)
    submitted = pd.read_csv(run.submissions / bundle.submission, dtype=str, keep_default_na=False)
    if len(ours) != len(submitted):
        raise SystemExit(f"FAILED: {len(ours)} predicted rows vs {len(submitted)} submitted")
    same = (ours.to_numpy() == submitted.to_numpy()).all(axis=1)
    print(f"rows whose labels differ from the submission: {int((~same).sum())} of {len(same)}")


if __name__ == "__main__":
    main()
