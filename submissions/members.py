"""Trained models as blend members: OOF and test probabilities, sizes and costs, checked for compatibility."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from competition.artifacts import file_sha256, read_json
from competition.errors import UserError
from competition.layout import ModelLayout, RunLayout
from competition.reader import Dataset
from folds.split import read_folds
from pipelines.run import data_fingerprint, read_probs, weights_mb


@dataclasses.dataclass
class Member:
    name: str
    dir: Path
    meta: dict
    oof: np.ndarray                 # (train rows, labels), train.csv order
    test_folds: np.ndarray          # mean over fold models, test.csv order
    test_by_fold: np.ndarray        # (k, test rows, labels): fold model f's, which never saw fold f
    test_full: np.ndarray | None    # full-data refit, if trained
    folds_mb: float                 # all fold weight files
    full_mb: float | None
    gpu_hours: float
    oof_sha256: str

    def test(self, use_full: bool) -> np.ndarray:
        return self.test_full if use_full else self.test_folds

    def size_mb(self, use_full: bool) -> float:
        return self.full_mb if use_full else self.folds_mb

    @property
    def distill(self) -> dict | None:
        """A distilled student's record (teacher members, blend, mix; the teacher's score, MB and GPU-hours),
        None for other members."""
        record = self.meta.get("config", {}).get("distill")
        return {**record, **self.meta.get("teacher", {})} if record else None

    @property
    def teacher_gpu_hours(self) -> dict[str, float]:
        """A student's teachers were trained for it: their GPU-hours count against the budget too."""
        return self.distill.get("teacher_gpu_hours", {}) if self.distill else {}


def meta_of(model: ModelLayout) -> dict:
    return read_json(model.meta, f"`make train MODEL={model.name}` writes it again (finished folds are kept)")


def load_member(model: ModelLayout, ds: Dataset, tokens) -> Member:
    meta = meta_of(model)
    k = meta["k"]
    train_ids, test_ids = list(ds.train["id"]), list(ds.test["id"])
    oof = read_probs(model.oof, train_ids, tokens)
    test_by_fold = np.stack([read_probs(model.test_fold(f), test_ids, tokens) for f in range(k)])
    full = meta.get("full")
    test_full = read_probs(model.test_full, test_ids, tokens) if full else None
    shared_mb = sum(weights_mb(model.dir / p) for p in meta.get("shared_weights", []))  # once for every fold
    folds_mb = sum((model.dir / meta["folds"][str(f)]["weights"]).stat().st_size for f in range(k)) / 2**20 + shared_mb
    full_mb = (model.dir / full["weights"]).stat().st_size / 2**20 + shared_mb if full else None
    return Member(model.name, model.dir, meta, oof, test_by_fold.mean(0), test_by_fold, test_full, folds_mb, full_mb,
                  float(meta["gpu_hours"]), file_sha256(model.oof))


def complete(model: ModelLayout) -> bool:
    if not model.meta.exists() or not model.oof.exists():
        return False
    meta = meta_of(model)
    return len(meta["folds_done"]) == meta["k"]


def load_members(spec, ds: Dataset, run: RunLayout, names: list[str] | None = None, log=print) -> list[Member]:
    """Every complete model under models/ (or exactly `names`), all on the current folds and labels."""
    available = run.model_names()
    if names:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise UserError(f"{run.models}: no trained model {unknown}; trained: {', '.join(available) or 'none'}")
        incomplete = [n for n in names if not complete(run.model(n))]
        if incomplete:
            raise UserError(f"{run.models}: models {incomplete} have unfinished folds; finish them with `make train`")
    else:
        names = [n for n in available if complete(run.model(n))]
        for n in sorted(set(available) - set(names)):
            log(f"skipping {n}: not every fold is trained")
    if not names:
        raise UserError(f"{run.models}: no complete trained model; run `make train MODEL=...` first")
    folds_sha = file_sha256(run.folds)
    read_folds(run.folds, list(ds.train["id"]))
    bad = []
    for n in names:
        meta = meta_of(run.model(n))
        if meta["folds_sha256"] != folds_sha:
            bad.append(f"{n}: trained on another folds file ({meta['folds_sha256'][:12]} vs current {folds_sha[:12]})")
        if meta["labels"] != list(spec.tokens):
            bad.append(f"{n}: label order {meta['labels']} differs from the spec")
        if meta.get("data_sha256") and meta["data_sha256"] != data_fingerprint(ds, meta["config"]):
            bad.append(f"{n}: trained on other data (ids, labels, captions or images changed since)")
    if bad:
        raise UserError("refusing to blend members trained on different folds, data or labels (retrain them):\n  "
                        + "\n  ".join(bad))
    return [load_member(run.model(n), ds, spec.tokens) for n in names]
