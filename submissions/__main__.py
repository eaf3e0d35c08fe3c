"""python -m submissions {thresholds,submit,report,demo}: blend trained models into a submission."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from competition import load_dataset, load_spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submissions", description=__doc__)
    ap.add_argument("cmd", choices=["thresholds", "submit", "report", "demo"])
    ap.add_argument("--comp", default="demo")
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--models", default=None, help="comma list; default: every complete model")
    ap.add_argument("--method", default=None, choices=["fixed", "global", "exact", "optuna"],
                    help="threshold method; default: the best nested score")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-mb", type=float, default=None)
    ap.add_argument("--budget-gpu-hours", type=float, default=None)
    ap.add_argument("--ignore-budget", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "demo":
        from submissions.demo import run_demo
        return run_demo(Path(a.runs), a.seed)
    spec = load_spec(a.comp)
    ds = load_dataset(spec, a.data, check=False)
    comp_dir = Path(a.runs) / spec.name
    names = a.models.split(",") if a.models else None
    budget = dict(budget_mb=a.budget_mb, budget_hours=a.budget_gpu_hours, ignore_budget=a.ignore_budget)
    from submissions.submit import run_submit, run_thresholds
    if a.cmd == "submit":
        command = "python -m submissions " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
        run_submit(spec, ds, comp_dir, command, names, a.method, a.trials, a.seed, **budget)
        return 0
    members, _, blends, blend_name, art, y, _, _ = run_thresholds(
        spec, ds, comp_dir, names, a.method, a.trials, a.seed, **budget)
    if a.cmd == "report":
        from submissions.report import make_report
        for path in make_report(spec, members, blends, blend_name, art, y, comp_dir / "report"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
