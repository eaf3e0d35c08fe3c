"""Blending members' probabilities: plain mean, OOF-tuned weights, and fold-wise stacking (second levels).

A blend is fitted on some rows' member OOF probabilities and then applied to other rows: the test rows, the
test probabilities of each fold's models alone (fold f's models never saw fold f's rows: what a distilled
student of fold f may learn on test rows), or, in the fully nested estimate, a held-out fold's OOF rows.
Stacking is fitted fold by fold, so its own OOF stays honest; the weighted mean's weights are tuned on OOF
(few degrees of freedom), and a single member is a weight vector too, so the weighted blend never scores
below the best member.

`weighted_logit` is the weighted mean of the members' logits (a weighted geometric mean of their odds).
Second levels (`stack*`), each on every member's logits of every label, so label co-occurrence is seen:
- `stack`: per label, logistic regression;
- `stack_hgb`: per label, scikit-learn's HistGradientBoostingClassifier (interactions, non-linear);
- `stack_mlp`: one small multi-output MLP (scikit-learn) over all members' outputs at once.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from competition.errors import UserError
from competition.probs import logit, sigmoid, stack_features, weighted_mean
from submissions.blend_file import LinearForm, MeanForm, RankForm, SkopsForm
from submissions.scoring import Scoring
from submissions.thresholds import global_threshold, nested_score


def quick_score(sc: Scoring, prob) -> float:
    """The metric at the best single global threshold (a probability metric: of the probabilities as they are):
    what weights are tuned by, and how members compare."""
    if sc.probabilities:
        return sc.of_pred(prob)
    return sc.score(prob, global_threshold(sc, prob))


def quick_name(sc: Scoring) -> str:
    """What quick_score is, for a log line."""
    return "as is" if sc.probabilities else "best global thr"


def selection_score(sc: Scoring, prob, quick: float | None = None) -> float:
    """What chooses among blends: the nested score of per-label thresholds where the exact search applies
    (micro-F1), else the best global threshold's. Blends are thresholded per label afterwards, and one
    global threshold misjudged them on comp5329-6k (the logit blend ranked below the weighted one there and
    above it with per-label thresholds)."""
    if sc.exact and exact_selection(sc):
        return nested_score("exact", sc, prob, trials=1, seed=0)  # exact searches: no trials, no seed
    # a probability metric: its temperatures leave the ranking metrics as they are (`quick`: already computed)
    return quick_score(sc, prob) if quick is None else quick


# Selecting blends by the nested exact search runs it K times per blend, and the fully nested estimate repeats that
# K more times: at iMet's 100,000 x 1,103 one search takes about 30 s (benchmarks/submit_scale.py). Above this many
# cells (rows x labels) blends are selected by the best global threshold, as the other metrics' are.
SELECT_EXACT_MAX_CELLS = 5_000_000


def exact_selection(sc: Scoring) -> bool:
    """Blends are selected by the nested exact search: it applies, and the rows x labels are few enough."""
    return sc.exact and sc.y.size <= SELECT_EXACT_MAX_CELLS


def scale_notes(sc: Scoring, names, log) -> None:
    """What the size of the OOF (rows x labels) changed in how blends are tuned and chosen, one line each."""
    rows, labels = sc.y.shape
    step = weight_rows(sc).step
    if step > 1 and any(BLENDS[b].tuned for b in names):
        log(f"blend weights: tuned on every {step}th row ({rows:,} x {labels:,} cells over {WEIGHTS_MAX_CELLS:,})")
    if sc.exact and not exact_selection(sc):
        log(f"blend selection: by the best global threshold, not the nested exact search ({rows:,} x {labels:,} "
            f"cells over {SELECT_EXACT_MAX_CELLS:,})")


def mean_blend(oofs, tests, weights=None):
    return weighted_mean(oofs, weights), weighted_mean(tests, weights)


# The weight grid scores the blend at each of its points (66 for 3 members). Above this many cells (rows x labels)
# it scores every k-th row instead, k the smallest that fits: 2 weights do not need iMet's 110 million cells, and
# all of them cost 3.5 s a point (benchmarks/submit_scale.py). COMP5329 (28,000 x 18) is far below it.
WEIGHTS_MAX_CELLS = 4_000_000


def weight_rows(sc: Scoring) -> slice:
    """The rows a weight search scores: all, or every k-th above WEIGHTS_MAX_CELLS."""
    n, labels = sc.y.shape
    return slice(None, None, max(1, -(-n * labels // WEIGHTS_MAX_CELLS)))


def tune_weights(oofs, sc: Scoring, logits: bool, step=0.1) -> np.ndarray:
    """Grid over the weight simplex (exhaustive for <= 4 members, coordinate ascent beyond), of the weighted mean
    of the members' probabilities, or of their logits (`logits`: a weighted geometric mean of the odds)."""
    m = len(oofs)
    if m == 1:
        return np.ones(1)
    every = weight_rows(sc)
    sc = sc.rows(every)
    stacked = np.stack([logit(p[every]) for p in oofs] if logits else [p[every] for p in oofs])

    def blend_score(w):
        mixed = np.tensordot(w, stacked, 1)
        return quick_score(sc, sigmoid(mixed) if logits else mixed)
    grid = np.round(np.arange(0, 1 + 1e-9, step), 6)
    best_w, best = None, -1.0
    if m <= 4:
        candidates = (np.array(c) for c in itertools.product(grid, repeat=m) if abs(sum(c) - 1) < 1e-6)
        for w in candidates:
            s = blend_score(w)
            if s > best:
                best, best_w = s, w
        return best_w
    w = np.full(m, 1.0 / m)
    best = blend_score(w)
    for _ in range(3):
        for i in range(m):
            for v in grid:
                trial = w.copy()
                trial[i] = v
                if trial.sum() == 0:
                    continue
                trial /= trial.sum()
                s = blend_score(trial)
                if s > best:
                    best, w = s, trial
    return w


BLENDS: dict[str, type[Blend]] = {}  # name -> its class: the one list of blend names (BLENDS=, --blend)


def register(cls: type[Blend]) -> type[Blend]:
    """A blend joins the table under its `name` (timm's @register_model): adding a blend is one class."""
    BLENDS[cls.name] = cls
    return cls


class Blend:
    """One blend kind: `fit` on some rows' member OOF probabilities (returns its OOF there), `apply` to other
    rows (`fold=f`: what fold f's own fit says, for rows fold f never saw), `form()`: its saved form
    (submissions.blend_file), whose `apply` is the arithmetic behind every number the blend gives."""
    name: str
    stacked = False          # a second level fitted fold by fold (needs two members and two folds)
    saved = None             # the blend_file form its file is saved in (None: its method and weights are all of it)
    ranks = False            # gives ranks, not probabilities: for ranking metrics only, never a teacher
    per_label = False        # a second level of one fit per label on every member's every label (`too_large`)
    tuned = False            # member weights tuned on OOF rows (`tune_weights`)
    weights = None           # a mean blend's member weights

    def fit(self, oofs, sc: Scoring) -> np.ndarray:
        raise NotImplementedError

    def apply(self, probs, fold=None) -> np.ndarray:
        raise NotImplementedError

    def form(self):
        raise NotImplementedError


class MeanBlend(Blend):
    """Weighted mean of the members' probabilities (or logits): equal weights, or weights tuned on the OOF rows
    given. In logit space a member whose probabilities sit elsewhere (ASL's sit above BCE's) still adds
    its ranking, where a mean of probabilities mixes the two scales."""
    logits = False

    def fit(self, oofs, sc: Scoring) -> np.ndarray:
        self.weights = (tune_weights(oofs, sc, self.logits) if self.tuned else np.ones(len(oofs)) / len(oofs))
        return self.apply(oofs)

    def apply(self, probs, fold=None) -> np.ndarray:  # the saved form's function: make predict blends the same
        return self.form().apply(probs)

    def form(self) -> MeanForm:
        return MeanForm(self.name, self.weights)


@register
class Mean(MeanBlend):
    name = "mean"


@register
class Weighted(MeanBlend):
    name, tuned = "weighted", True


@register
class WeightedLogit(MeanBlend):
    name, tuned, logits = "weighted_logit", True, True


@register
class RankMean(Blend):
    """Rank averaging (AUC and mAP blends on Kaggle): each member's probabilities replaced by their rank among its
    own OOF rows, per label, then averaged, so a member whose scores crowd near 0 or 1 weighs as much as one that
    spreads them. No label is read: its OOF is honest. A ranking metric only (the values are not probabilities)."""
    name, saved, ranks = "rank_mean", RankForm, True

    def __init__(self):
        self.final = None

    def fit(self, oofs, sc: Scoring) -> np.ndarray:
        self.final = RankForm.of(oofs)
        return self.apply(oofs)

    def apply(self, probs, fold=None) -> np.ndarray:
        return self.final.apply(probs)

    def form(self) -> RankForm:
        return self.final


class PerLabel:
    """One binary classifier per label on all features; a label with one class in the rows is its constant."""

    def __init__(self, make):
        self.make, self.models = make, []

    def fit(self, x, y) -> PerLabel:
        self.models = [float(y[0, j]) if y[:, j].min() == y[:, j].max() else self.make().fit(x, y[:, j])
                       for j in range(y.shape[1])]
        return self


class MultiOutputMLP:
    """One MLP for every label at once (scikit-learn's multi-label MLPClassifier): the hidden layer is shared,
    so what one label's score says about another is learnt, not only read off the inputs."""

    def __init__(self, seed: int = 0):
        self.seed, self.net, self.constant = seed, None, None

    def fit(self, x, y) -> MultiOutputMLP:
        self.constant = {j: float(y[0, j]) for j in range(y.shape[1]) if y[:, j].min() == y[:, j].max()}
        self.net = MLPClassifier((64,), alpha=1e-2, learning_rate_init=1e-3, max_iter=300, early_stopping=True,
                                 validation_fraction=0.15, n_iter_no_change=15, random_state=self.seed).fit(x, y)
        return self


class StackBlend(Blend):
    """A second-level learner on every member's logits of every label, fitted fold by fold on the rows given
    (its OOF is honest) and once on all of them (what new rows get). `apply(probs, fold=f)` uses fold f's
    learner, which never saw fold f's rows. Every number comes from the learners' saved forms (`saved`: a
    blend_file form), the arithmetic `make predict` applies to the file."""
    stacked = True
    saved: type  # LinearForm or SkopsForm

    def __init__(self):
        self.final, self.by_fold = None, {}

    def learner(self):
        raise NotImplementedError

    def fit(self, oofs, sc: Scoring) -> np.ndarray:
        x = stack_features(oofs)
        oof = np.zeros(sc.y.shape)
        for f in sc.folds:
            inner = sc.fold != f
            self.by_fold[int(f)] = self.saved.of(self.learner().fit(x[inner], sc.y[inner]))
            oof[~inner] = self.by_fold[int(f)].apply([o[~inner] for o in oofs])
        self.final = self.saved.of(self.learner().fit(x, sc.y))
        return oof

    def form(self):
        """The saved form of the learner fitted on every row: what `make submit` writes beside a submission."""
        return self.final

    def apply(self, probs, fold=None) -> np.ndarray:
        return (self.final if fold is None else self.by_fold[int(fold)]).apply(probs)


# Newton's method with a Cholesky solve: the second level has few features (members x labels) and many rows.
# On 22,400 rows x 36 features (the two captions members at 28,000 rows, benchmarks/stack_solvers.py) it fitted
# 18 labels in 0.8 s against lbfgs's 10.7 s, and lbfgs stopped up to 1.6% above the optimum it reached; the
# fully nested estimate fits the second level ~31 times.
STACK_SOLVER = "newton-cholesky"


@register
class Stack(StackBlend):
    """Per label, logistic regression."""
    name, saved, per_label = "stack", LinearForm, True

    def learner(self):
        return PerLabel(lambda: LogisticRegression(C=1.0, max_iter=2000, solver=STACK_SOLVER))


@register
class StackHGB(StackBlend):
    """Per label, gradient-boosted trees (interactions, non-linear)."""
    name, saved, per_label = "stack_hgb", SkopsForm, True

    def learner(self):
        return PerLabel(lambda: HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0,
            early_stopping=False, random_state=0))


@register
class StackMLP(StackBlend):
    """One multi-output MLP over all members' outputs at once."""
    name, saved = "stack_mlp", SkopsForm

    def learner(self):
        return MultiOutputMLP()


# What `make submit` tries unless BLENDS= says otherwise: on comp5329-6k the tree and MLP second levels did
# not beat these (docs/recipes.md, the table of what was tried) and the trees cost minutes in the fully nested loop.
# rank_mean is tried where the metric ranks (AUC, mAP) and skipped elsewhere.
DEFAULT_BLENDS = ("mean", "weighted", "weighted_logit", "rank_mean", "stack")


def check_blends(names) -> tuple:
    unknown = [n for n in names if n not in BLENDS]
    if unknown or not names:
        raise UserError(f"unknown blends {unknown}; valid: {', '.join(BLENDS)}")
    return tuple(names)


def make_blend(name: str) -> Blend:
    return BLENDS[name]()


# A per-label second level reads every member's logits of every label: members x labels features, and each of
# the labels' fits costs rows x features^2 (Newton) or rows x features x trees. COMP5329's 3 x 18 = 54 features fit
# in about a second (benchmarks/stack_solvers.py); iMet's 3 x 1,103 = 3,309 features for 1,103 labels would take
# days (benchmarks/submit_scale.py), so above this many features they are not tried.
STACK_MAX_FEATURES = 512


def too_large(name: str, n_members: int, n_labels: int) -> str | None:
    """Why blend `name` is not tried at this many members and labels, or None."""
    features = n_members * n_labels
    if BLENDS[name].per_label and features > STACK_MAX_FEATURES:
        return (f"{n_members} members x {n_labels} labels = {features:,} features for each label's fit, over "
                f"{STACK_MAX_FEATURES} (its cost grows as labels x features^2)")
    return None


def available(n_members: int, names=BLENDS, n_folds: int = 2, ranking: bool = False, n_labels: int = 1) -> tuple:
    """Stacking needs two members to have anything to stack, and two folds to fit its fold-wise OOF (inside
    the fully nested estimate of a 2-fold run, one fold is left); a rank blend needs a metric of rankings; a
    per-label second level, few enough features (`too_large`)."""
    return tuple(b for b in names if (not BLENDS[b].stacked or (n_members > 1 and n_folds > 1)) and
                 (ranking or not BLENDS[b].ranks) and too_large(b, n_members, n_labels) is None)


@dataclasses.dataclass(frozen=True)
class Fitted:
    blend: Blend            # fitted: applies to other rows' member probabilities
    oof: np.ndarray | None  # its OOF over the rows it was fitted on (None: not the best, fit_blends(best_only))
    score: float            # at the best global threshold
    select: float           # selection_score


def best_blend(scores: dict[str, float]) -> str:
    """The blend with the best selection score; ties go to the simpler one (BLENDS order)."""
    return max(scores, key=lambda k: (scores[k], -list(BLENDS).index(k)))


def fit_blends(oofs, sc: Scoring, names, best_only: bool = False) -> dict[str, Fitted]:
    """Every blend of `names` that these members and folds allow, fitted on these rows. `best_only`: only the
    best blend so far keeps its OOF rows (the others' are None), so a caller that goes on with the best alone
    (the fully nested estimate) never holds every blend's rows at once (2 GB at iMet's shape)."""
    out = {}
    usable = available(len(oofs), names, len(sc.folds), sc.objective.ranking, sc.y.shape[1])
    if not usable:  # every blend asked for is a stack, and it cannot be fitted here: the plain mean stands in
        usable = ("mean",)
    for name in usable:
        blend = make_blend(name)
        oof = blend.fit(oofs, sc)
        score = quick_score(sc, oof)
        out[name] = Fitted(blend, oof, score, selection_score(sc, oof, score))
        if best_only:
            best = best_blend({k: f.select for k, f in out.items()})
            out = {k: f if k == best else dataclasses.replace(f, oof=None) for k, f in out.items()}
    return out


@dataclasses.dataclass(frozen=True)
class Blended:
    """A blend fitted on every OOF row and applied to the test rows: what `make submit` and the teacher use."""
    model: Blend              # fitted: applies to other rows' member probabilities
    oof: np.ndarray | None    # its OOF over the train rows (None: a blend not chosen, build_ensemble's choice)
    test: np.ndarray | None   # the test rows, from each member's fold models (or refit)
    member_fold_tests: tuple  # each member's test_by_fold: `[f]` = fold f's models' test rows, read when asked
    weights: list | None      # a mean blend's member weights (None: a stacker)
    score: float              # at the best global threshold
    select: float             # selection_score

    @property
    def fold_tests(self) -> np.ndarray:
        """(k, test rows, labels): what fold f's models alone blend to (a student of fold f learns them). Computed
        when asked: only a teacher asks, and every blend holding its own copy costs k x test x labels each."""
        k = len(self.member_fold_tests[0])
        return np.stack([self.model.apply([t[f] for t in self.member_fold_tests], fold=f) for f in range(k)])


def blend_all(members, sc: Scoring, use_full: dict, names, best_only: bool = False) -> dict[str, Blended]:
    """Every blend of `names` that these members allow, fitted on the OOF rows and applied to the test rows
    (`best_only`: only the best one's rows are kept, the others' scores alone, as `fit_blends`)."""
    tests = [m.test(use_full.get(m.name, False)) for m in members]
    fold_tests = tuple(m.test_by_fold for m in members)
    out = {}
    for name, fit in fit_blends([m.oof for m in members], sc, names, best_only).items():
        weights = None if fit.blend.weights is None else [float(v) for v in fit.blend.weights]
        if fit.oof is None:
            out[name] = Blended(fit.blend, None, None, (), weights, fit.score, fit.select)
            continue
        out[name] = Blended(fit.blend, fit.oof, fit.blend.apply(tests), fold_tests, weights, fit.score, fit.select)
    return out
