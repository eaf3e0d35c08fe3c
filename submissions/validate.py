"""python -m submissions.validate FILE --comp NAME [--data DIR]: check a submission against a competition spec."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from competition.artifacts import read_csv
from competition.cli import Competition, competition_args
from competition.errors import UserError, offenders_error
from competition.reader import ID_LIKE, continues, decode_text, file_lines


def validate_frame(frame: pd.DataFrame, spec, test_ids, where="submission") -> None:
    """Raise UserError listing every problem class found: header, ids, then labels and empty rows (a labels
    submission) or values that are not probabilities (a probability submission)."""
    expected = [spec.id_column, *(spec.tokens if spec.probabilities else [spec.submission_column])]
    if list(frame.columns) != expected:
        raise UserError(f"{where}: header {list(frame.columns)}, expected {expected}" + header_problem(
            list(frame.columns), expected))
    ids = frame[spec.id_column].astype(str)
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise offenders_error(where, "duplicate ids", dup)
    missing, extra = sorted(set(test_ids) - set(ids)), sorted(set(ids) - set(test_ids))
    if missing or extra:
        raise offenders_error(where, "ids differ from test.csv",
                              [f"missing {i}" for i in missing] + [f"extra {i}" for i in extra])
    problems = probability_problems(frame, ids, spec) if spec.probabilities else label_problems(frame, ids, spec)
    for what, rows in problems.items():
        if rows:
            raise offenders_error(where, what, rows)


def header_problem(columns: list[str], expected: list[str]) -> str:
    """What differs between two headers, for people: missing or unknown columns, or the order."""
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing or extra:
        return (f" (missing {missing})" if missing else "") + (f" (not the spec's: {extra})" if extra else "")
    first = next(i for i, (a, b) in enumerate(zip(columns, expected)) if a != b)
    return f" (the same columns out of order: column {first + 1} is {columns[first]!r}, expected {expected[first]!r})"


def probability_problems(frame: pd.DataFrame, ids, spec) -> dict[str, list[str]]:
    """Cells a probability scorer refuses or misreads, by kind: not a number (or empty), NaN or infinite, outside
    [0, 1]."""
    kinds = {"cells that are not numbers": [], "cells that are NaN or infinite": [],
             "probabilities outside [0, 1]": []}
    not_numbers, not_finite, outside = kinds.values()
    for token in spec.tokens:
        cells = frame[token].astype(str)
        values = pd.to_numeric(cells.str.strip().replace("", "x"), errors="coerce").to_numpy(dtype=np.float64)
        literal_nan = cells.str.strip().str.lower().isin(["nan", "inf", "-inf", "infinity", "-infinity"]).to_numpy()
        for row in np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1)):
            where = f"line {row + 2} ({ids.iloc[row]}): {token}={cells.iloc[row]!r}"
            if literal_nan[row] or np.isinf(values[row]):
                not_finite.append(where)
            elif np.isnan(values[row]):
                not_numbers.append(where)
            else:
                outside.append(where)
    return kinds


def label_problems(frame: pd.DataFrame, ids, spec) -> dict[str, list[str]]:
    """Rows a strict scorer may misread, by kind. Refused, not warned about: a scorer that splits on the spec's
    separator reads "1\t2" as one unknown token and may count "1 1" twice."""
    valid, sep = set(spec.tokens), spec.label_separator
    kinds = {f"rows with unknown labels (valid: {' '.join(spec.tokens)})": [],
             f"rows with whitespace other than the spec's label separator {sep!r} (a tab, a newline)": [],
             f"rows with an empty label between separators (leading, trailing or doubled {sep!r})": [],
             "rows with a label listed twice": [],
             f"rows with fewer than {spec.min_labels_per_image} labels": []}
    unknown, spaces, gaps, twice, short = kinds.values()
    for row, (i, cell) in enumerate(zip(ids, frame[spec.submission_column].fillna("").astype(str)), start=2):
        where = f"line {row} ({i})"
        tokens = cell.split() if sep.isspace() else [t.strip() for t in cell.split(sep) if t.strip()]
        bad = [t for t in tokens if t not in valid]
        if bad:
            unknown.append(f"{where}: {' '.join(bad)}")
        if any(c.isspace() and c != sep for c in cell):
            spaces.append(f"{where}: {cell!r}")
        elif cell and "" in cell.split(sep):
            gaps.append(f"{where}: {cell!r}")
        if len(set(tokens)) < len(tokens):
            twice.append(f"{where}: {cell!r}")
        if len(set(tokens)) < spec.min_labels_per_image:
            short.append(f"{where}: {len(set(tokens))} labels")
    return kinds


def validate_file(path, spec, test_ids) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    frame = read_csv(path, "it is not a CSV submission", dtype=str, keep_default_na=False)
    validate_frame(frame, spec, test_ids, str(path))


def raw_ids(path: Path) -> list[str]:
    """The test file's ids by a plain scan of its lines, independent of the spec's id pattern: every line that
    is not blank and does not continue an open quoted caption is a row, as a scorer counts rows. A row the
    tolerant reader would glue into a caption is still counted here."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    rows: list[list[str]] = []
    for line in file_lines(decode_text(path))[1:]:
        if line.strip() and (ID_LIKE.match(line) or not (rows and continues(rows[-1], line))):
            rows.append([line])
        elif rows:
            rows[-1].append(line)
    return [row[0].split(",", 1)[0].strip().strip('"').strip() for row in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submissions.validate", description=__doc__)
    ap.add_argument("file")
    a = competition_args(ap, runs=False).parse_args(argv)
    comp = Competition.of(a)
    spec = comp.spec
    if spec.format == "voc":  # plain "<id> <1|-1|0>" lines: the reader's ids are the files' own
        test_ids = list(comp.dataset(check=False).test["id"])
    else:
        test_ids = raw_ids(Path(a.data or spec.data) / spec.test_csv)
    try:
        validate_file(Path(a.file), spec, test_ids)
    except UserError as e:
        print(f"INVALID {e}", file=sys.stderr)
        return 1
    print(f"valid: {a.file} ({len(test_ids)} rows, {spec.name})")
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
