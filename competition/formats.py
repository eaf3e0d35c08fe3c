"""Artifact formats shared by every stage: probability frames, the submission's rows, weight sizes, and a model's
meta.json.

Training writes these and blending, distillation, Grad-CAM and prediction read them; they live on the ground
floor so no reader reaches into the training orchestrator for a file format.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from competition.artifacts import read_csv, read_json, write_csv, write_json
from competition.errors import UserError, offenders_error
from competition.records import field_problems

PROB_FILE_FORMAT = "%.6f"  # how probability files are written (OOF, fold and refit test files, pseudo-labels)


def as_stored(prob: np.ndarray) -> np.ndarray:
    """Probabilities as a probability file holds them once read back: `make predict` rounds each network's so, and
    averages them as `make submit` averages the files it reads."""
    return np.char.mod(PROB_FILE_FORMAT, np.asarray(prob, dtype=np.float64)).astype(np.float64)


def prob_frame(ids, prob: np.ndarray, tokens, fold=None) -> pd.DataFrame:
    """ImageID[,fold],<one column per label token>: how every probability file is written."""
    frame = pd.DataFrame(prob.astype(np.float64), columns=list(tokens))
    if fold is not None:
        frame.insert(0, "fold", fold)
    frame.insert(0, "ImageID", list(ids))
    return frame


PROBABILITY_FORMAT = "%.9g"  # a probability submission's cells: 9 significant digits, so no two values a model
                             # tells apart (float32 has 7-8 digits) tie in a ranking metric, and 1e-12 stays 1e-12


def write_probs(path: Path, ids, prob: np.ndarray, tokens, fold=None) -> None:
    """A probability file (`prob_frame`), its values in PROB_FILE_FORMAT: what `as_stored` reproduces."""
    write_csv(path, prob_frame(ids, prob, tokens, fold), PROB_FILE_FORMAT)


def submission_frame(spec, ids, prob: np.ndarray, values) -> pd.DataFrame:
    """The submission's rows. Labels: thresholds (`values`) and the min-labels rule applied, labels joined by the
    spec's separator. Probabilities: temperatures (`values`) applied, one column per label token, written as text
    in PROBABILITY_FORMAT. `make submit` and `make predict` both write this frame, so their files cannot differ
    in form."""
    from competition.metrics import decide
    from competition.probs import calibrate
    if spec.probabilities:
        cells = np.char.mod(PROBABILITY_FORMAT, calibrate(prob, values))
        frame = pd.DataFrame(cells, columns=list(spec.tokens))
        frame.insert(0, spec.id_column, list(ids))
        return frame
    pred = decide(prob, np.asarray(values), spec.min_labels_per_image)
    labels = [spec.label_separator.join(t for t, p in zip(spec.tokens, row) if p) for row in pred]
    return pd.DataFrame({spec.id_column: list(ids), spec.submission_column: labels})


def retrain_hint(path: Path) -> str:
    """How to rebuild a model's probability file: its fold is trained again once the file is gone."""
    return (f"delete it if it is broken, then `make train MODEL={Path(path).parent.name}` trains again every fold "
            "whose files are missing")


def read_probs(path: Path, ids, tokens, rebuild: str | None = None) -> np.ndarray:
    """(len(ids), labels) probabilities in the order of `ids`; a file that does not match is named."""
    rebuild = rebuild or retrain_hint(path)
    frame = read_csv(path, rebuild, dtype={"ImageID": str})
    if "ImageID" not in frame.columns:
        raise UserError(f"{path}: no ImageID column; {rebuild}")
    missing = [t for t in tokens if t not in frame.columns]
    if missing:
        raise UserError(f"{path}: label columns {missing} missing (label order differs from the spec?)")
    ids = list(ids)
    if len(frame) == len(ids) and (frame["ImageID"].to_numpy() == np.asarray(ids, dtype=object)).all():
        # The ids' own order, as training writes it: the columns as read, without a reindexed copy (one 880 MB
        # copy less per file at iMet's 100,000 x 1,103, benchmarks/submit_scale.py).
        prob = frame[list(tokens)].to_numpy(dtype=np.float64)
    else:
        frame = frame.set_index("ImageID")
        absent = [i for i in ids if i not in frame.index]
        if absent or len(frame) != len(ids):
            raise UserError(f"{path}: rows do not match the ids ({len(absent)} missing, {len(frame)} rows for "
                            f"{len(ids)} ids)")
        prob = frame.loc[ids, list(tokens)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prob).all(1) | (prob < 0).any(1) | (prob > 1).any(1)
    if bad.any():
        raise offenders_error(path, "rows with missing or out-of-range probabilities (retrain this model)",
                              [str(i) for i in np.asarray(ids)[bad]])
    return prob


def weights_mb(path: Path) -> float:
    """A weight file's size, or a folder's (a saved encoder), in MiB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """A fit's done.json (a fold, or the refit on every row), written last: the fit is done when it and every file
    it names exist. Fields after `params` belong to one kind of fit (or member) and are absent (None) elsewhere."""
    seconds: float
    hours: float
    gpu_hours: float
    device: str
    weights: str                    # relative to the model folder (it moves with the run)
    shared_weights: tuple[str, ...]  # needed beside the weights, counted once per model: a frozen encoder
    params: int
    inference: dict | None = None   # an image fit's InferenceRecord (pipelines.inference reads it); captions: none
    best_epoch: int | None = None   # a fold: its selected epoch
    epochs: int | None = None       # the refit: the epochs it trained (the folds' median best)
    backend: str | None = None      # a fold: the compute backend it trained on
    weights_source: str | None = None  # a fold: where its pretrained weights came from
    val: dict | None = None         # a fold: its validation scores

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if v is not None}

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data, where) -> FitRecord:
        optional = {f.name: None for f in dataclasses.fields(cls) if f.default is None}
        problems = (field_problems(cls, optional | data) if isinstance(data, dict) else
                    [f"a JSON {type(data).__name__}"])
        if problems:
            raise UserError(f"{where}: not a fit record ({'; '.join(problems)[:300]}); delete it: that fit is "
                            "then trained again")
        return cls(**(optional | data | {"shared_weights": tuple(data["shared_weights"])}))

    @classmethod
    def read(cls, path: Path) -> FitRecord:
        return cls.from_json(read_json(path, "delete it: that fit is then trained again"), path)


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """models/<MODEL>/meta.json: one model's folds, refit, sizes, costs and scores. `pipelines.run.write_meta`
    is its one writer; every reader takes this typed view."""
    model: str
    kind: str                       # image | captions
    config: dict                    # the resolved config it trained with
    folds_sha256: str
    data_sha256: str | None         # Dataset.fingerprint(kind) at training time
    k: int
    labels: list[str]
    folds: dict[int, FitRecord]     # fold -> its done.json record
    folds_done: list[int]
    weights_mb_per_fold: dict[int, float]
    shared_weights: list[str]       # needed once beside the fold (or refit) weights: a frozen encoder
    shared_mb: float
    full: FitRecord | None          # the refit's done.json record
    seconds: float
    gpu_hours: float
    oof: dict | None                # OOF scores once every fold is done
    teacher: dict | None = None     # a distilled student's teacher: score, MB and GPU-hours when it learnt

    @property
    def complete(self) -> bool:
        return len(self.folds_done) == self.k

    def fold_weights(self, fold: int) -> str:
        """Fold `fold`'s weight file, relative to the model folder."""
        return self.folds[fold].weights

    @property
    def distill(self) -> dict | None:
        """A distilled student's record (teacher members, blend, mix; the teacher's score, MB and GPU-hours)."""
        record = self.config.get("distill")
        return {**record, **(self.teacher or {})} if record else None

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "folds": {f: r.to_json() for f, r in self.folds.items()},
                "full": self.full.to_json() if self.full else None}

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        path = Path(path)
        raw = read_json(path, f"`make train MODEL={path.parent.name}` writes it again (finished folds are kept)")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            meta = cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as e:
            raise UserError(f"{path}: not a model's meta.json ({e}); `make train MODEL={path.parent.name}` "
                            "writes it again") from None
        # JSON keys are strings: folds by number, as everything else counts them.
        return dataclasses.replace(
            meta, folds={int(f): FitRecord.from_json(v, f"{path} fold {f}") for f, v in meta.folds.items()},
            full=None if meta.full is None else FitRecord.from_json(meta.full, f"{path} refit"),
            weights_mb_per_fold={int(f): v for f, v in meta.weights_mb_per_fold.items()})
