"""Blend -> thresholds -> budget -> validated submission CSV + JSON sidecar."""
from __future__ import annotations

import datetime as dt
import hashlib
import warnings

import numpy as np
import optuna
import pandas as pd

from competition import metrics, runlog
from competition.artifacts import exclusive_lock, read_json, write_csv, write_json
from competition.errors import UserError
from competition.layout import RunLayout
from submissions import thresholds as th
from submissions.blend import DEFAULT_BLENDS
from submissions.budget import Budget
from submissions.ensemble import Ensemble, build_ensemble
from submissions.postprocess import Settings, fully_nested
from submissions.validate import validate_frame


def blend_key(method: str, oof: np.ndarray, trials: int, seed: int, metric: str) -> str:
    """Thresholds are reused only for the very same blended OOF probabilities and settings."""
    h = hashlib.sha256(np.round(oof, 6).tobytes())
    h.update(f"{method}|{trials}|{seed}|{metric}".encode())
    return h.hexdigest()[:16]


def optuna_storage(run: RunLayout, url: str | None):
    """The study's storage: SQLite in the run folder, or any RDB URL several machines share (PostgreSQL, MySQL).
    A shared one gets a heartbeat, so a trial whose process died on any machine is failed and retried."""
    if url is None:
        return f"sqlite:///{run.optuna_db.resolve()}", None
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what shared studies need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return url, optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except Exception as e:  # a bad URL, an unreachable server or a missing driver: the user's to fix
        raise UserError(f"optuna storage {url!r}: {type(e).__name__}: {e}") from None


def tune_thresholds(run: RunLayout, ens: Ensemble, tokens, method=None, trials=200, seed=0, storage=None,
                    log=print) -> dict:
    """Compare every method in-sample and nested on the chosen blend; one artifact per blended OOF, reused."""
    if method:
        th.check_method(method, ens.metric, ens.min_labels)  # before any work: compare() tunes only the methods that apply
    url, shared = optuna_storage(run, storage)  # a bad URL fails now, even when the thresholds are reused
    oof = ens.blend["oof"]
    key = blend_key(method or "best", oof, trials, seed, ens.metric)
    path = run.thresholds_file(key)
    if path.exists():
        ens.thresholds = read_json(path, "delete it: `make submit` (or `make thresholds`) tunes them again")
        log(f"thresholds: reusing {path} (members unchanged)")
        print_table(ens.thresholds["comparison"], ens.thresholds["method"], log)
        return ens.thresholds
    with exclusive_lock(path.with_name(f".{path.name}.lock")):  # one process on this machine tunes a study at a time
        rows = th.compare(ens.y, oof, ens.fold, ens.min_labels, trials, seed, storage=shared or url,
                          study_name=f"blend-{key}", metric=ens.metric)
    row = th.pick(rows, method)
    chosen = row["method"]
    ens.thresholds = {
        "method": chosen, "metric": ens.metric, "labels": list(tokens),
        "thresholds": {t: float(v) for t, v in zip(tokens, row["thresholds"])},
        "oof_score": row["in_sample"], "nested_score": row["nested"], "trials": trials, "seed": seed,
        "comparison": [{k: v for k, v in r.items() if k != "thresholds"} for r in rows],
        "optuna_storage": url, "optuna_study": f"blend-{key}",
    }
    write_json(path, ens.thresholds)
    print_table(ens.thresholds["comparison"], chosen, log)
    log(f"thresholds: {chosen} -> {path}")
    return ens.thresholds


def print_table(rows, chosen, log=print) -> None:
    log(f"{'threshold method':<18}{'OOF in-sample':>15}{'nested CV':>12}")
    for r in rows:
        mark = "  <- chosen" if r["method"] == chosen else ""
        log(f"{r['method']:<18}{r['in_sample']:>15.4f}{r['nested']:>12.4f}{mark}")


def run_thresholds(spec, ds, run: RunLayout, names=None, method=None, trials=200, seed=0, budget: Budget | None = None,
                   storage: str | None = None, log=print, blends=DEFAULT_BLENDS) -> Ensemble:
    ens = build_ensemble(spec, ds, run, names, budget, log, blends)
    tune_thresholds(run, ens, spec.tokens, method, trials, seed, storage, log)
    return ens


def nested_key(ens: Ensemble, settings: Settings) -> str:
    """The fully nested estimate is reused only for the very same candidate members, folds and settings."""
    h = hashlib.sha256(settings.key().encode())
    h.update(np.asarray(ens.fold).tobytes())
    for m in ens.candidates:
        h.update(f"|{m.name}|{m.oof_sha256}|{m.folds_mb:.6f}|{m.full_mb}|{m.gpu_hours:.6f}".encode())
    return h.hexdigest()[:16]


def estimate_nested(run: RunLayout, ens: Ensemble, method=None, trials=200, seed=0, log=print) -> dict:
    """The whole post-processing repeated on K-1 folds and scored on the held-out one (an artifact, reused)."""
    settings = Settings(ens.metric, ens.min_labels, ens.budget, method, trials, seed, ens.blend_names)
    path = run.nested_file(nested_key(ens, settings))
    if path.exists():
        ens.nested = read_json(path, "delete it: `make submit` computes the fully nested estimate again")
        log(f"fully nested: reusing {path} (members and settings unchanged)")
    else:
        ens.nested = fully_nested(ens.candidates, ens.y, ens.fold, settings, log)
        write_json(path, ens.nested)
    art = ens.thresholds
    log(f"{art['method']} thresholds on the {ens.blend_name} blend: OOF in-sample {art['oof_score']:.4f}, "
        f"thresholds nested {art['nested_score']:.4f}, fully nested (members, blend, thresholds) "
        f"{ens.nested['score']:.4f}")
    return ens.nested


def submission_frame(spec, ds, test_prob, thresholds) -> pd.DataFrame:
    pred = metrics.decide(test_prob, thresholds, spec.min_labels_per_image)
    labels = [" ".join(t for t, p in zip(spec.tokens, row) if p) for row in pred]
    return pd.DataFrame({spec.id_column: list(ds.test["id"]), spec.label_column: labels})


def run_submit(spec, ds, run: RunLayout, command: str, names=None, method=None, trials=200, seed=0,
               budget: Budget | None = None, storage: str | None = None, log=print, blends=DEFAULT_BLENDS) -> tuple:
    """Writes the submission and its sidecar; returns (path, the ensemble)."""
    ens = run_thresholds(spec, ds, run, names, method, trials, seed, budget, storage, log, blends)
    estimate_nested(run, ens, method, trials, seed, log)
    thr = ens.threshold_vector(spec.tokens)
    frame = submission_frame(spec, ds, ens.blend["test"], thr)
    validate_frame(frame, spec, list(ds.test["id"]))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = run.submission(spec.name, stamp, ens.nested["score"])
    sidecar = sidecar_of(spec, ens, out.name, command, stamp)
    write_csv(out, frame, float_format=None)
    write_json(out.with_suffix(".json"), sidecar)
    runlog.append(run, "submit", out.name, members=" ".join(m.name for m in ens.members), metric=ens.metric,
                  oof_score=sidecar["oof_score"], nested_score=sidecar["nested_score"], size_mb=sidecar["size_mb"],
                  gpu_hours=sidecar["gpu_hours"])
    log(f"submission: {out}  (OOF {ens.metric} {sidecar['oof_score']:.4f}, nested {sidecar['nested_score']:.4f}, "
        f"{sidecar['size_mb']:.1f} MB, {sidecar['gpu_hours']:.2f} GPU-h)")
    return out, ens


def sidecar_of(spec, ens: Ensemble, name: str, command: str, stamp: str) -> dict:
    """What went into a submission, beside it: members, blend, thresholds, scores, cost and budget."""
    thr, art, blend = ens.threshold_vector(spec.tokens), ens.thresholds, ens.blend
    size, hours = ens.cost()
    return {
        "submission": name, "command": command, "competition": spec.name, "metric": ens.metric,
        "members": [{"name": m.name, "uses": "full-data refit" if ens.use_full[m.name] else f"{m.meta['k']} fold models",
                     "size_mb": round(m.size_mb(ens.use_full[m.name]), 3), "gpu_hours": m.gpu_hours,
                     "oof_score_global_thr": ens.member_scores[m.name], "oof_sha256": m.oof_sha256}
                    for m in ens.members],
        "blend": {"method": ens.blend_name, "weights": blend["weights"],
                  "oof_score_global_thr_chosen": blend["score"],
                  "oof_score_global_thr": {k: b["score"] for k, b in ens.blends.items()},
                  "selection_score": {k: b["select"] for k, b in ens.blends.items()}},
        "thresholds": art["thresholds"], "threshold_method": art["method"],
        "oof_score": th.score(ens.y, blend["oof"], thr, ens.min_labels, ens.metric),
        "nested_score": ens.nested["score"],
        "nested_per_fold": ens.nested["per_fold"],
        "threshold_nested_score": art["nested_score"],
        "threshold_comparison": art["comparison"],
        "oof_metrics": metrics.summary(ens.y, blend["oof"], thr, ens.min_labels),
        "best_member_oof_score": max(ens.member_scores.values()),
        "size_mb": round(size, 3), "gpu_hours": hours,
        "budget": ens.budget.summary(size, hours, ens.budget_notes),
        "students": ens.students,
        "created": stamp,
    }
