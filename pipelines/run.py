"""`make train`: every requested fold of one model, written so a killed run resumes where it stopped.
What is written where: competition.layout.ModelLayout."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import yaml

from competition import metrics, runlog
from competition.artifacts import atomic_path, file_sha256, read_csv, read_json, write_csv, write_json, write_text
from competition.errors import UserError
from competition.formats import PROB_FILE_FORMAT, FitRecord, ModelMeta, retrain_hint, weights_mb
from competition.layout import FitLayout, ModelLayout, RunLayout
from competition.reader import Dataset
from folds.split import read_folds
from pipelines.config import ModelConfig, execution_keys
from pipelines.fits import dist_rank, fit_once, refit, train_fold


def check_run(model: ModelLayout, cfg: ModelConfig, folds_sha: str, data_sha: str, tokens, force: bool,
              log=print) -> None:
    """Refuse to continue a run trained on other folds, data, labels or settings, unless told to start over."""
    if not model.run.exists():
        return
    old = read_json(model.run, f"`make train MODEL={model.name} FORCE=1` starts this model over")
    # Compared as saved (JSON), key by key: a run started by an older version may hold keys since removed.
    old_cfg, new_cfg = {k: v for k, v in old["config"].items() if k not in execution_keys()}, cfg.comparable()
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


def assemble(model: ModelLayout, spec, ds: Dataset, fold_of: np.ndarray, k: int) -> dict | None:
    """Merge per-fold OOF parts into oof.csv once every fold is done (also across separate jobs)."""
    if not all(model.fold(f).done.exists() for f in range(k)):
        return None
    oof = pd.concat([read_csv(model.fold(f).oof, retrain_hint(model.fold(f).dir), dtype={"ImageID": str})
                     for f in range(k)])
    # copy(): one block per dtype before reset_index inserts a column (hundreds of label columns fragment it)
    oof = oof.set_index("ImageID").loc[list(ds.train["id"])].copy().reset_index()
    assert (oof["fold"].to_numpy() == fold_of).all(), "OOF folds disagree with the folds file"
    write_csv(model.oof, oof, PROB_FILE_FORMAT)
    prob = oof[spec.tokens].to_numpy()
    y = ds.targets()
    pred = metrics.decide(prob, 0.5, spec.min_labels_per_image)
    return {"micro_f1_at_0.5": metrics.f1(y, pred),
            oof_key(spec): metrics.score_at(spec.metric, y, prob, 0.5, spec.min_labels_per_image,
                                            spec.column_weights()),
            "mAP": metrics.macro_ap(y, prob)}


def oof_key(spec) -> str:
    """The spec's metric of a model's OOF: at the threshold 0.5 (labels), or of its probabilities as they are."""
    return spec.metric if spec.probabilities else f"{spec.metric}_at_0.5"


def write_meta(model: ModelLayout, cfg, spec, folds_sha, k, scores, teacher: dict | None = None) -> ModelMeta:
    """The model's metadata file has this one writer: what the fold and refit records say, gathered."""
    folds = {f: FitRecord.read(model.fold(f).done) for f in range(k) if model.fold(f).done.exists()}
    full = FitRecord.read(model.full.done) if model.full.done.exists() else None
    shared = sorted({p for info in folds.values() for p in info.shared_weights})
    meta = ModelMeta(
        model=cfg.name, kind=cfg.kind, config=cfg.to_json(), folds_sha256=folds_sha,
        data_sha256=read_json(model.run).get("data_sha256"), k=k, labels=spec.tokens, folds=folds,
        folds_done=sorted(folds),
        weights_mb_per_fold={f: round(weights_mb(model.dir / info.weights), 3) for f, info in folds.items()},
        shared_weights=shared, shared_mb=round(sum(weights_mb(model.dir / p) for p in shared), 3), full=full,
        seconds=sum(info.seconds for info in folds.values()),
        gpu_hours=sum(info.gpu_hours for info in folds.values()) + (full.gpu_hours if full else 0),
        oof=scores, teacher=teacher)
    meta.write(model.meta)
    return meta


def train_model(spec, ds: Dataset, run: RunLayout, cfg: ModelConfig, force: bool = False, log=print,
                targets_for=None, teacher: dict | None = None) -> ModelMeta:
    """Every wanted fold, then the OOF file, the refit and meta.json. `targets_for(fold)` (fold None: the
    refit) gives a distilled student's SoftTargets, and `teacher` what its teacher scored, weighed and cost;
    without them models learn the 0/1 labels."""
    model = run.model(cfg.name)
    fold_of = read_folds(run.folds, list(ds.train["id"]), ds.groups())
    k = int(fold_of.max()) + 1
    if cfg.pseudo:
        cfg, targets_for = with_pseudo(cfg, spec, ds, run, k, targets_for)
    folds_sha, data_sha = file_sha256(run.folds), ds.fingerprint(cfg.data_kind)
    check_run(model, cfg, folds_sha, data_sha, spec.tokens, force, log)
    wanted = cfg.fold_list(k)
    model.dir.mkdir(parents=True, exist_ok=True)
    if not model.run.exists():
        write_json(model.run, {"config": cfg.to_json(), "folds_sha256": folds_sha, "data_sha256": data_sha,
                               "labels": spec.tokens})
    write_text(model.config, yaml.safe_dump(cfg.to_json(), sort_keys=True))
    trained = [fit_once(model, f, f"{cfg.name} fold {f}", log,
                        lambda f=f: train_fold(cfg, spec, ds, run, fold_of, f, log, targets_for)) for f in wanted]
    scores = assemble(model, spec, ds, fold_of, k)
    if scores and cfg.fullfit:
        trained.append(refit(cfg, spec, ds, run, k, log, targets_for))
    meta = write_meta(model, cfg, spec, folds_sha, k, scores, teacher)
    plot_history(model, k)
    if scores and any(trained) and dist_rank() == 0:  # a re-run that trained nothing adds no row
        runlog.append(run, "train", cfg.name, members=cfg.name, metric=spec.metric,
                      oof_score=scores[oof_key(spec)], gpu_hours=meta.gpu_hours,
                      size_mb=sum(meta.weights_mb_per_fold.values()) + meta.shared_mb)
    if scores:
        own = f"  {spec.metric} {scores[oof_key(spec)]:.4f}" if spec.probabilities else ""
        log(f"{cfg.name}: OOF micro-F1@0.5 {scores['micro_f1_at_0.5']:.4f}  mAP {scores['mAP']:.4f}{own}  -> "
            f"{model.dir}")
    else:
        log(f"{cfg.name}: folds done {meta.folds_done} of {k}; oof.csv is written when all are")
    return meta


def with_pseudo(cfg, spec, ds, run: RunLayout, k: int, targets_for):
    """The config with the pseudo-labels' identity (a changed artifact stops a resume), and their targets."""
    from pipelines.pseudo import pseudo_targets, read_pseudo
    if targets_for is not None:
        raise UserError("a distilled student learns the test rows from its teacher already: unset pseudo")
    pseudo = read_pseudo(run, cfg.pseudo, ds, spec.tokens, k)
    return (cfg.replace(pseudo_sha256=pseudo.record["sha256"]),
            pseudo_targets(pseudo, ds.targets(), cfg.pseudo_confidence))


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
