"""`make submit` at iMet's shape: 100,000 rows x 1,103 labels, 3 members, K=5 (issue 42).

    .venv/bin/python benchmarks/submit_scale.py [--rows 100000 --labels 1103 --members 3 --k 5 --test 7443]
        [--out /tmp/submit-scale] [--set "--method global" ...] [--each [--skip-submit]]

Writes a competition folder in iMet's own files (labels.csv, train.csv `id,attribute_ids`, sample_submission.csv,
no images) and a run folder with `--members` trained-looking members (meta.json, fold weight files, OOF and
per-fold test probability files as training writes them), then runs `python -m submissions submit` on them, the
command `make submit` runs, once with the default choices (every threshold method and blend that applies, the
fully nested estimate) and once per `--set` given. Each run: wall time, peak memory of the process (ru_maxrss),
and the scores it printed. `--each` then times each blend and each threshold method alone (in this process,
make submit's own functions on the members it loads). The generated folder is reused by a later call with the
same arguments.

Labels follow a long tail (the j-th label in about 1/(j+10) of the rows, 4.4 labels per row as in iMet); a
member's logit is noise plus a signal on true labels, each member with its own noise, strength and calibration,
so blends differ. The script fails if a run does not write a submission or prints no fully nested score.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from competition.artifacts import file_sha256  # noqa: E402
from competition.formats import FitRecord, ModelMeta, write_probs  # noqa: E402
from competition.layout import RunLayout  # noqa: E402
from competition.spec import SPEC_DIR  # noqa: E402
from pipelines.config import resolve  # noqa: E402


def labels_of(rng, rows: int, labels: int) -> np.ndarray:
    share = 1.0 / (np.arange(labels) + 10.0)
    share *= 4.4 / share.sum()
    y = rng.random((rows, labels), dtype=np.float32) < share.astype(np.float32)
    empty = ~y.any(1)  # every iMet image has an attribute
    y[np.flatnonzero(empty), rng.integers(0, 20, empty.sum())] = True
    return y


def member_probs(rng, y: np.ndarray, strength: float, scale: float) -> np.ndarray:
    z = rng.standard_normal(y.shape, dtype=np.float32) - 4.0 + strength * y
    return (1.0 / (1.0 + np.exp(-z * scale))).astype(np.float64)


def write_competition(out: Path, a) -> tuple[Path, Path]:
    """The data folder and the spec (imet2019's, its data pointed here)."""
    data = out / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"{(i * 2654435761) % 2**64:016x}" for i in range(a.rows + a.test)]
    pd.DataFrame({"attribute_id": range(a.labels), "attribute_name": [f"tag::t{j}" for j in range(a.labels)]}) \
        .to_csv(data / "labels.csv", index=False)
    y = labels_of(rng, a.rows, a.labels)
    cells = [" ".join(map(str, np.flatnonzero(row))) for row in y]
    pd.DataFrame({"id": ids[:a.rows], "attribute_ids": cells}).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"id": ids[a.rows:], "attribute_ids": "0"}).to_csv(data / "sample_submission.csv", index=False)
    spec = (SPEC_DIR / "imet2019.yaml").read_text().replace("data: data/imet-2019-fgvc6", f"data: {data}")
    (out / "imet2019.yaml").write_text(spec)
    return data, out / "imet2019.yaml"


def write_run(out: Path, a, data: Path) -> Path:
    runs = out / "runs"
    run = RunLayout.of(runs, "imet2019")
    run.root.mkdir(parents=True)
    train = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(data / "sample_submission.csv", dtype=str)["id"]
    ids, tokens = list(train["id"]), [str(j) for j in range(a.labels)]
    y = np.zeros((len(ids), a.labels), dtype=bool)
    for i, cell in enumerate(train["attribute_ids"]):
        y[i, [int(t) for t in cell.split()]] = True
    fold = np.random.default_rng(1).permutation(np.arange(len(ids)) % a.k)
    pd.DataFrame({"ImageID": ids, "fold": fold}).to_csv(run.folds, index=False)
    folds_sha = file_sha256(run.folds)
    y_test = labels_of(np.random.default_rng(2), len(test_ids), a.labels)
    for m in range(a.members):
        name, rng = f"member{m}", np.random.default_rng(10 + m)
        strength, scale = 3.0 + 0.5 * m, [1.0, 0.7, 1.3, 0.9, 1.1][m % 5]
        model = run.model(name)
        model.dir.mkdir(parents=True)
        write_probs(model.oof, ids, member_probs(rng, y, strength, scale), tokens, fold)
        records = {}
        for f in range(a.k):  # a weight file of 128 KiB per fold: sizes and budgets have something to count
            write_probs(model.test_fold(f), test_ids, member_probs(rng, y_test, strength, scale), tokens)
            fit = model.fold(f)
            fit.dir.mkdir()
            fit.best_weights.write_bytes(hashlib.sha256(f"{name}{f}".encode()).digest() * 4096)
            records[f] = FitRecord(600.0, 600 / 3600, 600 / 3600, "generated",
                                   str(fit.best_weights.relative_to(model.dir)), (), 1)
        cfg = resolve("tiny", [], name=name)
        ModelMeta(name, "image", cfg.to_json(), folds_sha, None, a.k, tokens, records, list(range(a.k)),
                  {f: 0.125 for f in range(a.k)}, [], 0.0, None, a.k * 600.0, a.k / 6, None).write(model.meta)
    return runs


def submit(spec: Path, data: Path, runs: Path, extra: list[str]) -> dict:
    """One `python -m submissions submit` in its own process: wall, peak RSS, and what it printed."""
    cmd = [sys.executable, "-m", "submissions", "submit", "--comp", str(spec), "--data", str(data),
           "--runs", str(runs), *extra]
    run = RunLayout.of(runs, "imet2019")
    for stale in (run.thresholds, run.nested_file("x").parent, run.submissions):  # every run computes its figures
        shutil.rmtree(stale, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    text = done.stdout + done.stderr
    nested = re.search(r"fully nested \(members, blend, thresholds\) ([0-9.]+)", text)
    if done.returncode != 0 or not nested or "submission: " not in text:
        sys.exit(f"submit {' '.join(extra)} failed (exit {done.returncode}):\n{text[-3000:]}")
    if peak <= before:  # ru_maxrss of children is the largest child so far: a later, smaller one cannot show
        peak = float("nan")
    return {"wall_s": wall, "peak_gb": peak / 2**20, "nested": float(nested.group(1)), "log": text}


def each(spec_path: Path, data: Path, runs: Path, trials: int) -> None:
    """Each blend and each threshold method alone, through make submit's own functions on the members it loads:
    wall time and the peak of Python's allocations during it (tracemalloc, numpy's arrays included)."""
    import tracemalloc

    from competition import load_dataset, load_spec
    from folds.split import read_folds
    from submissions import thresholds as th
    from submissions.blend import fit_blends, quick_score
    from submissions.members import load_members
    from submissions.scoring import Scoring
    spec = load_spec(str(spec_path), data)
    ds = load_dataset(spec, data, check=False)
    run = RunLayout.of(runs, spec.name)
    t0 = time.perf_counter()
    members = load_members(spec, ds, run, log=lambda *_: None)
    print(f"\nload_members ({len(members)} members: OOF and fold test files): {time.perf_counter() - t0:.0f} s")
    sc = Scoring.of(spec, ds.targets(), read_folds(run.folds, list(ds.train["id"]), ds.groups()))
    oofs = [m.oof for m in members]

    def timed(fn, *args):
        tracemalloc.start()
        t0 = time.perf_counter()
        out = fn(*args)
        wall = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**30
        tracemalloc.stop()
        return out, wall, peak
    print(f"{'step':<34}{'wall s':>8}{'peak GB':>9}  score")
    for name in ("mean", "weighted", "weighted_logit", "stack"):
        fitted, wall, peak = timed(fit_blends, oofs, sc, (name,))
        got = next(iter(fitted))
        note = "" if got == name else f" (not tried: {got} stands in)"
        print(f"{'blend ' + name:<34}{wall:>8.1f}{peak:>9.2f}  selection {fitted[got].select:.4f}{note}")
    mean = fit_blends(oofs, sc, ("mean",))["mean"].oof
    for method in th.applicable(sc):
        reason = th.too_costly(method, sc, trials)
        if reason:
            print(f"{'method ' + method:<34}{'':>8}{'':>9}  not compared: {reason}")
            continue
        rows, wall, peak = timed(th.compare, sc, mean, trials, 0, (method,))
        print(f"{'method ' + method + ' (in-sample + nested)':<34}{wall:>8.1f}{peak:>9.2f}  in-sample "
              f"{rows[0].in_sample:.4f}, nested {rows[0].nested:.4f} (mean blend)")
    print(f"quick score of the mean blend: {quick_score(sc, mean):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1103)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--test", type=int, default=7443)
    ap.add_argument("--out", default="/tmp/submit-scale")
    ap.add_argument("--set", action="append", default=[], help="extra submit arguments, one run each "
                                                                 "('--method optuna', '--blend stack')")
    ap.add_argument("--each", action="store_true", help="then each blend and threshold method alone, in process")
    ap.add_argument("--skip-submit", action="store_true", help="no submit run (with --each: the table alone)")
    a = ap.parse_args()
    out = Path(a.out)
    shape = json.dumps({k: getattr(a, k) for k in ("rows", "labels", "members", "k", "test")})
    if not (out / "shape.json").exists() or (out / "shape.json").read_text() != shape:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        data, spec = write_competition(out, a)
        write_run(out, a, data)
        (out / "shape.json").write_text(shape)
        print(f"generated {out} in {time.perf_counter() - t0:.0f} s")
    data, spec, runs = out / "data", out / "imet2019.yaml", out / "runs"
    print(f"{a.rows} rows x {a.labels} labels, {a.members} members, K={a.k}, {a.test} test rows")
    for extra in ([] if a.skip_submit else [""]) + a.set:
        r = submit(spec, data, runs, extra.split())
        print(f"\n== submit {extra or '(defaults)'}: {r['wall_s']:.0f} s, peak {r['peak_gb']:.2f} GB, "
              f"fully nested {r['nested']:.4f}")
        print("\n".join(line for line in r["log"].splitlines() if not line.startswith("fully nested: fold")))
    if a.each:
        each(spec, data, runs, 200)


if __name__ == "__main__":
    main()
