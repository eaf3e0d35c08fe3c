"""runs/<COMP>/log.csv: a row per trained model and per submission, so CV can be watched against the public LB.

Rows are only appended (or, for `lb-set`, given their public score), under a lock and by an atomic rewrite:
two jobs finishing together both land, and a killed one leaves the previous file whole."""
from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from competition.artifacts import exclusive_lock, write_csv
from competition.errors import UserError
from competition.layout import RunLayout

COLUMNS = ["time", "event", "name", "members", "metric", "oof_score", "nested_score", "size_mb", "gpu_hours",
           "public_score", "commit", "command"]
ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The code's commit, `+dirty` when the tree has uncommitted changes, empty outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def read_log(run: RunLayout) -> pd.DataFrame:
    if not run.log.exists():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(run.log, dtype={"name": str, "members": str, "commit": str, "command": str})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{run.log}: columns {missing} missing; expected {','.join(COLUMNS)}")
    return frame


def append(run: RunLayout, event: str, name: str, **values) -> None:
    """One row: the time, the code's commit and the command come from here, the rest from the caller."""
    unknown = sorted(set(values) - set(COLUMNS))
    assert not unknown, f"not log columns: {unknown}"
    row = {c: None for c in COLUMNS} | values | {
        "time": dt.datetime.now().isoformat(timespec="seconds"), "event": event, "name": name,
        "commit": git_commit(), "command": " ".join(shlex.quote(a) for a in sys.argv)}
    run.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run.log_lock):
        rows = read_log(run).to_dict("records") + [row]
        write_csv(run.log, pd.DataFrame(rows, columns=COLUMNS), float_format="%.6g")


def set_public(run: RunLayout, file: str, score: float) -> pd.Series:
    """Record the public leaderboard score of the submission `file` (its name or path)."""
    if not 0 <= score <= 1:
        raise UserError(f"public score {score} is not in [0, 1]")
    name = Path(file).name
    with exclusive_lock(run.log_lock):
        frame = read_log(run)
        hit = (frame["event"] == "submit") & (frame["name"] == name)
        if not hit.any():
            known = frame.loc[frame["event"] == "submit", "name"].tolist()
            raise UserError(f"{run.log}: no submission {name!r}; logged: {', '.join(known[-5:]) or 'none'}")
        frame.loc[hit, "public_score"] = score
        write_csv(run.log, frame, float_format="%.6g")
    return frame[hit].iloc[-1]


def leaderboard(run: RunLayout) -> pd.DataFrame:
    """Submissions and models, best nested score first (models, which have none, after them by OOF)."""
    frame = read_log(run)
    if frame.empty:
        raise UserError(f"{run.log}: nothing logged yet; train a model or make a submission first")
    frame = frame.sort_values(["nested_score", "oof_score"], ascending=False, na_position="last", kind="stable")
    return frame[["time", "event", "name", "members", "oof_score", "nested_score", "public_score", "size_mb",
                  "gpu_hours", "commit"]].reset_index(drop=True)
