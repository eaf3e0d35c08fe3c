"""Atomic, durable artifact writes and named artifact reads.

A reader never sees half a file, a crash never replaces a good one, and a power loss never leaves a renamed
but empty file: the data is fsynced before the rename and the folder after it (what SQLite and etcd do). A
file that cannot be written (full disk, read-only folder) or parsed (hand-edited, truncated) is one
`UserError` naming it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from competition.errors import UserError

UMASK = os.umask(0)
os.umask(UMASK)


# Errors of the storage, not of the code: the user frees space or fixes permissions, then re-runs.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}


def storage_error(path, e: OSError) -> UserError | None:
    """One line naming the path and the cause for a full disk or a folder that cannot be written, else None."""
    if e.errno not in STORAGE_ERRNOS:
        return None
    return UserError(f"{path}: cannot write: {STORAGE_ERRNOS[e.errno]} ({errno.errorcode[e.errno]}); "
                     "nothing was replaced: free space or fix the folder's permissions, then re-run")


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file of a folder artifact and the folders themselves."""
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                fsync_path(p)
        for d in sorted({p.parent for p in path.rglob("*")} | {path}):
            fsync_path(d)
    elif path.exists():
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds, after its
    bytes reached the disk, and fsync the folder so the rename does too."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, (0o777 if os.path.isdir(tmp) else 0o666) & ~UMASK)  # mkstemp makes 0600; shared like any file
        fsync_tree(Path(tmp))
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:
        error = storage_error(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_array(path, dtype, shape) -> Iterator:
    """A new .npy memory map beside `path`, renamed over it only when the block completes."""
    import numpy as np
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()


@contextlib.contextmanager
def exclusive_lock(path, wait: bool = True) -> Iterator[bool]:
    """Hold an flock on `path` for the block: True if held. The kernel drops it when the process dies,
    kill -9 included, so a crashed job never leaves a lock behind. wait=False: False if another holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def build_once(path, build) -> Path:
    """`build(path)` unless `path` exists, one process at a time. Under the lock, temporaries that a killed
    earlier build left beside `path` (as large as the artifact) are removed first."""
    path = Path(path)
    if path.exists():
        return path
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        if path.exists():  # another process built it while this one waited
            return path
        remove_temporaries(path.parent, path.name)
        build(path)
    return path


def remove_temporaries(directory, name: str = "*") -> None:
    """Delete what atomic writes of `name` left in `directory` when a kill -9 cut them short. Call it only
    while holding the lock that makes this process the directory's one writer."""
    for stale in Path(directory).glob(f".{name}.*.tmp"):
        if stale.is_dir():  # an artifact that is a folder (a saved text encoder)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path, frame, float_format: str | None = "%.6f") -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)


REBUILD = "delete it and re-run the command that wrote it"


def read_json(path, rebuild: str = REBUILD):
    """A JSON artifact; one that is missing, truncated or hand-broken is a UserError naming it and saying how
    to rebuild it (`rebuild`)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {rebuild}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {rebuild}") from None


def read_yaml(path, what: str = "YAML file"):
    """A user's YAML (a spec, a model config): a missing file or a syntax error names the file and the line."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None


def read_csv(path, rebuild: str = REBUILD, **kw):
    """A CSV artifact (probabilities, folds, history): unreadable or truncated is a UserError naming it."""
    import pandas as pd
    path = Path(path)
    try:
        return pd.read_csv(path, **kw)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {rebuild}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as CSV ({str(e).splitlines()[0]}); {rebuild}") from None


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
