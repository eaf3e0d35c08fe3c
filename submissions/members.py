"""Trained models as blend members: OOF and test probabilities, sizes and costs, checked for compatibility."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from competition.artifacts import file_sha256
from competition.errors import UserError
from competition.formats import ModelMeta, read_probs, retrain_hint, weights_mb
from competition.layout import ModelLayout, RunLayout
from competition.reader import Dataset
from pipelines.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FoldTests:
    """A member's fold models' test probabilities, `[f]` = fold f's (test rows, labels), read from its file when
    asked: only a teacher asks, and all of them held for every member are 330 MB a member at iMet's 7,443 x 1,103
    (benchmarks/submit_scale.py). A file changed since the member was loaded is refused, not read."""
    files: tuple[Path, ...]
    stamps: tuple[tuple[int, int], ...]  # each file's (size, mtime_ns) when the member was loaded
    ids: tuple[str, ...]
    tokens: tuple[str, ...]

    @classmethod
    def of(cls, files, ids, tokens) -> FoldTests:
        return cls(tuple(files), tuple(stamp(p) for p in files), tuple(ids), tuple(tokens))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, f: int) -> np.ndarray:
        path = self.files[f]
        if stamp(path) != self.stamps[f]:
            raise UserError(f"{path}: changed since this command loaded its model; run the command again")
        return read_probs(path, self.ids, self.tokens)


def stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {retrain_hint(path)}") from None
    return st.st_size, st.st_mtime_ns


@dataclasses.dataclass
class Member:
    name: str
    dir: Path
    meta: ModelMeta
    oof: np.ndarray                 # (train rows, labels), train.csv order
    test_folds: np.ndarray          # mean over fold models, test.csv order
    test_by_fold: FoldTests         # [f]: fold model f's test rows (it never saw fold f), read when asked
    test_full: np.ndarray | None    # full-data refit, if trained
    folds_mb: float                 # all fold weight files
    full_mb: float | None
    gpu_hours: float
    oof_sha256: str
    # The frozen parts it needs once beside its fits (a sentence encoder), by content: sha256 -> MB. folds_mb and
    # full_mb count them; members whose parts are the same bytes ship and count them once (submissions.budget).
    shared: dict[str, float] = dataclasses.field(default_factory=dict)

    def test(self, use_full: bool) -> np.ndarray:
        return self.test_full if use_full else self.test_folds

    def size_mb(self, use_full: bool) -> float:
        return self.full_mb if use_full else self.folds_mb

    @property
    def distill(self) -> dict | None:
        """A distilled student's record (teacher members, blend, mix; the teacher's score, MB and GPU-hours),
        None for other members."""
        return self.meta.distill

    @property
    def teacher_gpu_hours(self) -> dict[str, float]:
        """A student's teachers were trained for it: their GPU-hours count against the budget too."""
        return self.distill.get("teacher_gpu_hours", {}) if self.distill else {}


def load_member(model: ModelLayout, ds: Dataset, tokens) -> Member:
    meta = ModelMeta.read(model.meta)
    train_ids, test_ids = list(ds.train["id"]), list(ds.test["id"])
    oof = read_probs(model.oof, train_ids, tokens)
    by_fold = FoldTests.of([model.test_fold(f) for f in range(meta.k)], test_ids, tokens)
    test_folds = by_fold[0]
    for f in range(1, meta.k):  # one fold's rows at a time: the sum np.stack(...).mean(0) adds, bitwise
        test_folds += by_fold[f]
    test_folds /= meta.k
    test_full = read_probs(model.test_full, test_ids, tokens) if meta.full else None
    shared = {part_sha256(model.dir / p): weights_mb(model.dir / p) for p in meta.shared_weights}
    shared_mb = sum(shared.values())  # once for every fold
    folds_mb = sum(weights_mb(model.dir / meta.fold_weights(f)) for f in range(meta.k)) + shared_mb
    full_mb = weights_mb(model.dir / meta.full.weights) + shared_mb if meta.full else None
    return Member(model.name, model.dir, meta, oof, test_folds, by_fold, test_full, folds_mb, full_mb,
                  float(meta.gpu_hours), file_sha256(model.oof), shared)


def part_sha256(path: Path) -> str:
    """sha256 of a shared part, a file or a folder (its files' names and bytes): equal digests, equal bytes."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\0".encode())
    return digest.hexdigest()


def complete(model: ModelLayout) -> bool:
    return model.meta.exists() and model.oof.exists() and ModelMeta.read(model.meta).complete


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
    bad = []
    for n in names:
        meta = ModelMeta.read(run.model(n).meta)
        if meta.folds_sha256 != folds_sha:
            bad.append(f"{n}: trained on another folds file ({meta.folds_sha256[:12]} vs current {folds_sha[:12]})")
        if meta.labels != list(spec.tokens):
            bad.append(f"{n}: label order {meta.labels} differs from the spec")
        kind = ModelConfig.from_json(meta.config, str(run.model(n).meta)).data_kind
        if meta.data_sha256 and meta.data_sha256 != ds.fingerprint(kind):
            bad.append(f"{n}: trained on other data (ids, labels, captions or images changed since)")
    if bad:
        raise UserError("refusing to blend members trained on different folds, data or labels (retrain them):\n  "
                        + "\n  ".join(bad))
    return [load_member(run.model(n), ds, spec.tokens) for n in names]
