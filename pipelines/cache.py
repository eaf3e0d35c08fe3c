"""Decode every image once into a uint8 memory-mapped array, shared by every fold and model.

Row order: train rows, then test rows. The file name carries the images' key (`Dataset.images_key`: ids and
each file's content hash, computed once per command) and the size, so a cache is never reused for other or
changed images, and a copied dataset (new modification times, same bytes) keeps its caches and its models.
"""
from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from competition.artifacts import atomic_array, build_once
from competition.errors import offenders_error
from competition.images import load_resized, source_name
from competition.layout import RunLayout
from competition.reader import Dataset


def cache_file(ds: Dataset, run: RunLayout, size: int) -> Path:
    return run.image_cache(ds.images_key, size)


def _decode(job):
    index, path, size = job
    try:
        return index, load_resized(path, size), None
    except Exception as e:  # report every bad image at once, not the first one
        return index, None, f"{source_name(path)}: {type(e).__name__}: {e}"


def build_cache(ds: Dataset, run: RunLayout, size: int, workers: int | None = None,
                quiet: bool = False) -> Path:
    """Path of the cache, building it first if needed (a killed build leaves no cache behind)."""
    ds.require_images()
    paths = ds.image_paths(ds.train) + ds.image_paths(ds.test, test=True)

    def build(path: Path) -> None:
        errors = []
        with atomic_array(path, np.uint8, (len(paths), size, size, ds.spec.in_chans)) as array:
            jobs = [(i, p, size) for i, p in enumerate(paths)]
            with Pool(workers or os.cpu_count()) as pool:
                for index, image, error in tqdm(pool.imap_unordered(_decode, jobs, chunksize=64), total=len(jobs),
                                                desc=f"cache {size}px", disable=quiet, mininterval=2):
                    if error:
                        errors.append(error)
                    else:
                        array[index] = image
            if errors:
                raise offenders_error(ds.root, "images that cannot be decoded", sorted(errors))
    return build_once(cache_file(ds, run, size), build)
