"""The teacher: the blended ensemble's probabilities, each from models that never saw the row's label."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from competition.errors import UserError
from competition.formats import ModelMeta
from competition.layout import RunLayout
from competition.probs import logit
from pipelines.result import SoftTargets
from submissions.blend import BLENDS, DEFAULT_BLENDS
from submissions.budget import Budget, gpu_hours_by_model
from submissions.ensemble import build_ensemble
from submissions.members import complete
from submissions.postprocess import Settings


@dataclasses.dataclass
class Teacher:
    names: list[str]
    blend: str                # the blend method that produced the probabilities
    oof: np.ndarray           # (train rows, labels): fold-wise out-of-fold, never in-sample
    fold_tests: np.ndarray    # (k, test rows, labels): fold f's models only, which never saw fold f
    test: np.ndarray          # (test rows, labels): what the ensemble itself would submit
    score: float              # OOF metric at the best global threshold
    size_mb: float            # its fold models' weight files
    gpu_hours: dict[str, float]

    def sha256(self) -> str:
        """Identifies the probabilities a student learned from: a changed teacher is other data."""
        digest = hashlib.sha256()
        for a in (self.oof, self.fold_tests, self.test):
            digest.update(np.round(a, 6).tobytes())
        return digest.hexdigest()

    def record(self) -> dict:
        """What the student learned from: part of its config, so a changed teacher stops a resume."""
        return {"teacher": tuple(self.names), "blend": self.blend, "teacher_sha256": self.sha256()}

    def summary(self) -> dict:
        """What the teacher scored, weighed and cost when the student learned from it (meta.json). Not in the
        config: a teacher member's later refit adds GPU-hours without changing what the student learned."""
        return {"teacher_score": round(self.score, 6), "teacher_mb": round(self.size_mb, 3),
                "teacher_gpu_hours": self.gpu_hours}


def teacher_names(run: RunLayout, names: list[str] | None, student: str) -> list[str]:
    """The given members, or every complete model that is not itself a student."""
    if names:
        if student in names:
            raise UserError(f"the student {student!r} cannot be its own teacher")
        return names
    found = [n for n in run.model_names() if n != student and complete(run.model(n))
             and ModelMeta.read(run.model(n).meta).distill is None]
    if not found:
        raise UserError(f"{run.models}: no complete trained model to learn from; train the ensemble first")
    return found


def build_teacher(spec, ds, run: RunLayout, names: list[str], blend: str | None = None, log=print) -> Teacher:
    """The ensemble of `names` with no budget (the teacher is never submitted), blended by `blend` or its best."""
    if blend and BLENDS[blend].ranks:
        raise UserError(f"blend {blend}: its values are ranks, not probabilities a student can learn; "
                        f"valid: {', '.join(b for b, c in BLENDS.items() if not c.ranks)}")
    probable = tuple(b for b in DEFAULT_BLENDS if not BLENDS[b].ranks)
    tried = probable if blend in (None, *probable) else (*probable, blend)
    settings = Settings(Budget(None, None), method=None, trials=1, seed=0, blends=tried)  # blends only: no thresholds
    ens = build_ensemble(spec, ds, run, settings, names, log=lambda *_: None, keep_blends=True)
    name = blend or ens.blend_name
    if name not in ens.blends:
        raise UserError(f"blend {name!r} is not available for {len(names)} member(s); valid: {', '.join(ens.blends)}")
    b = ens.blends[name]
    return Teacher(names, name, b.oof, b.fold_tests, b.test, b.score, ens.cost()[0],
                   gpu_hours_by_model(ens.members))


def soften(prob: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities with its logits divided by the temperature (> 1: softer)."""
    return prob if temperature == 1 else 1 / (1 + np.exp(-logit(prob) / temperature))


def soft_targets(teacher: Teacher, y: np.ndarray, fold: int | None, weight: float, temperature: float,
                 pseudo: bool) -> SoftTargets:
    """Targets for fold `fold`'s student (None: the refit on every row). Train rows: `weight` x the teacher's
    OOF + (1 - weight) x the labels. Test rows (pseudo): the teacher alone, from fold `fold`'s models for a
    fold student, so nothing it learns on them came from its validation rows' labels."""
    train = weight * soften(teacher.oof, temperature) + (1 - weight) * y
    test = teacher.test if fold is None else teacher.fold_tests[fold]
    return SoftTargets(train, soften(test, temperature) if pseudo else None)
