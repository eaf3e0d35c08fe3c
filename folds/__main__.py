"""python -m folds: write runs/<COMP>/folds.csv and its quality report."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from competition import UserError, load_dataset, load_spec
from competition.artifacts import write_csv, write_text
from folds.split import make_folds, quality_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m folds", description=__doc__)
    ap.add_argument("--comp", default="demo")
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--force", action="store_true", help="replace a folds file that would change")
    a = ap.parse_args(argv)
    spec = load_spec(a.comp)
    ds = load_dataset(spec, a.data)
    y = ds.targets()
    frame = make_folds(ds.train["id"], y, a.k, a.seed, spec.tokens)
    out = Path(a.runs) / spec.name / "folds.csv"
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    unchanged = out.exists() and out.read_text() == buf.getvalue()
    if out.exists() and not unchanged and not a.force:
        raise UserError(f"{out} exists and would change; models trained on it would be silently "
                         "invalidated. Re-run with FORCE=1 to replace it.")
    report, table = quality_report(y, frame["fold"].to_numpy(), a.k, a.seed, spec.tokens, spec.names)
    print(report)
    write_text(out.with_name("folds_report.txt"), report)
    write_csv(out.with_name("folds_report.csv"), table.reset_index())
    if unchanged:
        print(f"{out} unchanged ({len(frame)} rows, {a.k} folds)")
    else:
        write_text(out, buf.getvalue())
        print(f"wrote {out} ({len(frame)} rows, {a.k} folds)")
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
