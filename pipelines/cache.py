"""Decode every image once into a uint8 memory-mapped array, shared by every fold and model.

Row order: train rows, then test rows. The file name carries a key of the images (ids and each file's
content hash) and the size, so a cache is never reused for other or changed images, and a copied dataset
(new modification times, same bytes) keeps its caches and its trained models.
"""
from __future__ import annotations

import hashlib
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from competition.artifacts import atomic_array, build_once
from competition.images import load_resized
from competition.layout import RunLayout
from competition.errors import UserError, offenders_error
from competition.reader import Dataset


def images_key(ds: Dataset) -> str:
    """The images' identity: ids in order plus a hash of each file's bytes. Content, not modification
    times: a re-download or `cp` of the same files must not turn every trained image model stale, while a
    replaced file must. Hashing 7,000 JPEGs (89 MB) takes 0.3 s warm."""
    digest = hashlib.blake2b(digest_size=16)
    for part, frame in (("train", ds.train), ("test", ds.test)):
        digest.update(f"--{part}--\n".encode())
        for image_id, path in zip(frame["id"], ds.image_paths(frame)):
            try:
                content = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            except FileNotFoundError:
                raise UserError(f"{path}: image missing (id {image_id})") from None
            digest.update(f"{image_id}\t{content}\n".encode())
    return digest.hexdigest()[:12]


def cache_file(ds: Dataset, run: RunLayout, size: int) -> Path:
    return run.image_cache(images_key(ds), size)


def _decode(job):
    index, path, size = job
    try:
        return index, load_resized(path, size), None
    except Exception as e:  # report every bad image at once, not the first one
        return index, None, f"{path.name}: {type(e).__name__}: {e}"


def build_cache(ds: Dataset, run: RunLayout, size: int, workers: int | None = None,
                quiet: bool = False) -> Path:
    """Path of the cache, building it first if needed (a killed build leaves no cache behind)."""
    ds.require_images()
    paths = ds.image_paths(ds.train) + ds.image_paths(ds.test)

    def build(path: Path) -> None:
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
    return build_once(cache_file(ds, run, size), build)
