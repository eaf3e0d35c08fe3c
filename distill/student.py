"""Train a student as a member like any other: K fold students give its honest OOF, a refit on every row is
what a one-model submission uses. Its run records the teacher, so a changed teacher is never reused silently."""
from __future__ import annotations

from competition.errors import UserError
from competition.formats import ModelMeta
from competition.layout import RunLayout
from distill.teacher import build_teacher, soft_targets, teacher_names
from folds.split import read_folds
from pipelines.config import DistillRecord, ImageConfig, ModelConfig
from pipelines.run import train_model
from submissions.blend import quick_score
from submissions.members import complete, load_members
from submissions.scoring import Scoring


def check_mix(weight: float, temperature: float) -> None:
    """TEACHER_WEIGHT and TEMPERATURE, checked by the command line before any work and by `run_distill`."""
    if not 0 <= weight <= 1:
        raise UserError(f"teacher weight {weight} (TEACHER_WEIGHT) must be in [0, 1] (0: labels only, 1: the "
                        "teacher only)")
    if not temperature > 0:
        raise UserError(f"temperature {temperature} must be > 0 (TEMPERATURE; 1: the teacher's own probabilities)")


def run_distill(spec, ds, run: RunLayout, cfg: ModelConfig, teacher: list[str] | None = None, blend: str | None = None,
                weight: float = 0.5, temperature: float = 1.0, pseudo: bool = True, name: str | None = None,
                force: bool = False, log=print) -> ModelMeta:
    """Distil the ensemble of `teacher` (default: every complete non-student model) into `cfg`'s network."""
    if not isinstance(cfg, ImageConfig):
        raise UserError(f"a student must be an image model; {cfg.name} is a {cfg.kind} model")
    check_mix(weight, temperature)
    name = name or f"{cfg.name}-student"
    names = teacher_names(run, teacher, name)
    t = build_teacher(spec, ds, run, names, blend, log)
    log(f"teacher: {', '.join(names)} ({t.blend} blend): OOF {spec.metric} {t.score:.4f} at the best global "
        f"threshold, {t.size_mb:.1f} MB of fold models")
    cfg = cfg.replace(name=name, fullfit=True,  # the refit on every row is the one-model submission
                      distill=DistillRecord(**t.record(), weight=weight, temperature=temperature, pseudo=pseudo))
    y = ds.targets()
    meta = train_model(spec, ds, run, cfg, force, log, teacher=t.summary(),
                       targets_for=lambda fold: soft_targets(t, y, fold, weight, temperature, pseudo))
    if complete(run.model(name)):
        compare(spec, ds, run, cfg, t, log)
    return meta


def same_network(run: RunLayout, cfg: ModelConfig) -> list[str]:
    """Complete models trained on the labels with the student's very settings: what the student must beat."""
    ignore = {"name", "distill"}
    mine = cfg.comparable(ignore)
    found = []
    for n in run.model_names():
        if n != cfg.name and complete(run.model(n)):
            other = ModelConfig.from_json(ModelMeta.read(run.model(n).meta).config, str(run.model(n).meta))
            if other.distill is None and other.comparable(ignore) == mine:
                found.append(n)
    return found


def compare(spec, ds, run: RunLayout, cfg: ModelConfig, t, log) -> None:
    """The student beside its teacher and beside the same network trained on the labels, if there is one."""
    sc = Scoring.of(spec, ds.targets(), read_folds(run.folds, list(ds.train["id"]), ds.groups()))
    base = same_network(run, cfg)
    members = load_members(spec, ds, run, [cfg.name, *base], log=lambda *_: None)
    student = members[0]
    log(f"student {student.name}: OOF {sc.metric} {quick_score(sc, student.oof):.4f} at the best global "
        f"threshold, refit {student.full_mb:.1f} MB; teacher {t.score:.4f}, {t.size_mb:.1f} MB")
    for m in members[1:]:
        log(f"the same network on the labels ({m.name}): OOF {sc.metric} {quick_score(sc, m.oof):.4f}")
