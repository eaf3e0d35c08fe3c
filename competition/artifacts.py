"""Atomic artifact writes: a reader never sees half a file, and a crash never replaces a good one."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

UMASK = os.umask(0)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; artifacts are shared like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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


def read_json(path):
    return json.loads(Path(path).read_text())


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
