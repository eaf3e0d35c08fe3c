"""`make train`: every requested fold of one model, written so a killed run resumes where it stopped.
What is written where: competition.layout.ModelLayout."""
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

from competition import metrics, runlog
from competition.artifacts import (atomic_path, exclusive_lock, file_sha256, read_csv, read_json,
                                  remove_temporaries, write_csv, write_json, write_text)
from competition.errors import UserError, offenders_error
from competition.layout import FitLayout, ModelLayout, RunLayout
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


def retrain_hint(path: Path) -> str:
    """How to rebuild a model's probability file: its fold is trained again once the file is gone."""
    return (f"delete it if it is broken, then `make train MODEL={Path(path).parent.name}` trains again every fold "
            "whose files are missing")


def read_probs(path: Path, ids, tokens, rebuild: str | None = None) -> np.ndarray:
    rebuild = rebuild or retrain_hint(path)
    frame = read_csv(path, rebuild, dtype={"ImageID": str})
    if "ImageID" not in frame.columns:
        raise UserError(f"{path}: no ImageID column; {rebuild}")
    missing = [t for t in tokens if t not in frame.columns]
    if missing:
        raise UserError(f"{path}: label columns {missing} missing (label order differs from the spec?)")
    frame = frame.set_index("ImageID")
    absent = [i for i in ids if i not in frame.index]
    if absent or len(frame) != len(ids):
        raise UserError(f"{path}: rows do not match the ids ({len(absent)} missing, {len(frame)} rows for {len(ids)} ids)")
    prob = frame.loc[list(ids), list(tokens)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prob).all(1) | (prob < 0).any(1) | (prob > 1).any(1)
    if bad.any():
        raise offenders_error(path, "rows with missing or out-of-range probabilities (retrain this model)",
                              [str(i) for i in np.asarray(ids)[bad]])
    return prob


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


def check_run(model: ModelLayout, cfg: dict, folds_sha: str, data_sha: str, tokens, force: bool, log=print) -> None:
    """Refuse to continue a run trained on other folds, data, labels or settings, unless told to start over."""
    if not model.run.exists():
        return
    old = read_json(model.run, f"`make train MODEL={model.name} FORCE=1` starts this model over")
    old_cfg = {k: v for k, v in old["config"].items() if k not in EXECUTION_KEYS}
    new_cfg = {k: v for k, v in cfg.items() if k not in EXECUTION_KEYS}
    problems = []
    if old["folds_sha256"] != folds_sha:
        problems.append("the folds file changed since this run started")
    if "data_sha256" not in old:
        log(f"{model.dir}: started before data fingerprints were recorded; cannot tell whether the data changed")
    elif old["data_sha256"] != data_sha:
        problems.append("the training data changed since this run started (ids, labels, captions or images)")
    if old["labels"] != list(tokens):
        problems.append("the label order changed")
    # Keys new since the run started are not a change: their defaults reproduce the old behaviour.
    changed = sorted(k for k in set(old_cfg) & set(new_cfg) if old_cfg[k] != new_cfg[k])
    if changed:
        problems.append("config differs: " + ", ".join(change(k, old_cfg[k], new_cfg[k]) for k in changed))
    if problems and nothing_trained(model):
        log(f"{model.dir}: nothing was trained under the old settings ({'; '.join(problems)}); starting anew")
        model.run.unlink()
        return
    if problems and not force:
        raise UserError(f"{model.dir}: " + "; ".join(problems) + ". Re-run with FORCE=1 to start this model over.")
    if problems:
        print(f"FORCE: removing {model.dir} ({'; '.join(problems)})")
        shutil.rmtree(model.dir)


def nothing_trained(model: ModelLayout) -> bool:
    """No fold or refit finished, and none has a resumable epoch: a run that failed before its first epoch
    (a bad setting) pins nothing, so the corrected command goes ahead without FORCE."""
    return not any(p.exists() for d in model.dir.iterdir() if d.is_dir()
                   for p in (FitLayout(d).done, FitLayout(d).state, FitLayout(d).best_weights))


def change(key: str, old, new) -> str:
    """`key old -> new`; for a nested record (a student's `distill`), only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return ", ".join(change(f"{key}.{k}", old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
    short = lambda v: (r if len(r := repr(v)) <= 40 else r[:37] + "...")  # noqa: E731
    return f"{key} {short(old)} -> {short(new)}"


def fold_fitter(cfg: dict):
    if cfg["kind"] == "captions":
        from pipelines.captions import fit_captions
        return fit_captions
    from pipelines.images import fit_images
    return fit_images


def assemble(model: ModelLayout, spec, ds: Dataset, fold_of: np.ndarray, k: int) -> dict | None:
    """Merge per-fold OOF parts into oof.csv once every fold is done (also across separate jobs)."""
    if not all(model.fold(f).done.exists() for f in range(k)):
        return None
    oof = pd.concat([read_csv(model.fold(f).oof, retrain_hint(model.fold(f).dir), dtype={"ImageID": str})
                     for f in range(k)])
    oof = oof.set_index("ImageID").loc[list(ds.train["id"])].reset_index()
    assert (oof["fold"].to_numpy() == fold_of).all(), "OOF folds disagree with the folds file"
    write_csv(model.oof, oof)
    prob = oof[spec.tokens].to_numpy()
    y = ds.targets()
    pred = metrics.decide(prob, 0.5, spec.min_labels_per_image)
    return {"micro_f1_at_0.5": metrics.f1(y, pred), f"{spec.metric}_at_0.5": metrics.objective(spec.metric).score(y, pred),
            "mAP": metrics.mean_average_precision(y, prob)}


def write_meta(model: ModelLayout, cfg, spec, folds_sha, k, scores) -> dict:
    folds = {f: read_json(model.fold(f).done) for f in range(k) if model.fold(f).done.exists()}
    full = model.full.done
    weight_files = {f: info["weights"] for f, info in folds.items()}
    shared = sorted({p for info in folds.values() for p in info.get("shared_weights", [])})
    meta = {
        "model": cfg["name"], "kind": cfg["kind"], "config": cfg, "folds_sha256": folds_sha,
        "data_sha256": read_json(model.run).get("data_sha256"), "k": k,
        "labels": spec.tokens, "folds": folds, "folds_done": sorted(folds),
        "weights_mb_per_fold": {f: round((model.dir / w).stat().st_size / 2**20, 3) for f, w in weight_files.items()},
        "shared_weights": shared,  # needed once beside the fold (or refit) weights: a frozen encoder
        "shared_mb": round(sum(weights_mb(model.dir / p) for p in shared), 3),
        "full": read_json(full) if full.exists() else None,
        "seconds": sum(info["seconds"] for info in folds.values()),
        "gpu_hours": sum(info["gpu_hours"] for info in folds.values()) + (read_json(full)["gpu_hours"] if full.exists() else 0),
        "oof": scores,
    }
    write_json(model.meta, meta)
    return meta


def weights_mb(path: Path) -> float:
    """A weight file's size, or a folder's (a saved encoder)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def train_model(spec, ds: Dataset, run: RunLayout, cfg: dict, force: bool = False, log=print,
                targets_for=None) -> dict:
    """Every wanted fold, then the OOF file, the refit and meta.json. `targets_for(fold)` (fold None: the
    refit) gives a distilled student's SoftTargets; without it models learn the 0/1 labels."""
    model = run.model(cfg["name"])
    fold_of = read_folds(run.folds, list(ds.train["id"]))
    k = int(fold_of.max()) + 1
    if cfg["pseudo"]:
        cfg, targets_for = with_pseudo(cfg, spec, ds, run, k, targets_for)
    folds_sha, data_sha = file_sha256(run.folds), data_fingerprint(ds, cfg)
    check_run(model, cfg, folds_sha, data_sha, spec.tokens, force, log)
    wanted = fold_list(cfg, k)
    model.dir.mkdir(parents=True, exist_ok=True)
    if not model.run.exists():
        write_json(model.run, {"config": cfg, "folds_sha256": folds_sha, "data_sha256": data_sha,
                               "labels": spec.tokens})
    write_text(model.config, yaml.safe_dump(cfg, sort_keys=True))
    trained = [fit_once(model, model.fold(f), f, f"{cfg['name']} fold {f}", log,
                        lambda: train_fold(cfg, spec, ds, run, fold_of, f, log, targets_for)) for f in wanted]
    scores = assemble(model, spec, ds, fold_of, k)
    if scores and cfg["fullfit"]:
        trained.append(full_fit(cfg, ds, run, spec, k, log, targets_for))
    meta = write_meta(model, cfg, spec, folds_sha, k, scores)
    plot_history(model, k)
    if scores and any(trained) and dist_rank() == 0:  # a re-run that trained nothing adds no row
        runlog.append(run, "train", cfg["name"], members=cfg["name"], metric=spec.metric,
                      oof_score=scores[spec.metric + "_at_0.5"], size_mb=sum(meta["weights_mb_per_fold"].values()) + meta["shared_mb"],
                      gpu_hours=meta["gpu_hours"])
    if scores:
        log(f"{cfg['name']}: OOF micro-F1@0.5 {scores['micro_f1_at_0.5']:.4f}  mAP {scores['mAP']:.4f}  -> {model.dir}")
    else:
        log(f"{cfg['name']}: folds done {meta['folds_done']} of {k}; oof.csv is written when all are")
    return meta


def with_pseudo(cfg, spec, ds, run: RunLayout, k: int, targets_for):
    """The config with the pseudo-labels' identity (a changed artifact stops a resume), and their targets."""
    from pipelines.pseudo import pseudo_targets, read_pseudo
    if targets_for is not None:
        raise UserError("a distilled student learns the test rows from its teacher already: unset pseudo")
    pseudo = read_pseudo(run, cfg["pseudo"], ds, spec.tokens, k)
    return ({**cfg, "pseudo_sha256": pseudo.record["sha256"]},
            pseudo_targets(pseudo, ds.targets(), cfg["pseudo_confidence"]))


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def dist_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def fit_files(model: ModelLayout, fit: FitLayout, f: int | None) -> list[Path]:
    """Every file a finished fit (fold f, or the refit: None) wrote, done.json first: what makes it done."""
    if not fit.done.exists():
        return [fit.done]
    info = read_json(fit.done, "delete it: that fit is then trained again")
    outputs = [model.test_full] if f is None else [fit.oof, fit.history, model.test_fold(f)]
    return [fit.done, *outputs, model.dir / info["weights"], *(model.dir / p for p in info.get("shared_weights", []))]


def is_done(model: ModelLayout, fit: FitLayout, f: int | None, log=print, label: str = "") -> bool:
    """A fit is done when done.json and every file it lists exist. One with a file missing (deleted by hand,
    lost) is not: its done.json goes, so it is trained again."""
    missing = [p for p in fit_files(model, fit, f) if not p.exists()]
    if missing and fit.done.exists():
        log(f"{label}: {', '.join(str(p) for p in missing)} missing: training it again")
        fit.done.unlink()
    return not missing


def fit_once(model: ModelLayout, fit: FitLayout, f: int | None, label: str, log, train) -> bool:
    """`train()` unless the fit is done or a live job holds it (a second job on the same folder skips it).
    True when it trained."""
    with writer_turn(fit) as held:
        if not held:
            log(f"{label}: another process is training it, skipped")
        elif is_done(model, fit, f, log, label):
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


def train_fold(cfg, spec, ds: Dataset, run: RunLayout, fold_of: np.ndarray, f: int, log, targets_for=None) -> None:
    """Fit fold f and write its artifacts; done.json last, so a fold is done only when everything is there."""
    model = run.model(cfg["name"])
    fold = model.fold(f)
    t0 = time.time()
    train, val = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
    result = fold_fitter(cfg)(cfg, ds, run, train, val, fold, f"{cfg['name']} fold {f}", log=log,
                              targets=targets_for(f) if targets_for else None)
    seconds = time.time() - t0
    write_csv(fold.oof, prob_frame(ds.train["id"].iloc[val], result.val_prob, spec.tokens, fold=f))
    write_csv(model.test_fold(f), prob_frame(ds.test["id"], result.test_prob, spec.tokens))
    write_csv(fold.history, pd.DataFrame(result.history))
    fold_scores = metrics.summary(ds.targets()[val], result.val_prob, 0.5, spec.min_labels_per_image)
    write_json(fold.done, {
        "best_epoch": result.best_epoch, "seconds": round(seconds, 1), "hours": seconds / 3600,
        "gpu_hours": result.gpu_hours, "device": result.device, **weights_record(result, model),
        "weights_source": result.source, "params": result.params, "val": fold_scores})
    log(f"{cfg['name']} fold {f}: micro-F1@0.5 {fold_scores['micro_f1']:.4f} mAP {fold_scores['mAP']:.4f} "
        f"best epoch {result.best_epoch}, {seconds:.0f}s")


def full_fit(cfg, ds, run: RunLayout, spec, k, log, targets_for=None) -> bool:
    """One model on every train row, for the median best epoch of the folds (size budgets). True when trained."""
    model = run.model(cfg["name"])
    if model.full.done.exists() and all(p.exists() for p in fit_files(model, model.full, None)):
        return False  # quietly: a done refit is the normal case on every later run
    return fit_once(model, model.full, None, f"{cfg['name']} full", log,
                    lambda: fit_full(cfg, ds, run, model, spec, k, log, targets_for))


def fit_full(cfg, ds, run: RunLayout, model: ModelLayout, spec, k, log, targets_for=None) -> None:
    epochs = int(np.median([read_json(model.fold(f).done)["best_epoch"] for f in range(k)]))
    t0 = time.time()
    result = fold_fitter(cfg)({**cfg, "epochs": max(epochs, 1)}, ds, run, np.arange(len(ds.train)),
                              np.array([], dtype=np.int64), model.full, f"{cfg['name']} full", log=log,
                              targets=targets_for(None) if targets_for else None)
    write_csv(model.test_full, prob_frame(ds.test["id"], result.test_prob, spec.tokens))
    seconds = time.time() - t0
    write_json(model.full.done, {"epochs": epochs, "seconds": round(seconds, 1), "hours": seconds / 3600,
                                 "gpu_hours": result.gpu_hours, "device": result.device,
                                 **weights_record(result, model), "params": result.params})


def weights_record(result, model: ModelLayout) -> dict:
    """Where a fit's weights lie, relative to the model folder (it moves with the run); shared ones counted once."""
    return {"weights": str(result.weights.relative_to(model.dir)),
            "shared_weights": [str(Path(p).relative_to(model.dir)) for p in result.shared]}


def plot_history(model: ModelLayout, k: int) -> None:
    frames = [pd.read_csv(model.fold(f).history).assign(fold=f) for f in range(k) if model.fold(f).history.exists()]
    if not frames or "train_loss" not in frames[0]:  # captions models have no epochs
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for frame in frames:
        axes[0].plot(frame["epoch"], frame["train_loss"], "-", label=f"fold {frame.fold[0]} train")
        if "val_loss" in frame:
            axes[0].plot(frame["epoch"], frame["val_loss"], "--", label=f"fold {frame.fold[0]} val")
        if "micro_f1" in frame:
            axes[1].plot(frame["epoch"], frame["micro_f1"], "-o", label=f"fold {frame.fold[0]}")
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{model.name}: loss")
    axes[1].set(xlabel="epoch", ylabel="val micro-F1 @0.5", title=f"{model.name}: validation")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(model.learning_curves) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
