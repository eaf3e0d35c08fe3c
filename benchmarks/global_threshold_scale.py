"""The best global threshold at iMet's shape (issue 42): by counting (what `make submit` runs) against deciding
every cell once per threshold (what it ran before), and the score that blend weights and members are compared by.

    .venv/bin/python benchmarks/global_threshold_scale.py [--rows 100000] [--labels 1103] [--metric samples_f2]
        [--loop-rows 20000]

Probabilities are simulated: label frequencies falling off as iMet's do (a few labels on a third of the images,
most on well under 1%), about 4.4 labels per image, scores that separate them imperfectly. Both ways run on the
first --loop-rows rows and must choose the same threshold with the same score (else exit 1); the counting way
then runs on every row. Peak memory: tracemalloc of the call (NumPy's allocations).
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np

from submissions import thresholds as th
from submissions.scoring import Scoring


def simulated(rows: int, labels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    freq = np.clip(0.35 / np.arange(1, labels + 1) ** 0.9, 2e-4, None)
    freq *= 4.4 / freq.sum()
    y = rng.random((rows, labels), dtype=np.float32) < freq.astype(np.float32)
    logits = rng.normal(-4.0, 1.3, (rows, labels)).astype(np.float32) + y * rng.normal(3.5, 1.5, (rows, labels))
    return y.astype(np.uint8), 1 / (1 + np.exp(-logits, dtype=np.float32))


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1103)
    ap.add_argument("--metric", default="samples_f2")
    ap.add_argument("--loop-rows", type=int, default=20_000)
    a = ap.parse_args(argv)
    y, prob = simulated(a.rows, a.labels)
    print(f"{a.rows} rows x {a.labels} labels, {y.sum(1).mean():.2f} labels per image, metric {a.metric}, "
          f"{len(th.GRID)} thresholds")
    n = a.loop_rows
    sc = Scoring(y[:n], np.arange(n) % 5, a.metric, 1)
    (fast, fast_s, fast_mb) = timed(lambda: th.global_threshold(sc, prob[:n]))
    (slow, slow_s, slow_mb) = timed(lambda: max(th.GRID, key=lambda t: sc.score(prob[:n], t)))
    same = fast[0] == slow and sc.score(prob[:n], fast) == sc.score(prob[:n], slow)
    print(f"{n} rows: counting {fast_s:.2f} s (peak {fast_mb:.0f} MB), deciding each threshold {slow_s:.2f} s "
          f"(peak {slow_mb:.0f} MB): {slow_s / fast_s:.0f}x; threshold {fast[0]:.2f} vs {slow:.2f} "
          f"({'same' if same else 'DIFFERENT'}), score {sc.score(prob[:n], fast):.4f}")
    sc = Scoring(y, np.arange(a.rows) % 5, a.metric, 1)
    (full, full_s, full_mb) = timed(lambda: th.global_threshold(sc, prob))
    print(f"{a.rows} rows: counting {full_s:.2f} s (peak {full_mb:.0f} MB), threshold {full[0]:.2f}, "
          f"score {sc.score(prob, full):.4f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
