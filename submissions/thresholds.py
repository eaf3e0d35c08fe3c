"""Per-label thresholds against the spec's metric, with the "at least one label" rule, and their honest score.

Every method maximises the spec's objective (competition.metrics.OBJECTIVES); `exact` applies to F-scores of
counts: micro-F1 = 2 TP / (TP + FP + P), where P (all true labels) is fixed, so a threshold only moves TP and FP,
and samples F-beta, a mean over rows of each row's F-beta of its own counts. For one label with the others fixed,
sorting its scores once gives the counts at every cut at once (the rule included: a row left empty gets its top
label); coordinate ascent over labels then handles their coupling through the pooled or per-row counts. Each
step is O(rows) after one sort per label, so a pass costs rows x labels (iMet's 100,000 x 1,103:
benchmarks/submit_scale.py). That exact search warm-starts an Optuna study over the same objective (other metrics
start Optuna from the global threshold).

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


def descending_order(values: np.ndarray) -> np.ndarray:
    """np.argsort(-values, kind="stable") (descending, ties in row order), by numpy's default sort: 1.8 ms against
    6.1 ms for 80,000 random values here; the sorts were a third of the exact search at iMet's shape (141 s -> 117 s,
    benchmarks/submit_scale.py). Tied values are put back in row order by a second sort of unique keys: (tie
    group, row)."""
    negated = -values
    order = np.argsort(negated)
    ranked = negated[order]
    tied = ranked[1:] == ranked[:-1]
    if not tied.any():
        return order
    group = np.concatenate([[0], np.cumsum(~tied)])
    return order[np.argsort(group * len(values) + order)]


class CoordinateAscent:
    """The exact search's state on one matrix: which labels pass their thresholds, and per row how many pass and
    how many of those are true. Label j's best cut with the others fixed is then one sort of its scores (made once)
    and a few O(rows) sums: each row's counts with j above and below its threshold, j's sort order summing the
    difference cut by cut. Micro-F1 pools the counts; samples F-beta sums each row's own F-beta. The min-labels
    rule (0 or 1) is counted exactly: a row with nothing else above gets its top label (np.argmax's tie rule, as
    `decide` picks it) when j is below."""

    def __init__(self, y, prob, thr, min_labels: int, average: str, beta: float):
        self.y, self.prob, self.thr = np.asarray(y).astype(bool), prob, thr
        self.rule, self.average, self.b2 = min_labels >= 1, average, beta * beta
        self.passed = prob >= thr
        self.count = self.passed.sum(1)
        self.true = (self.passed & self.y).sum(1)
        self.positives = self.y.sum(1)
        self.all_positives = int(self.positives.sum())
        self.top_true = self.y[np.arange(len(prob)), np.argmax(prob, axis=1)]
        # One stable sort per label, descending, ties in row order; a column at a time into int32, so no negated
        # copy or int64 result of the whole matrix is ever held (2 GB at iMet's 100,000 x 1,103).
        self.orders = np.empty(prob.shape, dtype=np.int32)
        for j in range(prob.shape[1]):
            self.orders[:, j] = descending_order(prob[:, j])

    def value(self, count, true):
        """Micro-F1 of pooled counts, or each row's F-beta (cumulated by the caller)."""
        if self.average == "micro":
            return 2 * true / np.maximum(count + self.all_positives, 1)
        denom = self.b2 * self.positives + count
        return np.where(denom > 0, (1 + self.b2) * true / np.maximum(denom, 1), 0.0)

    def best_cut(self, j: int) -> tuple[float, float]:
        """Label j's best threshold with the others fixed: (threshold, score)."""
        pj, yj = self.passed[:, j], self.y[:, j]
        count, true = self.count - pj, self.true - (pj & yj)
        forced = self.rule & (count == 0)
        count_below, true_below = np.where(forced, 1, count), np.where(forced, self.top_true, true)
        count_above, true_above = count + 1, true + yj
        order = self.orders[:, j]
        if self.average == "micro":
            tp = true_below.sum() + np.concatenate([[0], np.cumsum((true_above - true_below)[order])])
            n = count_below.sum() + np.concatenate([[0], np.cumsum((count_above - count_below)[order])])
            score = self.value(n, tp)
        else:
            below = self.value(count_below, true_below)
            gain = (self.value(count_above, true_above) - below)[order]
            score = (below.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / len(order)
        s = self.prob[order, j]
        valid = np.concatenate([[True], s[:-1] > s[1:], [True]])  # a cut between tied scores is not a cut
        score = np.where(valid, score, -1)
        c = int(np.argmax(score))
        return float(cuts(s)[c]), float(score[c])

    def set(self, j: int, t: float) -> None:
        now, before, yj = self.prob[:, j] >= t, self.passed[:, j], self.y[:, j]
        self.count += now.astype(np.int64) - before
        self.true += (now & yj).astype(np.int64) - (before & yj)
        self.passed[:, j], self.thr[j] = now, t


PASS_GAIN = 1e-6  # a pass over the labels that gains less ends the exact search


def exact_per_label(y, prob, min_labels: int, init=None, max_passes=10, average="micro", beta=1.0) -> np.ndarray:
    """Coordinate ascent over the labels' thresholds of micro-F1 or samples F-beta (`average`), each step exact
    (`CoordinateAscent.best_cut`), until a pass over the labels gains less than PASS_GAIN."""
    if min_labels > 1:
        raise UserError("exact search handles min_labels 0 or 1; use the optuna method")
    prob = np.asarray(prob, dtype=np.float64)
    sc = Scoring(np.asarray(y), np.zeros(len(y)), "micro_f1" if average == "micro" else f"samples_f{beta:g}",
                 min_labels)
    thr = np.array(init if init is not None else global_threshold(sc, prob), dtype=np.float64)
    state = CoordinateAscent(y, prob, thr, min_labels, average, beta)
    best = sc.score(prob, thr)
    for _ in range(max_passes):
        start = best
        for j in range(prob.shape[1]):
            t, score = state.best_cut(j)
            if score > best + 1e-12:
                state.set(j, t)
                best = score
        # At iMet's shape the passes after the second gain 1e-5, then 1e-7 (benchmarks/submit_scale.py), each as
        # costly as the first; on COMP5329-like data the second pass gains 2e-5 to 2e-4 and the third nothing.
        if best - start < PASS_GAIN:
            break
    return state.thr


def exact_search(sc: Scoring, prob) -> np.ndarray:
    """The exact search for the scoring's metric (micro-F1, samples F-beta) and rule."""
    o = sc.objective
    return exact_per_label(sc.y, prob, sc.min_labels, average=o.counts, beta=o.beta)


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
    init = exact_search(sc, prob) if sc.exact else global_threshold(sc, prob)
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
    "exact": Method(lambda sc, prob, *_: exact_search(sc, prob), applies=lambda sc: sc.exact),
    "optuna": Method(optuna_tune),
    "none": Method(lambda sc, prob, *_: np.ones(prob.shape[1]), applies=lambda sc: sc.probabilities),
    "temperature": Method(lambda sc, prob, *_: fit_temperatures(sc, prob),
                          applies=lambda sc: sc.probabilities and not sc.objective.ranking),
}


# What one Optuna trial costs on 2 cores: TPE samples each label's threshold (0.35 ms a label at 200 trials, 0.22 at
# 50), then the thresholds are scored on every cell (4.5-10 ns a cell, 30,000 x 18 and 20,000 x 1,103 rows x labels):
# measured for issue 42 (benchmarks/submit_scale.py's notes). A comparison runs one study on the rows and one per
# held-out fold; above OPTUNA_MAX_SECONDS for those, Optuna is left out of the comparison (METHOD=optuna still
# runs it). COMP5329 (28,000 x 18, 200 trials, K=5) is estimated at 12 s; iMet (100,000 x 1,103) at 23 minutes.
OPTUNA_SECONDS_PER_LABEL, OPTUNA_SECONDS_PER_CELL, OPTUNA_MAX_SECONDS = 0.35e-3, 7e-9, 120.0


def too_costly(method: str, sc: Scoring, trials: int) -> str | None:
    """Why `method` is left out of a comparison on these rows, or None."""
    if method != "optuna":
        return None
    rows, labels = sc.y.shape
    studies = 1 + (len(sc.folds) if len(sc.folds) > 1 else 0)
    seconds = studies * trials * labels * (OPTUNA_SECONDS_PER_LABEL + rows * OPTUNA_SECONDS_PER_CELL)
    if seconds <= OPTUNA_MAX_SECONDS:
        return None
    return (f"{studies} studies of {trials} trials over {labels:,} thresholds on {rows:,} rows, estimated at "
            f"{seconds / 60:.0f} min (over {OPTUNA_MAX_SECONDS / 60:.0f}; METHOD=optuna runs it anyway)")


def affordable(sc: Scoring, trials: int) -> tuple:
    """The methods that apply here and are not too costly on these rows (`too_costly`): what is compared."""
    return tuple(m for m in applicable(sc) if too_costly(m, sc, trials) is None)


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
    """In-sample and nested score of each method that applies and is affordable here (`too_costly`), or of
    `methods`, plus the in-sample thresholds."""
    rows = []
    for m in methods or affordable(sc, trials):
        thr = tune(m, sc, prob, trials, seed, storage if m == "optuna" else None, study_name)
        rows.append(Tuned(m, sc.score(prob, thr), nested_score(m, sc, prob, trials, seed), thr))
    return rows
