"""`make train`: every requested fold of one model, written so a killed run resumes where it stopped.

Layout under runs/<COMP>/models/<MODEL>/:
  config.yaml           resolved config (what this run was started with)
  oof.csv               ImageID,fold,<label tokens>   (once every fold is done)
  test_fold<k>.csv      ImageID,<label tokens>
  fold<k>/              best weights, training state, history.csv, oof.csv (its rows), done.json
  full/, test_full.csv  optional refit on all rows (FULLFIT=1)
  meta.json, learning_curves.png
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from competition import metrics
from competition.artifacts import (exclusive_lock, file_sha256, read_json, remove_temporaries, write_csv, write_json,
                                  write_text)
from competition.errors import UserError
from competition.reader import Dataset
from folds.split import read_folds
from pipelines.config import fold_list

# Keys that change how a run executes, not what it computes: they may differ on resume.
EXECUTION_KEYS = {"folds", "workers", "fullfit", "compile", "device"}


def prob_frame(ids, prob: np.ndarray, tokens, fold=None) -> pd.DataFrame:
    frame = pd.DataFrame(prob.astype(np.float64), columns=list(tokens))
    if fold is not None:
        frame.insert(0, "fold", fold)
    frame.insert(0, "ImageID", list(ids))
    return frame


def data_fingerprint(ds: Dataset, cfg: dict) -> str:
    """What a model learns from: ids and labels, test ids, and its inputs (captions, or the images' key).
    A model whose fingerprint differs from the current data's was trained on other data."""
    digest = hashlib.sha256()
    for image_id, labels in zip(ds.train["id"], ds.train["labels"]):
        digest.update(f"{image_id}\t{' '.join(labels)}\n".encode())
    digest.update(("--test--\n" + "\n".join(ds.test["id"])).encode())
    if cfg["kind"] == "captions":
        for frame in (ds.train, ds.test):
            digest.update("\n--captions--\n".join(frame["caption"]).encode())
    else:
        from pipelines.cache import images_key
        digest.update(f"\n--images--{images_key(ds)}".encode())
    return digest.hexdigest()


def check_run(model_dir: Path, cfg: dict, folds_sha: str, data_sha: str, tokens, force: bool, log=print) -> None:
    """Refuse to continue a run trained on other folds, data, labels or settings, unless told to start over."""
    meta_path = model_dir / "run.json"
    if not meta_path.exists():
        return
    old = read_json(meta_path)
    old_cfg = {k: v for k, v in old["config"].items() if k not in EXECUTION_KEYS}
    new_cfg = {k: v for k, v in cfg.items() if k not in EXECUTION_KEYS}
    problems = []
    if old["folds_sha256"] != folds_sha:
        problems.append("the folds file changed since this run started")
    if "data_sha256" not in old:
        log(f"{model_dir}: started before data fingerprints were recorded; cannot tell whether the data changed")
    elif old["data_sha256"] != data_sha:
        problems.append("the training data changed since this run started (ids, labels, captions or images)")
    if old["labels"] != list(tokens):
        problems.append("the label order changed")
    # Keys new since the run started are not a change: their defaults reproduce the old behaviour.
    changed = sorted(k for k in set(old_cfg) & set(new_cfg) if old_cfg[k] != new_cfg[k])
    if changed:
        problems.append("config differs: " + ", ".join(f"{k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed))
    if problems and not force:
        raise UserError(f"{model_dir}: " + "; ".join(problems) + ". Re-run with FORCE=1 to start this model over.")
    if problems:
        print(f"FORCE: removing {model_dir} ({'; '.join(problems)})")
        shutil.rmtree(model_dir)


def fold_fitter(cfg: dict):
    if cfg["kind"] == "captions":
        from pipelines.captions import fit_captions
        return fit_captions
    from pipelines.images import fit_images
    return fit_images


def assemble(model_dir: Path, spec, ds: Dataset, fold_of: np.ndarray, k: int) -> dict | None:
    """Merge per-fold OOF parts into oof.csv once every fold is done (also across separate jobs)."""
    parts = [model_dir / f"fold{f}" / "oof.csv" for f in range(k)]
    if not all((model_dir / f"fold{f}" / "done.json").exists() for f in range(k)):
        return None
    oof = pd.concat([pd.read_csv(p, dtype={"ImageID": str}) for p in parts])
    oof = oof.set_index("ImageID").loc[list(ds.train["id"])].reset_index()
    assert (oof["fold"].to_numpy() == fold_of).all(), "OOF folds disagree with the folds file"
    write_csv(model_dir / "oof.csv", oof)
    prob = oof[spec.tokens].to_numpy()
    y = ds.targets()
    return {"micro_f1_at_0.5": metrics.f1(y, metrics.decide(prob, 0.5, spec.min_labels_per_image)),
            "mAP": metrics.mean_average_precision(y, prob)}


def write_meta(model_dir: Path, cfg, spec, folds_sha, k, scores) -> dict:
    folds = {}
    for f in range(k):
        done = model_dir / f"fold{f}" / "done.json"
        if done.exists():
            folds[f] = read_json(done)
    full = model_dir / "full" / "done.json"
    weight_files = {f: info["weights"] for f, info in folds.items()}
    meta = {
        "model": cfg["name"], "kind": cfg["kind"], "config": cfg, "folds_sha256": folds_sha,
        "data_sha256": read_json(model_dir / "run.json").get("data_sha256"), "k": k,
        "labels": spec.tokens, "folds": folds, "folds_done": sorted(folds),
        "weights_mb_per_fold": {f: round(Path(model_dir / w).stat().st_size / 2**20, 3) for f, w in weight_files.items()},
        "full": read_json(full) if full.exists() else None,
        "seconds": sum(info["seconds"] for info in folds.values()),
        "gpu_hours": sum(info["gpu_hours"] for info in folds.values()) + (read_json(full)["gpu_hours"] if full.exists() else 0),
        "oof": scores,
    }
    write_json(model_dir / "meta.json", meta)
    return meta


def train_model(spec, ds: Dataset, runs: Path, cfg: dict, force: bool = False, log=print) -> dict:
    comp_dir = runs / spec.name
    model_dir = comp_dir / "models" / cfg["name"]
    folds_path = comp_dir / "folds.csv"
    fold_of = read_folds(folds_path, list(ds.train["id"]))
    k = int(fold_of.max()) + 1
    folds_sha, data_sha = file_sha256(folds_path), data_fingerprint(ds, cfg)
    check_run(model_dir, cfg, folds_sha, data_sha, spec.tokens, force, log)
    wanted = fold_list(cfg, k)
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "run.json").exists():
        write_json(model_dir / "run.json", {"config": cfg, "folds_sha256": folds_sha, "data_sha256": data_sha,
                                            "labels": spec.tokens})
    write_text(model_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    for f in wanted:
        with writer_turn(model_dir / f"fold{f}") as held:
            if not held:
                log(f"{cfg['name']} fold {f}: another process is training it, skipped")
            elif (model_dir / f"fold{f}" / "done.json").exists():
                log(f"{cfg['name']} fold {f}: done, skipped")
            else:
                train_fold(cfg, spec, ds, comp_dir, model_dir, fold_of, f, log)
    scores = assemble(model_dir, spec, ds, fold_of, k)
    if scores and cfg["fullfit"]:
        full_fit(cfg, ds, comp_dir, model_dir, spec, k, log)
    meta = write_meta(model_dir, cfg, spec, folds_sha, k, scores)
    plot_history(model_dir, k)
    if scores:
        log(f"{cfg['name']}: OOF micro-F1@0.5 {scores['micro_f1_at_0.5']:.4f}  mAP {scores['mAP']:.4f}  -> {model_dir}")
    else:
        log(f"{cfg['name']}: folds done {meta['folds_done']} of {k}; oof.csv is written when all are")
    return meta


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def writer_turn(directory: Path):
    """Yield True when this process is `directory`'s one writer, first removing the half-written files a
    killed run left there; False when a live job holds it (a second job skips that fold).
    Under torchrun every rank must train the fold together, so ranks take no lock and rank 0 cleans."""
    lock = contextlib.nullcontext(True) if distributed() else exclusive_lock(directory / ".lock", wait=False)
    with lock as held:
        if held and int(os.environ.get("RANK", "0")) == 0:
            remove_temporaries(directory)
        yield held


def train_fold(cfg, spec, ds: Dataset, comp_dir: Path, model_dir: Path, fold_of: np.ndarray, f: int, log) -> None:
    """Fit fold f and write its artifacts; done.json last, so a fold is done only when everything is there."""
    fold_dir = model_dir / f"fold{f}"
    t0 = time.time()
    train, val = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
    result = fold_fitter(cfg)(cfg, ds, comp_dir, train, val, fold_dir, f"{cfg['name']} fold {f}", log=log)
    seconds = time.time() - t0
    write_csv(fold_dir / "oof.csv", prob_frame(ds.train["id"].iloc[val], result.val_prob, spec.tokens, fold=f))
    write_csv(model_dir / f"test_fold{f}.csv", prob_frame(ds.test["id"], result.test_prob, spec.tokens))
    write_csv(fold_dir / "history.csv", pd.DataFrame(result.history))
    fold_scores = metrics.summary(ds.targets()[val], result.val_prob, 0.5, spec.min_labels_per_image)
    write_json(fold_dir / "done.json", {
        "best_epoch": result.best_epoch, "seconds": round(seconds, 1), "hours": seconds / 3600,
        "gpu_hours": result.gpu_hours, "device": result.device, "weights": str(result.weights.relative_to(model_dir)),
        "weights_source": result.source, "params": result.params, "val": fold_scores})
    log(f"{cfg['name']} fold {f}: micro-F1@0.5 {fold_scores['micro_f1']:.4f} mAP {fold_scores['mAP']:.4f} "
        f"best epoch {result.best_epoch}, {seconds:.0f}s")


def full_fit(cfg, ds, comp_dir, model_dir, spec, k, log) -> None:
    """One model on every train row, for the median best epoch of the folds (size budgets)."""
    done = model_dir / "full" / "done.json"
    if done.exists():
        return
    with writer_turn(model_dir / "full") as held:
        if held and not done.exists():
            fit_full(cfg, ds, comp_dir, model_dir, spec, k, log)
        elif not held:
            log(f"{cfg['name']} full: another process is training it, skipped")


def fit_full(cfg, ds, comp_dir, model_dir, spec, k, log) -> None:
    done = model_dir / "full" / "done.json"
    epochs = int(np.median([read_json(model_dir / f"fold{f}" / "done.json")["best_epoch"] for f in range(k)]))
    t0 = time.time()
    result = fold_fitter(cfg)({**cfg, "epochs": max(epochs, 1)}, ds, comp_dir, np.arange(len(ds.train)),
                              np.array([], dtype=np.int64), model_dir / "full", f"{cfg['name']} full", log=log)
    write_csv(model_dir / "test_full.csv", prob_frame(ds.test["id"], result.test_prob, spec.tokens))
    seconds = time.time() - t0
    write_json(done, {"epochs": epochs, "seconds": round(seconds, 1), "hours": seconds / 3600,
                      "gpu_hours": result.gpu_hours, "device": result.device,
                      "weights": str(result.weights.relative_to(model_dir)), "params": result.params})


def plot_history(model_dir: Path, k: int) -> None:
    frames = []
    for f in range(k):
        path = model_dir / f"fold{f}" / "history.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(fold=f))
    if not frames or "train_loss" not in frames[0]:  # captions models have no epochs
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from competition.artifacts import atomic_path
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for frame in frames:
        axes[0].plot(frame["epoch"], frame["train_loss"], "-", label=f"fold {frame.fold[0]} train")
        if "val_loss" in frame:
            axes[0].plot(frame["epoch"], frame["val_loss"], "--", label=f"fold {frame.fold[0]} val")
        if "micro_f1" in frame:
            axes[1].plot(frame["epoch"], frame["micro_f1"], "-o", label=f"fold {frame.fold[0]}")
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{model_dir.name}: loss")
    axes[1].set(xlabel="epoch", ylabel="val micro-F1 @0.5", title=f"{model_dir.name}: validation")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(model_dir / "learning_curves.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
