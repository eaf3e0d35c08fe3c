"""Fold assignment, its quality report, and the folds file: written once, never changed under trained models."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import KFold

from competition.artifacts import read_csv, write_csv, write_text
from competition.errors import UserError, offenders_error
from competition.layout import RunLayout


def assign(splitter, y: np.ndarray) -> np.ndarray:
    fold = np.full(len(y), -1, dtype=np.int64)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold[val] = k
    return fold


def group_labels(y: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """(each row's group index, each group's labels: those of any of its rows)."""
    index, names = pd.factorize(pd.Series(groups), sort=True)
    gy = np.zeros((len(names), y.shape[1]), dtype=y.dtype)
    np.maximum.at(gy, index, y)
    return index, gy


def stratified(y: np.ndarray, k: int, seed: int, groups=None) -> np.ndarray:
    """Iterative stratification (iterstrat) of the rows, or of the groups by their labels: no group is split,
    and the groups' label balance is as close as iterative stratification gets."""
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    if groups is None:
        return assign(splitter, y)
    index, gy = group_labels(y, groups)
    if len(gy) < k:
        raise UserError(f"K={k} folds need at least {k} groups; the group_column has {len(gy)}")
    return assign(splitter, gy)[index]


def make_folds(ids, y: np.ndarray, k: int, seed: int, groups=None) -> pd.DataFrame:
    if k < 2 or k > len(y):
        raise UserError(f"K={k} folds need 2 <= K <= {len(y)} rows")
    fold = stratified(y, k, seed, groups)
    return pd.DataFrame({"ImageID": list(ids), "fold": fold})


def max_relative_deviation(y: np.ndarray, fold: np.ndarray, k: int) -> np.ndarray:
    """Per label: max over folds of |fold share - overall share| / overall share."""
    overall = y.mean(0)
    shares = np.stack([y[fold == f].mean(0) for f in range(k)])
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.abs(shares - overall) / overall
    # A label with no images has no share to deviate from: 0, and the report warns about it.
    return np.where(overall > 0, np.nan_to_num(dev, nan=0.0, posinf=0.0), 0.0).max(axis=0)


def split_groups(fold: np.ndarray, groups) -> dict:
    """Each group whose rows are in more than one fold -> those folds."""
    folds_of = pd.Series(fold).groupby(np.asarray(groups)).unique()
    return {g: sorted(map(int, f)) for g, f in folds_of.items() if len(f) > 1}


def group_lines(y: np.ndarray, fold: np.ndarray, k: int, seed: int, groups) -> list[str]:
    """With groups: how many, the largest, a check that none is split, and what ignoring them would give."""
    split = len(split_groups(fold, groups))
    if split:  # the splitter assigns whole groups: a split one is a bug, never a property of the data
        raise RuntimeError(f"{split} groups split across folds")
    rows_only = stratified(y, k, seed)
    split_if_ignored = len(split_groups(rows_only, groups))
    sizes = pd.Series(groups).value_counts().to_numpy()
    return [f"groups: {len(sizes)} ({int((sizes > 1).sum())} with more than one row; the largest has {sizes.max()} "
            f"rows); no group is split across folds",
            f"ignoring the groups, iterative stratification would reach a mean deviation of "
            f"{max_relative_deviation(y, rows_only, k).mean():.3f} and split {split_if_ignored} groups"]


def quality_report(y: np.ndarray, fold: np.ndarray, k: int, seed: int, tokens, names,
                   groups=None) -> tuple[str, pd.DataFrame]:
    """Per-fold label counts, and the stratified split's worst deviation next to plain KFold's."""
    plain = assign(KFold(n_splits=k, shuffle=True, random_state=seed), y)
    counts = pd.DataFrame({f"fold{f}": y[fold == f].sum(0) for f in range(k)}, index=list(tokens))
    table = counts.assign(
        name=list(names), total=y.sum(0),
        dev_stratified=max_relative_deviation(y, fold, k),
        dev_kfold=max_relative_deviation(y, plain, k),
    )
    table.index.name = "label"
    lines = [
        f"{len(y)} rows, {k} folds, seed {seed}; fold sizes {np.bincount(fold, minlength=k).tolist()}",
        "dev_* = largest relative deviation of a fold's label share from the overall share (lower is better)",
        table.to_string(float_format=lambda v: f"{v:.3f}"),
        f"mean deviation: stratified {table.dev_stratified.mean():.3f}  plain KFold {table.dev_kfold.mean():.3f}",
    ]
    rare = table[table.total < table.total.median()]
    lines.append(f"rare labels (below median count): stratified {rare.dev_stratified.mean():.3f}  "
                 f"plain KFold {rare.dev_kfold.mean():.3f}")
    if groups is not None:
        lines += group_lines(y, fold, k, seed, groups)
    absent = [f"{t} ({int(table.total[t])} images, fold {f})" for t in table.index[table.total >= k]
              for f in range(k) if table.at[t, f"fold{f}"] == 0]
    if absent:
        # Iterative stratification places the rarest labels first, and a row carries all its labels: with many
        # labels per row (iMet's 1,103) some of them end up missing from a fold. Their OOF is complete; a fold
        # without them cannot validate them, as with labels rarer than K.
        lines.append(f"WARNING: {len(absent)} labels with at least K={k} images are absent from a fold (another "
                     f"SEED may place them): {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
    few = table[table.total < k]
    for t, row in few.iterrows():
        lines.append(f"WARNING: label {t} ({row['name']}) has {int(row.total)} images, fewer than K={k}: "
                     + ("it never occurs, so no model can learn it" if row.total == 0 else
                        "some folds cannot validate it"))
    return "\n".join(lines) + "\n", table


@dataclasses.dataclass
class FoldsFile:
    path: Path
    rows: int
    k: int
    report: str         # the quality report, also written beside the folds file
    written: bool       # False: the file already held exactly these folds


def write_folds(run: RunLayout, ds, spec, k: int, seed: int, force: bool = False) -> FoldsFile:
    """runs/<COMP>/folds.csv for (k, seed), and its report. A folds file that would change is refused
    unless `force`: every model trained on it would silently stop being comparable."""
    y, groups = ds.targets(), ds.groups()
    frame = make_folds(ds.train["id"], y, k, seed, groups)
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    unchanged = run.folds.exists() and run.folds.read_text() == buf.getvalue()
    if run.folds.exists() and not unchanged and not force:
        raise UserError(f"{run.folds} exists and would change; models trained on it would be silently "
                        "invalidated. Re-run with FORCE=1 to replace it.")
    report, table = quality_report(y, frame["fold"].to_numpy(), k, seed, spec.tokens, spec.names, groups)
    write_text(run.folds_report, report)
    write_csv(run.folds_table, table.reset_index())
    if not unchanged:
        write_text(run.folds, buf.getvalue())
    return FoldsFile(run.folds, len(frame), k, report, not unchanged)


REBUILD = "`make folds FORCE=1` writes it anew (models trained on the old one must be retrained)"


def read_folds(path: Path, ids, groups=None) -> np.ndarray:
    """Fold of each id, in the order of `ids`. Every id must be in the folds file once, and the folds must be
    0..K-1 with none empty: a hand-edited value would otherwise train an empty fold. With `groups` (the spec's
    group_column), no group may be in two folds: a file made before the spec named its groups would leak."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no folds file; run `make folds` first")
    frame = read_csv(path, REBUILD, dtype={"ImageID": str})
    if list(frame.columns) != ["ImageID", "fold"]:
        raise UserError(f"{path}: header {list(frame.columns)}, expected ['ImageID', 'fold']; {REBUILD}")
    lines = np.arange(len(frame)) + 2
    values = pd.to_numeric(frame["fold"], errors="coerce")
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise offenders_error(path, f"rows whose fold is not a whole number ({REBUILD})",
                              [f"line {n}: {i} fold {v!r}" for n, i, v in zip(lines[bad], frame["ImageID"][bad],
                                                                                frame["fold"][bad])])
    fold = values.to_numpy().astype(np.int64)
    dup = frame["ImageID"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise offenders_error(path, "ids listed more than once", [f"line {n}: {i}" for n, i in
                                                                  zip(lines[dup], frame["ImageID"][dup])])
    mapping = dict(zip(frame["ImageID"], fold))
    missing = [i for i in ids if i not in mapping]
    if missing or len(mapping) != len(ids):
        extra = sorted(set(mapping) - set(ids))
        raise offenders_error(path, "ids differ between folds file and train.csv (re-run `make folds FORCE=1`)",
                              [f"missing {i}" for i in missing] + [f"extra {i}" for i in extra])
    check_fold_values(path, fold, frame["ImageID"], lines)
    out = np.array([mapping[i] for i in ids], dtype=np.int64)
    if groups is not None:
        split = [f"group {g}: folds {f}" for g, f in split_groups(out, groups).items()]
        if split:
            raise offenders_error(path, f"groups of the spec's group_column in more than one fold (the file was made "
                                        f"without them?; {REBUILD})", split)
    return out


def check_fold_values(path: Path, fold: np.ndarray, ids, lines) -> None:
    """Folds 0..K-1, each with rows, K >= 2. A value outside 0..(distinct values - 1) is the offender named."""
    used = np.unique(fold)
    if len(used) < 2:
        raise UserError(f"{path}: every row is in fold {used[0]}; K-fold needs at least 2 folds ({REBUILD})")
    k = int(fold.max()) + 1
    if fold.min() >= 0 and len(used) == k:
        return
    odd = (fold < 0) | (fold >= len(used))
    empty = sorted(set(range(max(k, len(used)))) - set(used.tolist()))
    raise offenders_error(path, f"rows with a fold outside 0..{len(used) - 1} (folds must be 0..K-1 with every "
                                f"fold used; unused: {empty[:10]}{' ...' if len(empty) > 10 else ''}; {REBUILD})",
                          [f"line {n}: {i} fold {v}" for n, i, v in zip(lines[odd], np.asarray(ids)[odd], fold[odd])])
