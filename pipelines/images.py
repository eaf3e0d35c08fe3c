"""Adapter from the fold orchestration (pipelines.fits) to the image training loop."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from competition.errors import UserError
from competition.layout import FitLayout, ModelLayout, RunLayout
from pipelines import text_encoder
from pipelines.cache import build_cache
from pipelines.config import ImageConfig
from pipelines.distributed import Dist
from pipelines.result import SoftTargets, training_rows
from pipelines.train import FoldData, fit


def fit_images(cfg: ImageConfig, ds, run: RunLayout, train_idx, val_idx, out: FitLayout, label: str, log=print,
               targets: SoftTargets | None = None):
    cache = build_cache(ds, run, cfg.img_size)
    y = ds.targets()
    test_rows = len(ds.train) + np.arange(len(ds.test))  # the cache holds train rows, then test rows
    train_rows, train_y = training_rows(train_idx, y, targets)
    encoder, captions = caption_embeddings(cfg, ds, run, ModelLayout(out.dir.parent))
    data = FoldData(cache, train_rows, train_y.astype(np.float32), val_idx, y[val_idx], test_rows,
                    min_labels=ds.spec.min_labels_per_image, captions=captions, stats=ds.spec.channel_stats)
    result = fit(cfg, data, out, label, dist=Dist.from_env(), log=log)
    return dataclasses.replace(result, shared=[encoder]) if encoder else result


def caption_embeddings(cfg: ImageConfig, ds, run: RunLayout,
                       model: ModelLayout) -> tuple[Path | None, np.ndarray | None]:
    """(the member's saved sentence encoder, every cache row's caption embedding: train rows, then test rows) for
    a `caption_input` member; (None, None) without one. The encoder is saved in the model folder as a captions
    member's is (same bytes: a bundle ships and counts it once), and the embeddings come from that copy."""
    if cfg.caption_input == "none":
        return None, None
    if not ds.spec.caption_column:
        raise UserError(f"caption_input={cfg.caption_input}: {ds.spec.name} has no caption column; "
                        "set caption_input=none")
    folder = text_encoder.save_encoder(cfg.caption_input, cfg.encoder_source, model.encoder)
    # The test rows embedded on their own, as `make predict` embeds a test.csv: the encoder's batches (and their
    # padding) are then the same, so are the embeddings to the bit, and so the bundle's rows are the submission's
    # (the head computes in bf16 on an AMX CPU, where a 1e-7 change of an input can move a probability by 1e-4).
    emb = np.concatenate([text_encoder.cached_embeddings(folder, list(frame["caption"]), run.cache)
                          for frame in (ds.train, ds.test) if len(frame)])
    width = text_encoder.WIDTHS[cfg.caption_input]
    if emb.shape[1] != width:
        raise UserError(f"{folder}: sentence embeddings of width {emb.shape[1]}, not {width}: not the "
                        f"{cfg.caption_input} encoder; delete that folder and train again")
    return folder, emb
