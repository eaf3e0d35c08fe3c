"""python -m distill --student CONFIG [key=value ...]: distil the blended ensemble into one student network."""
from __future__ import annotations

import argparse

from competition.cli import Competition, competition_args
from pipelines.config import available_configs, resolve
from submissions.blend import BLENDS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distill", description=__doc__)
    competition_args(ap)
    ap.add_argument("--student", required=True, help=f"one of {', '.join(available_configs())} or a YAML path")
    ap.add_argument("--name", default=None, help="the student's model name (default: <student>-student)")
    ap.add_argument("--teacher", default=None, help="comma list of members; default: every complete non-student model")
    ap.add_argument("--blend", default=None, choices=BLENDS, help="the teacher's blend; default: its best OOF score")
    ap.add_argument("--teacher-weight", type=float, default=0.5,
                    help="the teacher's share of each train row's target, the labels' is the rest (default 0.5)")
    ap.add_argument("--temperature", type=float, default=1.0, help="divides the teacher's logits (> 1: softer)")
    ap.add_argument("--pseudo", action=argparse.BooleanOptionalAction, default=True,
                    help="also train on the test rows with the teacher's probabilities (default: on)")
    ap.add_argument("--force", action="store_true", help="start the student over if its run is incompatible")
    a, overrides = ap.parse_known_args(argv)  # the rest are key=value config overrides
    from distill.student import check_mix, run_distill
    check_mix(a.teacher_weight, a.temperature)
    cfg = resolve(a.student, overrides)
    comp = Competition.of(a)
    run_distill(comp.spec, comp.dataset(), comp.run, cfg, a.teacher.split(",") if a.teacher else None,
                a.blend, a.teacher_weight, a.temperature, a.pseudo, a.name, a.force)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
