"""python -m submissions {thresholds,submit,report,lb,lb-set}: blend trained models into a submission, and
the run log of every model and submission (lb), with public leaderboard scores recorded by hand (lb-set)."""
from __future__ import annotations

import argparse
import shlex
import sys

import pandas as pd

from competition.cli import Competition, competition_args
from competition.layout import RunLayout
from submissions.blend import BLENDS, DEFAULT_BLENDS
from submissions.thresholds import METHODS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submissions", description=__doc__)
    ap.add_argument("cmd", choices=["thresholds", "submit", "report", "lb", "lb-set"])
    competition_args(ap)
    ap.add_argument("--models", default=None, help="comma list; default: every complete model")
    ap.add_argument("--method", default=None, choices=METHODS,
                    help="the last step: a threshold method (labels submissions) or a temperature method "
                         "(probabilities); default: the best nested score")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-mb", type=float, default=None)
    ap.add_argument("--budget-gpu-hours", type=float, default=None)
    ap.add_argument("--ignore-budget", action="store_true")
    ap.add_argument("--storage", default=None,
                    help="Optuna storage URL for the threshold study (default: SQLite in the run folder); "
                         "a shared PostgreSQL URL lets several machines tune one study")
    ap.add_argument("--blends", default=None, help=f"comma list of blends to try; valid: {', '.join(BLENDS)} "
                                                   f"(default: {','.join(DEFAULT_BLENDS)})")
    ap.add_argument("--file", default=None, help="lb-set: the submission (its name or path)")
    ap.add_argument("--public", type=float, default=None, help="lb-set: its public leaderboard score")
    a = ap.parse_args(argv)
    comp = Competition.of(a)
    spec, run = comp.spec, comp.run
    if a.cmd in ("lb", "lb-set"):
        return leaderboard(a, run)
    from submissions.budget import Budget
    from submissions.postprocess import Settings
    from submissions.submit import run_submit, run_thresholds
    settings = Settings(Budget.of(spec, a.budget_mb, a.budget_gpu_hours, a.ignore_budget), a.method, a.trials,
                        a.seed, tuple(a.blends.split(",")) if a.blends else DEFAULT_BLENDS, a.storage)
    ds = comp.dataset(check=False)
    names = a.models.split(",") if a.models else None
    if a.cmd == "submit":
        command = "python -m submissions " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
        run_submit(spec, ds, run, settings, command, names)
        return 0
    ens, thresholds = run_thresholds(spec, ds, run, settings, names)
    if a.cmd == "report":
        from submissions.report import make_report
        for path in make_report(spec, ens, thresholds, run.report):
            print(f"wrote {path}")
        from submissions.cam import cam_panels
        panels = cam_panels(spec, ds, ens, thresholds, run.report_cam)
        print(f"wrote {len(panels)} Grad-CAM panels (one per label) -> {run.report_cam}" if panels else
              "no Grad-CAM panels: no image member, or no images")
    return 0


def leaderboard(a, run: RunLayout) -> int:
    from competition import UserError, runlog
    if a.cmd == "lb-set":
        if a.file is None or a.public is None:
            raise UserError("lb-set needs FILE=<submission csv> and PUBLIC=<its public leaderboard score>")
        row = runlog.set_public(run, a.file, a.public)
        print(f"{row['name']}: public {a.public} (nested CV {row['nested_score']:.4f}) -> {run.log}")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 48):
        print(runlog.leaderboard(run).to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
