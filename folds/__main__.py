"""python -m folds: write runs/<COMP>/folds.csv and its quality report."""
from __future__ import annotations

import argparse

from competition.cli import Competition, competition_args
from folds.split import write_folds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m folds", description=__doc__)
    competition_args(ap)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--force", action="store_true", help="replace a folds file that would change")
    a = ap.parse_args(argv)
    comp = Competition.of(a)
    out = write_folds(comp.run, comp.dataset(), comp.spec, a.k, a.seed, a.force)
    print(out.report)
    print(f"wrote {out.path}" if out.written else f"{out.path} unchanged", f"({out.rows} rows, {out.k} folds)")
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
