"""The whole post-processing as one function of OOF rows, and its fully nested estimate.

Post-processing = member choice (the best subset within budget), every blend, the best blend, the threshold
method (the best nested score) and its thresholds: everything `make submit` tunes after the members are
trained. `fully_nested` repeats all of it on K-1 folds' OOF rows, applies what it chose to the held-out
fold's member OOF, and pools the K held-out folds' decisions into one score (probabilities: each held-out
fold's score, averaged by rows, Scoring.pooled). Nothing in that score was
tuned on the rows it is scored on, except the members themselves: a member's OOF row comes from a model
that saw the other folds, the one leak every stacked pipeline keeps.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from competition.artifacts import read_json, write_json
from competition.errors import UserError
from competition.probs import Rows
from competition.records import as_json, record_problems
from submissions import thresholds as th
from submissions.blend import available, best_blend, check_blends, fit_blends
from submissions.budget import Budget, fit_budget
from submissions.scoring import Scoring


@dataclasses.dataclass(frozen=True)
class Settings:
    """What post-processing may choose and how hard it searches: built once where the command line is parsed
    (or a user's script), checked there, and handed down whole."""
    budget: Budget
    method: str | None          # threshold method; None: the best nested score
    trials: int                 # Optuna trials
    seed: int
    blends: tuple               # the blends to try
    storage: str | None = None  # Optuna storage URL of the submission's threshold study (None: SQLite in RUNS)

    def __post_init__(self):
        th.check_trials(self.trials)
        if self.method is not None and self.method not in th.METHODS:
            raise UserError(f"threshold method {self.method!r}; valid: {', '.join(th.METHODS)}")
        object.__setattr__(self, "blends", check_blends(self.blends))

    def key(self, sc: Scoring) -> str:
        return (f"{sc.metric}|{sc.min_labels}|{self.budget.model_mb}|{self.budget.gpu_hours}|"
                f"{self.budget.ignored}|{self.method}|{self.trials}|{self.seed}|{','.join(self.blends)}")


@dataclasses.dataclass
class Choice:
    """What post-processing chose on some rows, applicable to other rows' member probabilities."""
    members: list[str]
    blend_name: str
    blend: object
    method: str
    thresholds: np.ndarray          # its last step's value per label: a threshold, or a temperature
    scoring: Scoring                # of the rows it chose on: how the last step applies
    in_sample: float                # its thresholds' score on its blend's OOF over the rows it chose on

    def predict(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        prob = self.blend.apply([probs[name] for name in self.members])
        return self.scoring.decide(prob, self.thresholds)



@dataclasses.dataclass(frozen=True)
class OuterFold:
    """One outer fold of the fully nested estimate: what was chosen on the other folds, and its score here."""
    fold: int
    score: float
    members: tuple[str, ...]
    blend: str
    threshold_method: str


@dataclasses.dataclass(frozen=True)
class NestedEstimate:
    """nested/nested-<key>.json: the fully nested estimate (pooled over the outer folds) and each outer fold."""
    score: float
    per_fold: tuple[OuterFold, ...]

    def to_json(self) -> dict:
        return as_json(self)

    @classmethod
    def from_json(cls, data, where) -> NestedEstimate:
        problems = record_problems(cls, data, {"per_fold": OuterFold})
        if problems:
            raise UserError(f"{where}: not a fully nested estimate ({'; '.join(problems)[:300]}); delete it: "
                            "`make submit` computes it again")
        return cls(data["score"], tuple(OuterFold(**{**r, "members": tuple(r["members"])})
                                        for r in data["per_fold"]))

    @classmethod
    def read(cls, path: Path) -> NestedEstimate:
        return cls.from_json(read_json(path, "delete it: `make submit` computes the fully nested estimate again"),
                             path)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


def choose(members, sc: Scoring, settings: Settings, methods=None) -> Choice:
    """The post-processing `make submit` runs, on these rows alone (members' `oof` holds exactly them); `methods`:
    the threshold methods `make submit` compared on every row (default: those affordable on these rows)."""
    chosen, _, _ = fit_budget(members, sc, settings.budget, log=lambda *_: None)
    fitted = fit_blends([m.oof for m in chosen], sc, settings.blends, best_only=True)
    name = best_blend({k: v.select for k, v in fitted.items()})
    blend, oof = fitted[name].blend, fitted[name].oof
    methods = (settings.method,) if settings.method else methods
    row = th.pick(th.compare(sc, oof, settings.trials, settings.seed, methods), settings.method)
    return Choice([m.name for m in chosen], name, blend, row.method, row.thresholds, sc, row.in_sample)


def fully_nested(members, sc: Scoring, settings: Settings, log) -> NestedEstimate:
    """choose() on every K-1 folds, scored on the held-out fold; pooled score, per-fold scores and choices."""
    pred = np.zeros(sc.y.shape, dtype=np.float64 if sc.probabilities else np.uint8)
    per_fold = []
    if len(sc.folds) == 2:
        ranking, labels = sc.objective.ranking, sc.y.shape[1]
        skipped = [b for b in available(len(members), settings.blends, 2, ranking, labels)
                   if b not in available(len(members), settings.blends, 1, ranking, labels)]
        log("fully nested, 2 folds: each outer fold leaves one inner fold, so the choices inside it are made on "
            "in-sample scores" + (f" and {', '.join(skipped)} (fitted fold-wise) is skipped there" if skipped else ""))
    # The methods make submit compared on every row: one left out there for its cost stays out on fewer rows.
    methods = th.affordable(sc, settings.trials)
    for f in sc.folds:
        inner, outer = sc.fold != f, sc.fold == f
        # Each member's inner rows are read through its OOF (Rows): three copies of 706 MB at iMet's shape.
        choice = choose([dataclasses.replace(m, oof=Rows(m.oof, inner)) for m in members], sc.rows(inner),
                        settings, methods)
        pred[outer] = choice.predict({m.name: Rows(m.oof, outer) for m in members})
        per_fold.append(OuterFold(int(f), sc.of_pred(pred[outer], outer), tuple(choice.members),
                                  choice.blend_name, choice.method))
        log(f"fully nested: fold {f} {per_fold[-1].score:.4f} ({choice.blend_name} of "
            f"{'+'.join(choice.members)}, {choice.method} {sc.step}s)")
    return NestedEstimate(sc.pooled(pred), tuple(per_fold))
