"""One fit of one model (a fold, or the refit on every row): trained once, by one writer, done only when every
file it writes exists. `pipelines.run.train_model` calls these for every fold of a model."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from competition import metrics
from competition.artifacts import exclusive_lock, remove_temporaries, write_csv
from competition.formats import FitRecord, write_probs
from competition.layout import FitLayout, ModelLayout, RunLayout
from competition.reader import Dataset
from pipelines.config import ModelConfig


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def dist_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def fit_files(model: ModelLayout, f: int | None) -> list[Path]:
    """Every file a finished fit (fold f, or the refit: None) wrote, done.json first: what makes it done."""
    fit = model.fit(f)
    if not fit.done.exists():
        return [fit.done]
    info = FitRecord.read(fit.done)
    outputs = [model.test_full] if f is None else [fit.oof, fit.history, model.test_fold(f)]
    return [fit.done, *outputs, model.dir / info.weights, *(model.dir / p for p in info.shared_weights)]


def is_done(model: ModelLayout, f: int | None, log, label: str) -> bool:
    """A fit is done when done.json and every file it lists exist. One with a file missing (deleted by hand,
    lost) is not: its done.json goes, so it is trained again."""
    missing = [p for p in fit_files(model, f) if not p.exists()]
    if missing and model.fit(f).done.exists():
        log(f"{label}: {', '.join(str(p) for p in missing)} missing: training it again")
        model.fit(f).done.unlink()
    return not missing


def fit_once(model: ModelLayout, f: int | None, label: str, log, train) -> bool:
    """`train()` fold f (None: the refit) unless it is done or a live job holds it (a second job on the same
    folder skips it). True when it trained."""
    fit = model.fit(f)
    with writer_turn(fit) as held:
        if not held:
            log(f"{label}: another process is training it, skipped")
        elif is_done(model, f, log, label):
            log(f"{label}: done, skipped")
        else:
            train()
            fit.state.unlink(missing_ok=True)  # only a resume needs it: optimizer and EMA, up to 3x the weights
            return True
    return False


@contextlib.contextmanager
def writer_turn(fit: FitLayout):
    """Yield True when this process is the fit's one writer, first removing the half-written files a
    killed run left there; False when a live job holds it (a second job skips that fold).
    Under torchrun every rank must train the fold together, so ranks take no lock and rank 0 cleans."""
    lock = contextlib.nullcontext(True) if distributed() else exclusive_lock(fit.lock, wait=False)
    with lock as held:
        if held and dist_rank() == 0:
            remove_temporaries(fit.dir)
        yield held


def train_fold(cfg: ModelConfig, spec, ds: Dataset, run: RunLayout, fold_of: np.ndarray, f: int, log,
               targets_for=None) -> None:
    """Fit fold f and write its artifacts; done.json last, so a fold is done only when everything is there."""
    model = run.model(cfg.name)
    fold = model.fold(f)
    t0 = time.time()
    train, val = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
    result = fold_fitter(cfg)(cfg, ds, run, train, val, fold, f"{cfg.name} fold {f}", log=log,
                              targets=targets_for(f) if targets_for else None)
    seconds = time.time() - t0
    write_probs(fold.oof, ds.train["id"].iloc[val], result.val_prob, spec.tokens, fold=f)
    write_probs(model.test_fold(f), ds.test["id"], result.test_prob, spec.tokens)
    write_csv(fold.history, pd.DataFrame(result.history))
    fold_scores = metrics.summary(ds.targets()[val], result.val_prob, 0.5, spec.min_labels_per_image)
    fit_record(result, model, seconds, best_epoch=result.best_epoch, backend=result.backend,
               weights_source=result.source, val=fold_scores).write(fold.done)
    log(f"{cfg.name} fold {f}: micro-F1@0.5 {fold_scores['micro_f1']:.4f} mAP {fold_scores['mAP']:.4f} "
        f"best epoch {result.best_epoch}, {seconds:.0f}s")


def refit(cfg: ModelConfig, spec, ds: Dataset, run: RunLayout, k: int, log, targets_for=None) -> bool:
    """One model on every train row, for the median best epoch of the folds (size budgets). True when trained;
    quiet when it is done, the normal case on every later run."""
    model = run.model(cfg.name)
    if all(p.exists() for p in fit_files(model, None)):
        return False
    label = f"{cfg.name} refit"

    def train() -> None:
        epochs = int(np.median([FitRecord.read(model.fold(f).done).best_epoch for f in range(k)]))
        t0 = time.time()
        result = fold_fitter(cfg)(cfg.for_refit(epochs), ds, run, np.arange(len(ds.train)),
                                  np.array([], dtype=np.int64), model.full, label, log=log,
                                  targets=targets_for(None) if targets_for else None)
        write_probs(model.test_full, ds.test["id"], result.test_prob, spec.tokens)
        seconds = time.time() - t0
        fit_record(result, model, seconds, epochs=epochs).write(model.full.done)
    return fit_once(model, None, label, log, train)


def fit_record(result, model: ModelLayout, seconds: float, **kind) -> FitRecord:
    """A fit's done.json: what every fit records, and `kind`, what a fold or the refit adds. Weights lie relative
    to the model folder (it moves with the run); shared ones counted once."""
    return FitRecord(round(seconds, 1), seconds / 3600, result.gpu_hours, result.device,
                     str(result.weights.relative_to(model.dir)),
                     tuple(str(Path(p).relative_to(model.dir)) for p in result.shared), result.params,
                     result.inference, **kind)


def fold_fitter(cfg: ModelConfig):
    if cfg.kind == "captions":
        from pipelines.captions import fit_captions
        return fit_captions
    from pipelines.images import fit_images
    return fit_images
