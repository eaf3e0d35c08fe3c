"""Pseudo-labels: a `make pseudo` artifact's soft labels for the test rows, as training targets (`pseudo=NAME`).

The test rows are unlabelled data. A fold's model learns them from the probabilities of that fold's models
of the ensemble only (fold f's models never saw fold f's labels), so its validation fold stays unseen and
its OOF stays honest; the full-data refit learns them from the whole ensemble. The train rows keep their
labels. A test row joins when every label's probability is at least `pseudo_confidence` sure (p or 1 - p):
0.5 takes every row, 0.9 only rows the ensemble is sure about.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from competition.artifacts import read_json
from competition.errors import UserError
from competition.formats import read_probs
from competition.layout import RunLayout
from pipelines.result import SoftTargets


@dataclasses.dataclass
class Pseudo:
    name: str
    record: dict               # members, blend, score, k, sha256 (pseudo.json)
    test: np.ndarray           # (test rows, labels): the whole ensemble's
    fold_tests: np.ndarray     # (k, test rows, labels): fold f's models only


def read_pseudo(run: RunLayout, name: str, ds, tokens, k: int) -> Pseudo:
    layout = run.pseudo(name)
    if not layout.record.exists():
        have = sorted(p.name for p in (run.root / "pseudo").iterdir()) if (run.root / "pseudo").is_dir() else []
        raise UserError(f"{layout.dir}: no pseudo-labels {name!r} (make pseudo NAME={name}); "
                        f"made: {', '.join(have) or 'none'}")
    record = read_json(layout.record)
    if record["k"] != k or record["labels"] != list(tokens):
        raise UserError(f"{layout.dir}: made for {record['k']} folds and labels {record['labels']}; this run has "
                        f"{k} folds and {list(tokens)}: make pseudo again")
    ids = list(ds.test["id"])
    return Pseudo(name, record, read_probs(layout.test, ids, tokens),
                  np.stack([read_probs(layout.test_fold(f), ids, tokens) for f in range(k)]))


def confident_rows(prob: np.ndarray, confidence: float) -> np.ndarray:
    """Test rows whose every label the ensemble is at least `confidence` sure of."""
    return np.nonzero((np.maximum(prob, 1 - prob) >= confidence).all(1))[0]


def pseudo_targets(pseudo: Pseudo, y: np.ndarray, confidence: float):
    """targets_for(fold): the labels for train rows, fold `fold`'s soft labels for the confident test rows
    (fold None: the refit, the whole ensemble's)."""
    def targets_for(fold):
        test = pseudo.test if fold is None else pseudo.fold_tests[fold]
        return SoftTargets(y.astype(np.float64), test, confident_rows(test, confidence))
    return targets_for
