"""Fit an ensemble into the competition's size and GPU-hour budgets.

Size = the weight files needed at inference (every fold of a member, or its single refit).
Cost = the GPU-hours its members' training recorded (a distilled student's teachers included). When the
chosen members exceed a budget, the subset (and per member folds or refit) with the best OOF score within budget wins.
"""
from __future__ import annotations

import dataclasses
import itertools

from competition.errors import UserError
from submissions.blend import mean_blend, quick_score
from submissions.scoring import Scoring

MAX_SEARCH_MEMBERS = 12


@dataclasses.dataclass
class Budget:
    model_mb: float | None      # None: no limit
    gpu_hours: float | None
    ignored: bool = False       # IGNORE_BUDGET: keep every member, and say the rules are broken

    @classmethod
    def of(cls, spec, model_mb=None, gpu_hours=None, ignored=False) -> Budget:
        """The spec's budgets unless overridden; a negative one is a UserError."""
        for name, value in (("BUDGET_MB", model_mb), ("BUDGET_GPU_HOURS", gpu_hours)):
            if value is not None and not value >= 0:
                raise UserError(f"{name}={value}: a budget is a number >= 0")
        return cls(spec.budget["model_mb"] if model_mb is None else model_mb,
                   spec.budget["gpu_hours"] if gpu_hours is None else gpu_hours, ignored)

    def allows(self, size, hours) -> bool:
        return within(size, hours, self.model_mb, self.gpu_hours)

    def summary(self, size, hours, notes) -> dict:
        return {"model_mb": self.model_mb, "gpu_hours": self.gpu_hours, "within": self.allows(size, hours),
                "notes": notes, "ignored": self.ignored}


def options(member):
    yield False
    if member.test_full is not None:
        yield True


def gpu_hours_by_model(members) -> dict[str, float]:
    """GPU-hours per trained model the members needed: a student's teachers count once, even when they are
    members too."""
    hours = {}
    for m in members:
        hours.update(m.teacher_gpu_hours)
    hours.update({m.name: m.gpu_hours for m in members})
    return hours


def cost(members, use_full: dict) -> tuple[float, float]:
    """(MB needed at inference, GPU-hours spent). A shared part two members hold in the same bytes (one sentence
    encoder under two captions members) is one file in the bundle, so it counts once."""
    own = sum(m.size_mb(use_full[m.name]) - sum(m.shared.values()) for m in members)
    shared = {sha: mb for m in members for sha, mb in m.shared.items()}
    return own + sum(shared.values()), sum(gpu_hours_by_model(members).values())


def within(size, hours, max_mb, max_hours) -> bool:
    return (max_mb is None or size <= max_mb + 1e-9) and (max_hours is None or hours <= max_hours + 1e-9)


def select(members, sc: Scoring, max_mb, max_hours):
    """(chosen members, use_full per name, list of reasons for what was dropped or swapped)."""
    # Prefer fold models (their test predictions match how the OOF was made) while they fit.
    fold_mode = {m.name: False for m in members}
    size, hours = cost(members, fold_mode)
    if within(size, hours, max_mb, max_hours):
        return members, fold_mode, []
    if len(members) > MAX_SEARCH_MEMBERS:
        raise UserError(f"{len(members)} members over budget: pass MODELS= to choose at most {MAX_SEARCH_MEMBERS}")
    best = None
    for r in range(len(members), 0, -1):
        for subset in itertools.combinations(members, r):
            for modes in itertools.product(*[list(options(m)) for m in subset]):
                use_full = {m.name: f for m, f in zip(subset, modes)}
                size, hours = cost(subset, use_full)
                if not within(size, hours, max_mb, max_hours):
                    continue
                oof, _ = mean_blend([m.oof for m in subset], [m.oof for m in subset])
                s = quick_score(sc, oof)
                key = (s, -sum(use_full.values()), -size)  # ties: fewer refits, then smaller
                if best is None or key > best[0]:
                    best = (key, list(subset), use_full)
    if best is None:
        raise UserError(f"no member fits the budget ({max_mb} MB, {max_hours} GPU-hours): "
                         + ", ".join(f"{m.name} {min(m.size_mb(f) for f in options(m)):.1f} MB "
                                     f"{m.gpu_hours:.2f} GPU-h" for m in members))
    _, chosen, use_full = best
    reasons = []
    for m in members:
        if m not in chosen:
            reasons.append(f"dropped {m.name} ({m.folds_mb:.1f} MB in folds, {m.gpu_hours:.2f} GPU-h): "
                           "the best blend within budget leaves it out")
        elif use_full[m.name]:
            reasons.append(f"{m.name} enters as its full-data refit ({m.full_mb:.1f} MB instead of "
                           f"{m.folds_mb:.1f} MB)")
    size, hours = cost(chosen, use_full)
    reasons.append(f"within budget: {size:.1f} MB <= {max_mb} MB, {hours:.2f} <= {max_hours} GPU-hours")
    return chosen, use_full, reasons


def fit_budget(members, sc: Scoring, budget: Budget, log):
    """(members, use_full, notes): the best subset within budget, or all of them with a warning when ignored."""
    if not budget.ignored:
        members, use_full, notes = select(members, sc, budget.model_mb, budget.gpu_hours)
        for line in notes:
            log(f"budget: {line}")
        return members, use_full, notes
    use_full = {m.name: False for m in members}
    size, hours = cost(members, use_full)
    if budget.allows(size, hours):
        return members, use_full, []
    return members, use_full, [f"WARNING: IGNORE_BUDGET: {size:.1f} MB / {hours:.2f} GPU-h exceeds the budget "
                               f"({budget.model_mb} MB, {budget.gpu_hours} GPU-h); this submission breaks the "
                               "competition rules"]
