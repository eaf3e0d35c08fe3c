"""The one scoring object of post-processing: which rows, their labels and folds, the spec's metric and its
min-labels rule. Built once from the spec (`Scoring.of`) and handed down whole, so no function below the
command line can optimise another metric or rule by a forgotten argument."""
from __future__ import annotations

import dataclasses

import numpy as np

from competition.metrics import decide, objective


@dataclasses.dataclass(frozen=True, eq=False)
class Scoring:
    y: np.ndarray           # (rows, labels) 0/1 targets
    fold: np.ndarray        # fold of each row
    metric: str             # the spec's objective (competition.metrics.OBJECTIVES)
    min_labels: int         # the spec's "at least this many labels per image" rule

    @classmethod
    def of(cls, spec, y: np.ndarray, fold: np.ndarray) -> Scoring:
        objective(spec.metric)  # an unknown metric fails here, naming the valid ones
        return cls(np.asarray(y), np.asarray(fold), spec.metric, spec.min_labels_per_image)

    @property
    def exact(self) -> bool:
        """The exact threshold search applies: micro-F1 with the rule "at least 0 or 1 label"."""
        return objective(self.metric).exact_thresholds and self.min_labels <= 1

    @property
    def folds(self) -> np.ndarray:
        return np.unique(self.fold)

    def rows(self, mask) -> Scoring:
        """The same scoring on a subset of the rows (the inner folds of a nested estimate)."""
        return dataclasses.replace(self, y=self.y[mask], fold=self.fold[mask])

    def decide(self, prob: np.ndarray, thresholds) -> np.ndarray:
        return decide(prob, thresholds, self.min_labels)

    def of_pred(self, pred: np.ndarray, mask=None) -> float:
        """The metric of 0/1 decisions over every row (or those of `mask`)."""
        y = self.y if mask is None else self.y[mask]
        return objective(self.metric).score(y, pred)

    def score(self, prob: np.ndarray, thresholds) -> float:
        """The metric of `prob` decided at `thresholds` under the rule, over every row."""
        return self.of_pred(self.decide(prob, thresholds))
