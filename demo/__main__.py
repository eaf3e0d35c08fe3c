"""python -m demo [--runs DIR] [--seed N]: the whole chain on the generated demo competition, on a CPU."""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args(argv)
    from demo.chain import run_demo
    return run_demo(Path(a.runs), a.seed)


if __name__ == "__main__":
    from competition.cli import run
    run(main)
