"""One ensemble: the members within budget, every blend of them, the chosen blend and, once tuned, its
thresholds. Built once per command and handed whole to thresholds, submission and report."""
from __future__ import annotations

import dataclasses
import sys

from competition.layout import RunLayout
from folds.split import read_folds
from submissions.blend import Blended, best_blend, blend_all, quick_name, quick_score, scale_notes, too_large
from submissions.budget import cost, fit_budget
from submissions.members import Member, load_members
from submissions.postprocess import Settings
from submissions.scoring import Scoring


@dataclasses.dataclass(frozen=True)
class Ensemble:
    scoring: Scoring                # train rows' labels and folds, the spec's metric and min-labels rule
    settings: Settings              # what post-processing may choose (budget, blends, threshold method)
    members: list[Member]           # those within budget
    use_full: dict[str, bool]       # per member: its full-data refit instead of its fold models
    member_scores: dict[str, float]  # OOF metric at the best global threshold, scored once
    blends: dict[str, Blended]      # method -> the fitted blend, its oof, test rows, weights, scores
    blend_name: str                 # the blend with the best selection score
    budget_notes: list[str]
    students: list[dict]            # distilled students and their teachers
    candidates: list[Member]        # every member loaded, before the budget

    @property
    def blend(self) -> Blended:
        return self.blends[self.blend_name]

    def cost(self) -> tuple[float, float]:
        return cost(self.members, self.use_full)


def build_ensemble(spec, ds, run: RunLayout, settings: Settings, names=None, log=print,
                   keep_blends: bool = False) -> Ensemble:
    """Every complete member (or `names`), fitted into the budget, blended every way in the settings' blends;
    the best blend chosen. The other blends keep their scores; their rows too with `keep_blends` (a teacher may
    learn another blend), else they are let go (each holds OOF and test rows: 1 GB at iMet's shape)."""
    members = load_members(spec, ds, run, names, log=log)
    sc = Scoring.of(spec, ds.targets(), read_folds(run.folds, list(ds.train["id"]), ds.groups()))
    scores = {m.name: quick_score(sc, m.oof) for m in members}
    for m in members:
        log(f"member {m.name:<24} OOF {sc.metric} ({quick_name(sc)}) {scores[m.name]:.4f}  "
            f"{m.folds_mb:.1f} MB folds{f', {m.full_mb:.1f} MB refit' if m.full_mb else ''}  {m.gpu_hours:.3f} GPU-h")
    loaded = members
    members, use_full, notes = fit_budget(members, sc, settings.budget, log)
    if settings.budget.ignored and notes:
        print(notes[0], file=sys.stderr)
    students = [student_summary(m, scores[m.name], m in members, use_full) for m in loaded if m.distill]
    for st in students:
        log(f"student {st['name']}: OOF {sc.metric} {st['oof_score_global_thr']:.4f}, {st['size_mb']:.1f} MB "
            f"({st['uses']}); its teacher {'+'.join(st['teacher'])} ({st['teacher_blend']} blend): "
            f"OOF {st['teacher_oof_score_global_thr']:.4f}, {st['teacher_mb']:.1f} MB; "
            f"{'in this submission' if st['chosen'] else 'left out'}")
    if students and not notes:
        log(f"budget forced nothing: {cost(members, use_full)[0]:.1f} MB within {settings.budget.model_mb} MB")
    for name in settings.blends:
        reason = too_large(name, len(members), sc.y.shape[1])
        if reason:
            log(f"blend {name:<14} not tried: {reason}")
    scale_notes(sc, settings.blends, log)
    blends = blend_all(members, sc, use_full, settings.blends, best_only=not keep_blends)
    for name, b in blends.items():
        weights = dict(zip([m.name for m in members], [round(float(w), 3) for w in b.weights or []]))
        log(f"blend {name:<14} OOF {sc.metric} ({quick_name(sc)}) {b.score:.4f}, selection "
            f"{b.select:.4f}" + (f"  weights {weights}" if weights else ""))
    blend_name = best_blend({k: b.select for k, b in blends.items()})
    log(f"blend: {blend_name}")

    return Ensemble(sc, settings, members, use_full, {m.name: scores[m.name] for m in members}, blends, blend_name,
                    notes, students, loaded)


def student_summary(m: Member, score: float, chosen: bool, use_full: dict) -> dict:
    """A student beside its teacher, on the same footing: OOF metric at the best global threshold, and MB."""
    d, full = m.distill, use_full.get(m.name, m.full_mb is not None)
    return {"name": m.name, "oof_score_global_thr": score, "size_mb": round(m.size_mb(full), 3),
            "uses": "full-data refit" if full else f"{m.meta.k} fold models", "chosen": chosen,
            "teacher": d["teacher"], "teacher_blend": d["blend"],
            "teacher_oof_score_global_thr": d.get("teacher_score", float("nan")),
            "teacher_mb": d.get("teacher_mb", float("nan")), "teacher_gpu_hours": sum(m.teacher_gpu_hours.values()),
            "teacher_weight": d["weight"], "temperature": d["temperature"], "pseudo": d["pseudo"]}
