"""Blend -> thresholds -> budget -> validated submission CSV + JSON sidecar."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

from competition import metrics, runlog
from competition.artifacts import exclusive_lock, write_csv
from competition.errors import UserError
from competition.formats import submission_frame
from competition.layout import RunLayout
from submissions import thresholds as th
from submissions.blend import BLENDS
from submissions.blend_file import apply_saved, saved_path, write_saved
from submissions.ensemble import Ensemble, build_ensemble
from submissions.postprocess import NestedEstimate, Settings, fully_nested
from submissions.sidecar import Sidecar, SubmittedBlend, SubmittedMember
from submissions.validate import validate_frame


def blend_key(method: str, oof: np.ndarray, trials: int, seed: int, sc) -> str:
    """Thresholds are reused only for the very same blended OOF probabilities, settings, metric and rule (the
    default rule adds nothing, so artifacts of earlier versions stay valid)."""
    h = hashlib.sha256(np.round(oof, 6).tobytes())
    h.update(f"{method}|{trials}|{seed}|{sc.metric}{'' if sc.min_labels == 1 else f'|min{sc.min_labels}'}".encode())
    return h.hexdigest()[:16]


def optuna_storage(run: RunLayout, url: str | None):
    """The study's storage: SQLite in the run folder, or any RDB URL several machines share (PostgreSQL, MySQL).
    A shared one gets a heartbeat, so a trial whose process died on any machine is failed and retried."""
    if url is None:
        return f"sqlite:///{run.optuna_db.resolve()}", None
    from sqlalchemy.exc import IntegrityError, OperationalError
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what shared studies need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return url, optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except (OperationalError, IntegrityError) as e:
            # Two machines starting on a new database race to create its tables and schema version ("already
            # exists", a duplicate version row): the second finds them on a retry (seen with two workers on one
            # new SQLite file). A server that stays unreachable fails after the third try.
            if attempt == 2:
                raise UserError(f"optuna storage {url!r}: {type(e).__name__} (3 tries): {e}") from None
            time.sleep(1 + attempt)
        except Exception as e:  # a bad URL, an unreachable server or a missing driver: the user's to fix
            raise UserError(f"optuna storage {url!r}: {type(e).__name__}: {e}") from None


def tune_thresholds(run: RunLayout, ens: Ensemble, tokens, log=print) -> th.ThresholdsRecord:
    """Compare every method in-sample and nested on the chosen blend; one artifact per blended OOF, reused."""
    st, sc = ens.settings, ens.scoring
    if st.method:
        th.check_method(st.method, sc)  # before any work: compare() tunes only the methods that apply
    url, shared = optuna_storage(run, st.storage)  # a bad URL fails now, even when the thresholds are reused
    oof = ens.blend.oof
    key = blend_key(st.method or "best", oof, st.trials, st.seed, sc)
    path = run.thresholds_file(key)
    if path.exists():
        art = th.ThresholdsRecord.read(path)
        log(f"{sc.step}s: reusing {path} (members unchanged)")
        print_table(art.comparison, art.method, sc, log)
        return art
    for m in () if st.method else th.applicable(sc):
        reason = th.too_costly(m, sc, st.trials)
        if reason:
            log(f"{sc.step} method {m} not compared: {reason}")
    with exclusive_lock(path.with_name(f".{path.name}.lock")):  # one process on this machine tunes a study at a time
        rows = th.compare(sc, oof, st.trials, st.seed, (st.method,) if st.method else None,
                          storage=shared or url, study_name=f"blend-{key}")
    row = th.pick(rows, st.method)
    art = th.ThresholdsRecord(row.method, sc.metric, tuple(tokens),
                              {t: float(v) for t, v in zip(tokens, row.thresholds)}, row.in_sample, row.nested,
                              st.trials, st.seed, tuple(r.scores for r in rows), url, f"blend-{key}")
    art.write(path)
    print_table(art.comparison, art.method, sc, log)
    log(f"{sc.step}s: {art.method} -> {path}")
    return art


def print_table(rows: tuple[th.MethodScore, ...], chosen: str, sc, log=print) -> None:
    log(f"{sc.step + ' method':<18}{'OOF in-sample':>15}{'nested CV':>12}")
    for r in rows:
        mark = "  <- chosen" if r.method == chosen else ""
        log(f"{r.method:<18}{r.in_sample:>15.4f}{r.nested:>12.4f}{mark}")


def run_thresholds(spec, ds, run: RunLayout, settings: Settings, names=None,
                   log=print) -> tuple[Ensemble, th.ThresholdsRecord]:
    """The ensemble and its thresholds artifact."""
    ens = build_ensemble(spec, ds, run, settings, names, log)
    return ens, tune_thresholds(run, ens, spec.tokens, log)


def nested_key(ens: Ensemble) -> str:
    """The fully nested estimate is reused only for the very same candidate members, folds and settings."""
    h = hashlib.sha256(ens.settings.key(ens.scoring).encode())
    h.update(np.asarray(ens.scoring.fold).tobytes())
    for m in ens.candidates:
        h.update(f"|{m.name}|{m.oof_sha256}|{m.folds_mb:.6f}|{m.full_mb}|{m.gpu_hours:.6f}|{sorted(m.shared)}".encode())
    return h.hexdigest()[:16]


def estimate_nested(run: RunLayout, ens: Ensemble, thresholds: th.ThresholdsRecord, log=print,
                    seconds: float | None = None) -> NestedEstimate:
    """The whole post-processing repeated on K-1 folds and scored on the held-out one (an artifact, reused).
    `seconds`: what the post-processing took once, on every row: the estimate's cost is said before it starts."""
    path = run.nested_file(nested_key(ens))
    if path.exists():
        nested = NestedEstimate.read(path)
        log(f"fully nested: reusing {path} (members and settings unchanged)")
    else:
        k = len(ens.scoring.folds)
        if seconds is not None:  # each outer fold repeats it on (K-1)/K of the rows: about K times as long
            log(f"fully nested: {k} outer folds, each repeating the post-processing above ({seconds:.0f} s on every "
                f"row): about {k * seconds / 60:.1f} min")
        t0 = time.perf_counter()
        nested = fully_nested(ens.candidates, ens.scoring, ens.settings, log)
        nested.write(path)
        log(f"fully nested: {time.perf_counter() - t0:.0f} s")
    sc = ens.scoring
    chosen = f"{sc.step} method {thresholds.method}" if sc.probabilities else f"{thresholds.method} thresholds"
    log(f"{chosen} on the {ens.blend_name} blend: OOF in-sample "
        f"{thresholds.oof_score:.4f}, {sc.step}s nested {thresholds.nested_score:.4f}, fully nested "
        f"(members, blend, {sc.step}s) {nested.score:.4f}")
    return nested


@dataclasses.dataclass(frozen=True)
class Submission:
    """What `make submit` wrote and from what: the CSV (its sidecar beside it), the ensemble, its thresholds
    artifact and the fully nested estimate."""
    path: Path
    ensemble: Ensemble
    thresholds: th.ThresholdsRecord
    nested: NestedEstimate


def run_submit(spec, ds, run: RunLayout, settings: Settings, command: str, names=None, log=print) -> Submission:
    """Writes the submission and its sidecar."""
    t0 = time.perf_counter()
    ens, thresholds = run_thresholds(spec, ds, run, settings, names, log)
    nested = estimate_nested(run, ens, thresholds, log, time.perf_counter() - t0)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = run.submission(spec.name, stamp, nested.score)
    # The blend's saved form first; the test rows are blended from it by the function `make predict` uses.
    form = ens.blend.model.form()
    saved = write_saved(form, saved_path(out, form)) if BLENDS[ens.blend_name].saved else None
    tests = [m.test(ens.use_full.get(m.name, False)) for m in ens.members]
    test_prob = apply_saved(ens.blend_name, ens.blend.weights, saved, tests)
    frame = submission_frame(spec, ds.test["id"], test_prob, thresholds.vector(spec.tokens))
    validate_frame(frame, spec, list(ds.test["id"]))
    sidecar = sidecar_of(spec, ens, thresholds, nested, out.name, command, stamp, saved)
    write_csv(out, frame, float_format=None)
    sidecar.write(out.with_suffix(".json"))
    runlog.append(run, "submit", out.name, members=" ".join(m.name for m in ens.members), metric=sidecar.metric,
                  oof_score=sidecar.oof_score, nested_score=sidecar.nested_score, size_mb=sidecar.size_mb,
                  gpu_hours=sidecar.gpu_hours)
    log(f"submission: {out}  (OOF {sidecar.metric} {sidecar.oof_score:.4f}, nested "
        f"{sidecar.nested_score:.4f}, {sidecar.size_mb:.1f} MB, {sidecar.gpu_hours:.2f} GPU-h)")
    return Submission(out, ens, thresholds, nested)


def sidecar_of(spec, ens: Ensemble, art: th.ThresholdsRecord, nested: NestedEstimate, name: str, command: str,
               stamp: str, blend_file: Path | None) -> Sidecar:
    """What went into a submission, beside it: members, blend, thresholds, scores, cost and budget."""
    sc, blend, thr = ens.scoring, ens.blend, art.vector(spec.tokens)
    size, hours = ens.cost()
    members = tuple(SubmittedMember(m.name, ens.use_full[m.name],
                                    "full-data refit" if ens.use_full[m.name] else f"{m.meta.k} fold models",
                                    round(m.size_mb(ens.use_full[m.name]), 3), m.gpu_hours,
                                    ens.member_scores[m.name], m.oof_sha256) for m in ens.members)
    submitted = SubmittedBlend(ens.blend_name, None if blend.weights is None else tuple(blend.weights),
                               blend_file.name if blend_file else None, blend.score,
                               {k: b.score for k, b in ens.blends.items()},
                               {k: b.select for k, b in ens.blends.items()})
    return Sidecar(name, command, spec.name, sc.metric, members, submitted, art.thresholds, art.method,
                   sc.score(blend.oof, thr), nested.score, tuple(nested.to_json()["per_fold"]), art.nested_score,
                   tuple(dataclasses.asdict(r) for r in art.comparison),
                   metrics.summary(sc.y, sc.decide(blend.oof, thr), 0.5, sc.min_labels) if sc.probabilities else
                   metrics.summary(sc.y, blend.oof, thr, sc.min_labels),
                   max(ens.member_scores.values()), round(size, 3), hours,
                   ens.settings.budget.summary(size, hours, ens.budget_notes), tuple(ens.students), stamp)
