"""`make pseudo`: the blended ensemble's soft labels for the test rows, for training on them (`pseudo=NAME`).

    python -m distill.pseudo --comp comp5329 [--models a,b] [--blend stack] [--name blend]

Writes runs/<COMP>/pseudo/<NAME>/: test.csv (the ensemble's probabilities), test_fold<f>.csv (fold f's
models only: what fold f's model may learn without seeing its validation rows' labels through them) and,
last, pseudo.json (members, blend, their OOF score, a sha256 of the probabilities).
"""
from __future__ import annotations

import argparse

from competition.artifacts import write_json
from competition.cli import Competition, competition_args
from competition.errors import UserError
from competition.formats import write_probs
from competition.layout import RunLayout
from distill.teacher import build_teacher, teacher_names
from submissions.blend import BLENDS


def write_pseudo(spec, ds, run: RunLayout, names: list[str] | None = None, blend: str | None = None,
                 name: str = "blend", log=print) -> dict:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"pseudo-label name {name!r}: letters, digits, - and _ only")
    members = teacher_names(run, names, student="")
    t = build_teacher(spec, ds, run, members, blend, log)
    out = run.pseudo(name)
    ids = ds.test["id"]
    write_probs(out.test, ids, t.test, spec.tokens)
    for f, prob in enumerate(t.fold_tests):
        write_probs(out.test_fold(f), ids, prob, spec.tokens)
    record = {"name": name, "members": members, "blend": t.blend, "oof_score_global_thr": t.score,
              "metric": spec.metric, "k": len(t.fold_tests), "labels": list(spec.tokens), "sha256": t.sha256()}
    write_json(out.record, record)
    log(f"pseudo-labels {name}: {len(ids)} test rows from {'+'.join(members)} ({t.blend} blend, OOF {spec.metric} "
        f"{t.score:.4f}) -> {out.dir}; train with SET=\"pseudo={name}\"")
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill.pseudo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    competition_args(ap)
    ap.add_argument("--models", default=None, help="comma list; default: every complete model that is not a student")
    ap.add_argument("--blend", default=None, choices=BLENDS, help="default: the best OOF score")
    ap.add_argument("--name", default="blend", help="the artifact's name, for pseudo=NAME (default: blend)")
    a = ap.parse_args(argv)
    comp = Competition.of(a)
    write_pseudo(comp.spec, comp.dataset(check=False), comp.run, a.models.split(",") if a.models else None,
                 a.blend, a.name)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
