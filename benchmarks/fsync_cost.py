"""What durable writes (fsync of each artifact before its rename, and of its folder after) cost on a full
`make submit`: the same `run_submit` users run, with and without fsync, its reusable artifacts (thresholds,
fully nested estimate) removed before every run so each run does all the work.

    make folds COMP=comp5329 DATA=data/comp5329-6k RUNS=runs/fsync
    make train COMP=comp5329 DATA=data/comp5329-6k RUNS=runs/fsync MODEL=captions
    make train COMP=comp5329 DATA=data/comp5329-6k RUNS=runs/fsync MODEL=captions \
        NAME=captions_c1 SET=C=1.0
    .venv/bin/python benchmarks/fsync_cost.py --comp comp5329 --data data/comp5329-6k --runs runs/fsync

Runs alternate (on, off, on, off, ...) so a drift of the machine hits both; it fails when the two runs'
submissions differ (fsync must change nothing but timing) or when no fsync was counted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

from competition.cli import Competition, competition_args
from competition.layout import RunLayout
from submissions.blend import DEFAULT_BLENDS
from submissions.budget import Budget
from submissions.postprocess import Settings
from submissions.submit import run_submit


def one_submit(spec, ds, run: RunLayout, trials: int, fsync: bool) -> tuple[float, int, bytes]:
    """Seconds, fsync calls and the submission's bytes of one full `make submit`."""
    for folder in (run.thresholds, run.nested_file("x").parent):
        shutil.rmtree(folder, ignore_errors=True)
    real, calls = os.fsync, [0]

    def counted(fd):
        calls[0] += 1
        if fsync:
            real(fd)
    os.fsync = counted
    try:
        t0 = time.perf_counter()
        settings = Settings(Budget.of(spec), method=None, trials=trials, seed=0, blends=DEFAULT_BLENDS)
        path = run_submit(spec, ds, run, settings, "benchmarks/fsync_cost.py", log=lambda *_: None).path
        seconds = time.perf_counter() - t0
    finally:
        os.fsync = real
    return seconds, calls[0], path.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    competition_args(ap)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    comp = Competition.of(a)
    spec, ds, run = comp.spec, comp.dataset(check=False), comp.run
    times = {True: [], False: []}
    outputs, counts = set(), set()
    for _ in range(a.repeats):
        for fsync in (True, False):
            seconds, calls, body = one_submit(spec, ds, run, a.trials, fsync)
            times[fsync].append(seconds)
            outputs.add(body)
            counts.add(calls)
            print(f"fsync {'on ' if fsync else 'off'} {seconds:7.2f} s  ({calls} fsync calls)", flush=True)
    if len(outputs) != 1 or min(counts) == 0:
        raise SystemExit(f"FAILED: {len(outputs)} different submissions, fsync calls {sorted(counts)}")
    on, off = min(times[True]), min(times[False])
    print(f"best of {a.repeats}: fsync on {on:.2f} s, off {off:.2f} s: {on - off:+.2f} s "
          f"({100 * (on - off) / off:+.1f}%), {counts.pop()} fsync calls per submit")


if __name__ == "__main__":
    main()
