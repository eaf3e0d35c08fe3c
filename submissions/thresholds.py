"""Per-label thresholds against the spec's metric, with the "at least one label" rule, and their honest score.

Every method maximises the spec's objective (competition.metrics.OBJECTIVES); `exact` is micro-F1 only:
micro-F1 = 2 TP / (TP + FP + P), where P (all true labels) is fixed, so a threshold only moves
TP and FP. For one label with the others fixed, sorting its scores once gives TP and FP at
every cut at once (the rule included: a row left empty gets its top label); coordinate ascent
over labels then handles their coupling through the pooled counts. That exact search
warm-starts an Optuna study over the same objective (other metrics start Optuna from the global threshold).

A probability submission (ROC-AUC, mAP, log loss) has no thresholds: its last step is a temperature per label
(or none), tuned and compared the same way, and its record holds the temperatures where a labels submission's
holds thresholds.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from scipy.optimize import minimize_scalar

from competition.artifacts import read_json, write_json
from competition.errors import UserError
from competition.metrics import log_loss_columns
from competition.probs import logit, sigmoid
from competition.records import as_json, matches, record_problems, short
from submissions.scoring import Scoring

GRID = np.linspace(0.02, 0.98, 97)


@dataclasses.dataclass(frozen=True)
class MethodScore:
    """One threshold method on a blended OOF: its in-sample score and its nested CV score."""
    method: str
    in_sample: float
    nested: float


@dataclasses.dataclass(frozen=True)
class Tuned(MethodScore):
    """A compared method with its in-sample thresholds (label order)."""
    thresholds: np.ndarray

    @property
    def scores(self) -> MethodScore:
        return MethodScore(self.method, self.in_sample, self.nested)


@dataclasses.dataclass(frozen=True)
class ThresholdsRecord:
    """thresholds/thresholds-<key>.json (`make thresholds`, `make submit`): the chosen method's per-label thresholds
    on one blended OOF, and every compared method's scores. Written once per key; a later submit reads it back."""
    method: str
    metric: str
    labels: tuple[str, ...]
    thresholds: dict                  # label token -> threshold (a probability submission: its temperature)
    oof_score: float
    nested_score: float
    trials: int
    seed: int
    comparison: tuple[MethodScore, ...]
    optuna_storage: str
    optuna_study: str

    def vector(self, tokens) -> np.ndarray:
        """The per-label thresholds in `tokens`' order."""
        return np.array([self.thresholds[t] for t in tokens])

    def to_json(self) -> dict:
        return as_json(self)

    @classmethod
    def from_json(cls, data, where) -> ThresholdsRecord:
        problems = record_problems(cls, data, {"comparison": MethodScore})
        if not problems:
            given = data["thresholds"]
            problems += [f"thresholds[{t!r}]={short(given.get(t))} (expected a finite number)"
                         for t in data["labels"] if not matches(given.get(t), float)]
            problems += [f"thresholds[{t!r}] (not a label)" for t in given if t not in data["labels"]]
        if problems:
            raise UserError(f"{where}: not a thresholds record ({'; '.join(problems)[:300]}); delete it: "
                            "`make submit` (or `make thresholds`) tunes them again")
        return cls(**{**data, "labels": tuple(data["labels"]),
                      "comparison": tuple(MethodScore(**r) for r in data["comparison"])})

    @classmethod
    def read(cls, path: Path) -> ThresholdsRecord:
        return cls.from_json(read_json(path, "delete it: `make submit` (or `make thresholds`) tunes them again"), path)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


def check_method(method: str, sc: Scoring) -> None:
    if method not in applicable(sc):
        rule = f" with min_labels_per_image {sc.min_labels}" if method == "exact" and sc.metric == "micro_f1" else ""
        raise UserError(f"threshold method {method!r} does not apply to metric {sc.metric}{rule}; "
                        f"valid: {', '.join(applicable(sc))}")


def global_threshold(sc: Scoring, prob) -> np.ndarray:
    """The best single threshold for every label, on the grid."""
    at_each = sc.objective.at_each
    if at_each is not None and sc.min_labels <= 1:  # every t at once, by counting
        best = GRID[int(np.argmax(at_each(sc.y, prob, GRID, sc.min_labels)))]
    else:
        best = max(GRID, key=lambda t: sc.score(prob, t))
    return np.full(prob.shape[1], float(best))


def cuts(sorted_scores: np.ndarray) -> np.ndarray:
    """Threshold that keeps the top c rows, for c = 0..n (midpoints: robust to unseen scores)."""
    s = sorted_scores
    mids = (s[:-1] + s[1:]) / 2
    first = np.nextafter(s[0], np.inf) if len(s) else 1.0
    last = np.nextafter(s[-1], -np.inf) if len(s) else 0.0
    return np.concatenate([[first], mids, [last]])


def best_cut_for_label(y, prob, thr, j, order_j, top, min_labels) -> tuple[float, float]:
    """Best threshold for label j with the others fixed: (threshold, micro-F1)."""
    n, L = y.shape
    others = np.delete(np.arange(L), j)
    passed_others = prob[:, others] >= thr[others]
    tp_fixed = np.logical_and(passed_others, y[:, others] == 1).sum()
    fp_fixed = np.logical_and(passed_others, y[:, others] == 0).sum()
    yj = y[:, j].astype(np.int64)
    # Row contributions when label j is above / below its threshold.
    tp_above, fp_above = yj.copy(), 1 - yj
    tp_below, fp_below = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if min_labels >= 1:
        empty = ~passed_others.any(1)
        forced = y[np.arange(n), top]  # truth of each row's top label
        own = empty & (top == j)        # j is the top label: predicted either way
        tp_below[own], fp_below[own] = yj[own], 1 - yj[own]
        other = empty & (top != j)
        tp_below[other], fp_below[other] = forced[other], 1 - forced[other]
    d_tp = (tp_above - tp_below)[order_j]
    d_fp = (fp_above - fp_below)[order_j]
    tp = tp_fixed + tp_below.sum() + np.concatenate([[0], np.cumsum(d_tp)])
    fp = fp_fixed + fp_below.sum() + np.concatenate([[0], np.cumsum(d_fp)])
    f1 = 2 * tp / np.maximum(tp + fp + y.sum(), 1)
    s = prob[order_j, j]
    valid = np.concatenate([[True], s[:-1] > s[1:], [True]])  # a cut between tied scores is not a cut
    f1 = np.where(valid, f1, -1)
    c = int(np.argmax(f1))
    return float(cuts(s)[c]), float(f1[c])


def exact_per_label(y, prob, min_labels: int, init=None, max_passes=10) -> np.ndarray:
    """Coordinate ascent of micro-F1 over the labels' thresholds, each step exact (`best_cut_for_label`)."""
    if min_labels > 1:
        raise UserError("exact search handles min_labels 0 or 1; use the optuna method")
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    sc = Scoring(y, np.zeros(len(y)), "micro_f1", min_labels)
    thr = np.array(init if init is not None else global_threshold(sc, prob), dtype=np.float64)
    orders = [np.argsort(-prob[:, j], kind="stable") for j in range(y.shape[1])]
    top = np.argmax(prob, axis=1)
    best = sc.score(prob, thr)
    for _ in range(max_passes):
        improved = False
        for j in range(y.shape[1]):
            t, f1 = best_cut_for_label(y, prob, thr, j, orders[j], top, min_labels)
            if f1 > best + 1e-12:
                thr[j], best, improved = t, f1, True
        if not improved:
            break
    return thr


def check_trials(trials: int) -> None:
    if trials < 1:
        raise UserError(f"TRIALS={trials}: the optuna search needs at least 1 trial")


def optuna_per_label(sc: Scoring, prob, trials: int, seed: int, init=None, storage=None, study_name=None):
    """TPE over one threshold per label, warm-started from `init`; resumes a stored study."""
    check_trials(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    L = prob.shape[1]
    if isinstance(storage, str):
        storage = optuna.storages.RDBStorage(storage)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                storage=storage, study_name=study_name, load_if_exists=storage is not None)
    if storage is not None and not getattr(storage, "heartbeat_interval", None):
        # With a heartbeat (shared storage) Optuna itself fails the trials of dead processes on any machine.
        fail_orphaned_trials(storage, study.study_name)
    if init is not None and not study.trials:
        study.enqueue_trial({f"t{j}": float(np.clip(init[j], 0.001, 0.999)) for j in range(L)})

    def objective(trial):
        return sc.score(prob, np.array([trial.suggest_float(f"t{j}", 0.001, 0.999) for j in range(L)]))

    remaining = trials - len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    return np.array([study.best_params[f"t{j}"] for j in range(L)])


def fail_orphaned_trials(storage, study_name: str) -> None:
    """A killed study leaves its last trial RUNNING forever; the caller holds the study's lock, so no live
    process owns such a trial: mark it failed (the dashboard then shows the truth, and it is retried)."""
    study_id = storage.get_study_id_from_name(study_name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


def optuna_tune(sc: Scoring, prob, trials: int, seed: int, storage=None, study_name=None) -> np.ndarray:
    """Optuna per label, warm-started from the exact search where it applies (else the global threshold)."""
    init = exact_per_label(sc.y, prob, sc.min_labels) if sc.exact else global_threshold(sc, prob)
    return optuna_per_label(sc, prob, trials, seed, init, storage, study_name)


def fit_temperatures(sc: Scoring, prob) -> np.ndarray:
    """Per label, the temperature T of sigmoid(logit(p) / T) with the least log loss on these rows (a bounded 1-D
    search each: labels are separable in a column-wise mean). A label with one class keeps T = 1."""
    z = logit(np.asarray(prob, dtype=np.float64))
    t = np.ones(prob.shape[1])
    for j in range(prob.shape[1]):
        y = sc.y[:, j:j + 1].astype(bool)
        if y.all() or not y.any():
            continue
        t[j] = float(np.exp(minimize_scalar(temperature_loss, bounds=(np.log(0.05), np.log(20)), method="bounded",
                                            args=(z[:, j:j + 1], y)).x))
    return t


def temperature_loss(log_t: float, z: np.ndarray, y: np.ndarray) -> float:
    return float(log_loss_columns(y, sigmoid(z / np.exp(log_t)))[0])


@dataclasses.dataclass(frozen=True)
class Method:
    """A last-step method: how it sets one value per label on some rows (a threshold, or a temperature), and
    where it applies."""
    tune: Callable  # (Scoring, prob, trials, seed, storage, study_name) -> one value per label
    applies: Callable = lambda sc: not sc.probabilities


# The last-step methods, simplest first (a tie in nested score goes to the earlier): the one table of their names.
# Labels submissions tune thresholds; probability submissions submit the blend's probabilities as they are (none),
# or calibrated per label (temperature: log loss; a ranking metric cannot change under it).
METHODS = {
    "fixed": Method(lambda sc, prob, *_: np.full(prob.shape[1], 0.5)),
    "global": Method(lambda sc, prob, *_: global_threshold(sc, prob)),
    "exact": Method(lambda sc, prob, *_: exact_per_label(sc.y, prob, sc.min_labels), applies=lambda sc: sc.exact),
    "optuna": Method(optuna_tune),
    "none": Method(lambda sc, prob, *_: np.ones(prob.shape[1]), applies=lambda sc: sc.probabilities),
    "temperature": Method(lambda sc, prob, *_: fit_temperatures(sc, prob),
                          applies=lambda sc: sc.probabilities and not sc.objective.ranking),
}


def applicable(sc: Scoring) -> tuple:
    """The threshold methods that apply to this metric and rule."""
    return tuple(name for name, m in METHODS.items() if m.applies(sc))


def tune(method: str, sc: Scoring, prob, trials: int, seed: int, storage=None, study_name=None) -> np.ndarray:
    """The thresholds `method` chooses on these rows."""
    check_method(method, sc)
    return METHODS[method].tune(sc, prob, trials, seed, storage, study_name)


def nested_score(method: str, sc: Scoring, prob, trials: int, seed: int) -> float:
    """Tune on K-1 folds' OOF, decide the held-out fold, pool the decisions: the honest score. With one fold
    (inside the fully nested estimate of a 2-fold run) nothing can be held out: the in-sample score."""
    if len(sc.folds) < 2:
        return sc.score(prob, tune(method, sc, prob, trials, seed))
    pred = np.zeros(sc.y.shape, dtype=np.float64 if sc.probabilities else np.uint8)
    for f in sc.folds:
        inner, outer = sc.fold != f, sc.fold == f
        pred[outer] = sc.decide(prob[outer], tune(method, sc.rows(inner), prob[inner], trials, seed))
    return sc.pooled(pred)


def pick(rows: list[Tuned], method: str | None = None) -> Tuned:
    """The compared row of `method`, or the best nested score (ties: the simpler method)."""
    if method:
        return next(r for r in rows if r.method == method)
    return max(rows, key=lambda r: (r.nested, -list(METHODS).index(r.method)))


def compare(sc: Scoring, prob, trials: int, seed: int, methods=None, storage=None, study_name=None) -> list[Tuned]:
    """In-sample and nested score of each method that applies (or of `methods`), plus the in-sample thresholds."""
    rows = []
    for m in methods or applicable(sc):
        thr = tune(m, sc, prob, trials, seed, storage if m == "optuna" else None, study_name)
        rows.append(Tuned(m, sc.score(prob, thr), nested_score(m, sc, prob, trials, seed), thr))
    return rows
