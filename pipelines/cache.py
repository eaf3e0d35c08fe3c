"""Decode every image once into a uint8 memory-mapped array, shared by every fold and model.

Row order: train rows, then test rows. The file name carries a key of the data set (image folder
and ids) and the size, so a cache is never reused for other data.
"""
from __future__ import annotations

import hashlib
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from competition.artifacts import atomic_array
from competition.images import load_resized
from competition.reader import Dataset, offenders_error


def cache_file(ds: Dataset, cache_dir: Path, size: int) -> Path:
    ids = "\n".join(list(ds.train["id"]) + ["--test--"] + list(ds.test["id"]))
    key = hashlib.sha1(f"{ds.image_root.resolve()}\n{ids}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"images_{key}_{size}px.npy"


def _decode(job):
    index, path, size = job
    try:
        return index, load_resized(path, size), None
    except Exception as e:  # report every bad image at once, not the first one
        return index, None, f"{path.name}: {type(e).__name__}: {e}"


def build_cache(ds: Dataset, cache_dir: Path, size: int, workers: int | None = None,
                quiet: bool = False) -> Path:
    """Path of the cache, building it first if needed (a killed build leaves no cache behind)."""
    ds.require_images()
    path = cache_file(ds, cache_dir, size)
    if path.exists():
        return path
    paths = ds.image_paths(ds.train) + ds.image_paths(ds.test)
    errors = []
    with atomic_array(path, np.uint8, (len(paths), size, size, 3)) as array:
        jobs = [(i, p, size) for i, p in enumerate(paths)]
        with Pool(workers or os.cpu_count()) as pool:
            for index, image, error in tqdm(pool.imap_unordered(_decode, jobs, chunksize=64), total=len(jobs),
                                            desc=f"cache {size}px", disable=quiet, mininterval=2):
                if error:
                    errors.append(error)
                else:
                    array[index] = image
        if errors:
            raise offenders_error(ds.image_root, "images that cannot be decoded", sorted(errors))
    return path
