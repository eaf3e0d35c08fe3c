"""The one scoring object of post-processing: which rows, their labels and folds, the spec's metric, its min-labels
rule and column weights. Built once from the spec (`Scoring.of`) and handed down whole, so no function below the
command line can optimise another metric or rule by a forgotten argument.

A submission's last step turns blended probabilities into what is scored, from one value per label: thresholds
and the min-labels rule (a labels submission), or temperatures (a probability submission, `calibrate`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from competition.metrics import Objective, decide, objective
from competition.probs import calibrate


@dataclasses.dataclass(frozen=True, eq=False)
class Scoring:
    y: np.ndarray           # (rows, labels) 0/1 targets
    fold: np.ndarray        # fold of each row
    metric: str             # the spec's objective (competition.metrics.OBJECTIVES)
    min_labels: int         # the spec's "at least this many labels per image" rule (labels submissions)
    weights: tuple | None = None  # probability metrics: each label column's weight (None: equal)

    @classmethod
    def of(cls, spec, y: np.ndarray, fold: np.ndarray) -> Scoring:
        objective(spec.metric)  # an unknown metric fails here, naming the valid ones
        weights = spec.column_weights()
        return cls(np.asarray(y), np.asarray(fold), spec.metric, spec.min_labels_per_image,
                   None if weights is None else tuple(weights))

    @property
    def objective(self) -> Objective:
        return objective(self.metric)

    @property
    def probabilities(self) -> bool:
        """The metric scores probabilities: the last step calibrates, nothing is thresholded."""
        return self.objective.probabilities

    @property
    def step(self) -> str:
        """What the last step sets per label, for people: a threshold, or a temperature."""
        return "temperature" if self.probabilities else "threshold"

    @property
    def exact(self) -> bool:
        """The exact threshold search applies: micro-F1 or samples F-beta with the rule "at least 0 or 1 label"."""
        return self.objective.exact_thresholds and self.min_labels <= 1

    @property
    def folds(self) -> np.ndarray:
        return np.unique(self.fold)

    def rows(self, mask) -> Scoring:
        """The same scoring on a subset of the rows (the inner folds of a nested estimate)."""
        return dataclasses.replace(self, y=self.y[mask], fold=self.fold[mask])

    def decide(self, prob: np.ndarray, values) -> np.ndarray:
        """What is submitted for `prob`: 0/1 decisions at thresholds `values`, or probabilities at temperatures."""
        return calibrate(prob, values) if self.probabilities else decide(prob, values, self.min_labels)

    def of_pred(self, pred: np.ndarray, mask=None) -> float:
        """The metric of submitted rows (decisions, or probabilities) over every row (or those of `mask`)."""
        y = self.y if mask is None else self.y[mask]
        o = self.objective
        return o.score(y, pred, self.weights) if o.probabilities else o.score(y, pred)

    def pooled(self, pred: np.ndarray) -> float:
        """The score of held-out rows from several folds' fits. Decisions pool into one score; probabilities score
        fold by fold, averaged by the folds' rows: pooled, a ranking metric would compare one fold's blend's scale
        with another's (a rank blend's quantiles beside a stack's probabilities), not their rankings. Log loss
        is a mean over rows, so the two agree there."""
        if not self.probabilities:
            return self.of_pred(pred)
        scores = [(self.of_pred(pred[self.fold == f], self.fold == f), (self.fold == f).sum()) for f in self.folds]
        return float(sum(s * n for s, n in scores) / sum(n for _, n in scores))

    def score(self, prob: np.ndarray, values) -> float:
        """The metric of `prob` after the last step at `values`, over every row."""
        return self.of_pred(self.decide(prob, values))
