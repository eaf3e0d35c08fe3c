"""The record `make submit` writes beside each submission CSV (`<submission>.json`): what went into it (members,
blend, thresholds), what it scored, what it cost. `submissions.submit` is its one writer; `make export` reads it
once, typed, and refuses anything else by name (another tool's JSON, a submission from before a field existed).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from competition.artifacts import read_json, write_json
from competition.errors import UserError
from competition.records import field_problems, record_problems

AGAIN = "run `make submit` again"


@dataclasses.dataclass(frozen=True)
class SubmittedMember:
    name: str
    refit: bool                   # its full-data refit predicts, not its fold models
    uses: str                     # "full-data refit" | "<k> fold models", for people
    size_mb: float
    gpu_hours: float
    oof_score_global_thr: float
    oof_sha256: str               # the OOF it was blended with: a member retrained since is another model


@dataclasses.dataclass(frozen=True)
class SubmittedBlend:
    method: str
    weights: tuple[float, ...] | None   # a mean blend's, one per member; None: a stacker
    file: str | None                    # a stacker's saved second level, beside the submission
    oof_score_global_thr_chosen: float
    oof_score_global_thr: dict          # every blend tried -> its OOF score at the best global threshold
    selection_score: dict               # every blend tried -> the score that chose among them


@dataclasses.dataclass(frozen=True)
class Sidecar:
    submission: str
    command: str
    competition: str
    metric: str
    members: tuple[SubmittedMember, ...]
    blend: SubmittedBlend
    thresholds: dict                    # label token -> threshold
    threshold_method: str
    oof_score: float
    nested_score: float                 # the fully nested estimate
    nested_per_fold: tuple[dict, ...]
    threshold_nested_score: float
    threshold_comparison: tuple[dict, ...]
    oof_metrics: dict
    best_member_oof_score: float
    size_mb: float
    gpu_hours: float
    budget: dict
    students: tuple[dict, ...]
    created: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data, where) -> Sidecar:
        def refuse(problems: list[str]):
            raise UserError(f"{where}: not the record `make submit` writes beside a submission "
                            f"({'; '.join(problems)[:300]}; SUBMISSION= names a CSV under runs/<COMP>/submissions/, "
                            f"not a `make predict` output); {AGAIN}")
        problems = record_problems(cls, data, {"members": SubmittedMember})
        if isinstance(data, dict) and not field_problems(cls, data):  # its fields are there and typed
            problems += [f"blend.{p}" for p in field_problems(SubmittedBlend, data["blend"])]
        if problems:
            refuse(problems)
        blend = data["blend"]
        return cls(**{**data, "members": tuple(SubmittedMember(**m) for m in data["members"]),
                      "blend": SubmittedBlend(**{**blend, "weights": None if blend["weights"] is None else
                                                 tuple(blend["weights"])}),
                      "nested_per_fold": tuple(data["nested_per_fold"]),
                      "threshold_comparison": tuple(data["threshold_comparison"]),
                      "students": tuple(data["students"])})

    @classmethod
    def read(cls, submission: Path) -> Sidecar:
        path = Path(submission).with_suffix(".json")
        return cls.from_json(read_json(path, "it is written by `make submit` beside its CSV"), path)
