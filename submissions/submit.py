"""Blend -> thresholds -> budget -> validated submission CSV + JSON sidecar."""
from __future__ import annotations

import datetime as dt
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from competition import metrics
from competition.artifacts import exclusive_lock, read_json, write_csv, write_json
from folds.split import read_folds
from submissions import thresholds as th
from submissions.blend import blend_all
from submissions.budget import cost, limits, select, within
from submissions.members import load_members
from submissions.validate import validate_frame


def blend_key(method: str, oof: np.ndarray, trials: int, seed: int) -> str:
    """Thresholds are reused only for the very same blended OOF probabilities and settings."""
    h = hashlib.sha256(np.round(oof, 6).tobytes())
    h.update(f"{method}|{trials}|{seed}".encode())
    return h.hexdigest()[:16]


def tune_thresholds(comp_dir: Path, y, oof, fold, tokens, min_labels, method, trials, seed, log=print) -> dict:
    """Compare every method in-sample and nested; cache the artifact per blended OOF."""
    key = blend_key(method or "best", oof, trials, seed)
    path = comp_dir / "thresholds" / f"thresholds-{key}.json"
    if path.exists():
        art = read_json(path)
        log(f"thresholds: reusing {path} (members unchanged)")
        print_table(art["comparison"], art["method"], log)
        return art
    storage = f"sqlite:///{(comp_dir / 'thresholds' / 'optuna.db').resolve()}"
    with exclusive_lock(path.with_name(f".{path.name}.lock")):  # one process tunes a given study at a time
        rows = th.compare(y, oof, fold, min_labels, trials, seed, storage=storage, study_name=f"blend-{key}")
    chosen = method or max(rows, key=lambda r: (r["nested"], -th.METHODS.index(r["method"])))["method"]
    row = next(r for r in rows if r["method"] == chosen)
    art = {
        "method": chosen, "labels": list(tokens),
        "thresholds": {t: float(v) for t, v in zip(tokens, row["thresholds"])},
        "oof_micro_f1": row["in_sample"], "nested_micro_f1": row["nested"], "trials": trials, "seed": seed,
        "comparison": [{k: v for k, v in r.items() if k != "thresholds"} for r in rows],
        "optuna_storage": storage, "optuna_study": f"blend-{key}",
    }
    write_json(path, art)
    print_table(art["comparison"], chosen, log)
    log(f"thresholds: {chosen} -> {path}")
    return art


def print_table(rows, chosen, log=print) -> None:
    log(f"{'threshold method':<18}{'OOF in-sample':>15}{'nested CV':>12}")
    for r in rows:
        mark = "  <- chosen" if r["method"] == chosen else ""
        log(f"{r['method']:<18}{r['in_sample']:>15.4f}{r['nested']:>12.4f}{mark}")


def prepare(spec, ds, comp_dir, names, budget_mb, budget_hours, ignore_budget, log=print):
    """Members within budget and every blend of them."""
    members = load_members(spec, ds, comp_dir, names, log=log)
    y = ds.targets()
    fold = read_folds(comp_dir / "folds.csv", list(ds.train["id"]))
    min_labels = spec.min_labels_per_image
    for m in members:
        log(f"member {m.name:<24} OOF micro-F1 (best global thr) "
            f"{th.score(y, m.oof, th.global_threshold(y, m.oof, min_labels), min_labels):.4f}  "
            f"{m.folds_mb:.1f} MB folds{f', {m.full_mb:.1f} MB refit' if m.full_mb else ''}  {m.gpu_hours:.3f} GPU-h")
    budget_note = []
    if ignore_budget:
        use_full = {m.name: False for m in members}
        size, hours = cost(members, use_full)
        if not within(size, hours, budget_mb, budget_hours):
            warning = (f"WARNING: IGNORE_BUDGET: {size:.1f} MB / {hours:.2f} GPU-h exceeds the budget "
                       f"({budget_mb} MB, {budget_hours} GPU-h); this submission breaks the competition rules")
            print(warning, file=sys.stderr)
            budget_note.append(warning)
    else:
        members, use_full, budget_note = select(members, y, min_labels, budget_mb, budget_hours)
        for line in budget_note:
            log(f"budget: {line}")
    blends = blend_all(members, y, fold, min_labels, use_full)
    for name, b in blends.items():
        log(f"blend {name:<10} OOF micro-F1 (best global thr) {b['score']:.4f}"
            + (f"  weights {dict(zip([m.name for m in members], [round(float(w), 3) for w in b['weights']]))}" if b["weights"] else ""))
    return members, use_full, blends, y, fold, budget_note


def run_thresholds(spec, ds, comp_dir, names=None, method=None, trials=200, seed=0, budget_mb=None,
                   budget_hours=None, ignore_budget=False, log=print):
    budget_mb, budget_hours = limits(spec, budget_mb, budget_hours)
    members, use_full, blends, y, fold, budget_note = prepare(spec, ds, comp_dir, names, budget_mb, budget_hours,
                                                              ignore_budget, log)
    blend_name = max(blends, key=lambda k: blends[k]["score"])
    log(f"blend: {blend_name}")
    art = tune_thresholds(comp_dir, y, blends[blend_name]["oof"], fold, spec.tokens, spec.min_labels_per_image,
                          method, trials, seed, log)
    return members, use_full, blends, blend_name, art, y, fold, budget_note


def submission_frame(spec, ds, test_prob, thresholds) -> pd.DataFrame:
    pred = metrics.decide(test_prob, thresholds, spec.min_labels_per_image)
    labels = [" ".join(t for t, p in zip(spec.tokens, row) if p) for row in pred]
    return pd.DataFrame({spec.id_column: list(ds.test["id"]), spec.label_column: labels})


def run_submit(spec, ds, comp_dir, command: str, names=None, method=None, trials=200, seed=0,
               budget_mb=None, budget_hours=None, ignore_budget=False, log=print):
    """Writes the submission; returns its path and what the report needs."""
    budget_mb, budget_hours = limits(spec, budget_mb, budget_hours)
    members, use_full, blends, blend_name, art, y, fold, budget_note = run_thresholds(
        spec, ds, comp_dir, names, method, trials, seed, budget_mb, budget_hours, ignore_budget, log)
    thr = np.array([art["thresholds"][t] for t in spec.tokens])
    blend = blends[blend_name]
    frame = submission_frame(spec, ds, blend["test"], thr)
    validate_frame(frame, spec, list(ds.test["id"]))
    size, hours = cost(members, use_full)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = comp_dir / "submissions" / f"{spec.name}-{stamp}-cv{art['nested_micro_f1']:.4f}.csv"
    oof_pred = metrics.decide(blend["oof"], thr, spec.min_labels_per_image)
    member_scores = {m.name: th.score(y, m.oof, th.global_threshold(y, m.oof, spec.min_labels_per_image),
                                      spec.min_labels_per_image) for m in members}
    sidecar = {
        "submission": out.name, "command": command, "competition": spec.name,
        "members": [{"name": m.name, "uses": "full-data refit" if use_full[m.name] else f"{m.meta['k']} fold models",
                     "size_mb": round(m.size_mb(use_full[m.name]), 3), "gpu_hours": m.gpu_hours,
                     "oof_micro_f1_global_thr": member_scores[m.name], "oof_sha256": m.oof_sha256} for m in members],
        "blend": {"method": blend_name, "weights": blend["weights"],
                  "oof_micro_f1_global_thr_chosen": blend["score"],
                  "oof_micro_f1_global_thr": {k: b["score"] for k, b in blends.items()}},
        "thresholds": art["thresholds"], "threshold_method": art["method"],
        "oof_micro_f1": metrics.f1(y, oof_pred), "nested_micro_f1": art["nested_micro_f1"],
        "threshold_comparison": art["comparison"],
        "oof_metrics": metrics.summary(y, blend["oof"], thr, spec.min_labels_per_image),
        "best_member_oof_micro_f1": max(member_scores.values()),
        "size_mb": round(size, 3), "gpu_hours": hours,
        "budget": {"model_mb": budget_mb, "gpu_hours": budget_hours, "within": within(size, hours, budget_mb, budget_hours),
                   "notes": budget_note, "ignored": bool(ignore_budget)},
        "created": stamp,
    }
    write_csv(out, frame, float_format=None)
    write_json(out.with_suffix(".json"), sidecar)
    log(f"submission: {out}  (OOF micro-F1 {sidecar['oof_micro_f1']:.4f}, nested {art['nested_micro_f1']:.4f}, "
        f"{size:.1f} MB, {hours:.2f} GPU-h)")
    return out, members, blends, blend_name, art, y
