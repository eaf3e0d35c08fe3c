"""Captions member: features + one logistic regression per label (scikit-learn).

Features are TF-IDF n-grams fitted on the fold's train captions (`encoder: tfidf`, words and optionally
characters), or a frozen pretrained sentence encoder's embeddings (`encoder: minilm`), which know that a
kitten is a cat from far more text than 6,000 captions. It writes the same artifacts as an image model, so
the blender treats it as one more member. The fitted model is saved without pickle: vocabulary, idf,
coefficients and settings as plain arrays in one .npz; a sentence encoder is saved once beside the folds
(`encoder/`), so loading either runs no code and its size is the whole model's.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from competition import metrics
from competition.artifacts import atomic_path
from competition.errors import UserError
from competition.layout import FitLayout, ModelLayout, RunLayout
from competition.records import field_problems
from pipelines import caption_tuning, text_encoder
from pipelines.result import FitResult, SoftTargets, training_rows

RECORD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class CaptionsRecord:
    """What a saved captions model predicts with (its .npz's `record`): the features, nothing about training.
    A file of another format is refused by name; files saved before records held the whole training config,
    read here for these fields alone (tune_layers absent: saved before tuned members existed, so 0)."""
    encoder: str          # tfidf | a sentence encoder (pipelines.text_encoder.ENCODERS), saved beside the folds
    ngram_max: int        # TF-IDF word n-grams up to this length
    char_ngrams: bool     # TF-IDF character 2-5-grams too
    min_df: int
    tune_layers: int      # a sentence encoder's top layers fine-tuned with the member (0: frozen + LR)
    format: int = RECORD_FORMAT

    @classmethod
    def of(cls, cfg) -> CaptionsRecord:
        return cls(cfg.encoder, cfg.ngram_max, cfg.char_ngrams, cfg.min_df, cfg.tune_layers)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data, where) -> CaptionsRecord:
        if isinstance(data, dict) and "format" not in data and "encoder" in data:  # a training config: before records
            data = {f.name: data.get(f.name, 0 if f.name == "tune_layers" else None)
                    for f in dataclasses.fields(cls) if f.name != "format"} | {"format": RECORD_FORMAT}
        got = data.get("format") if isinstance(data, dict) else None
        if got != RECORD_FORMAT:
            raise UserError(f"{where}: captions record of format {got!r}, not {RECORD_FORMAT}; train the member again")
        problems = field_problems(cls, data)
        if problems:
            raise UserError(f"{where}: malformed captions record ({'; '.join(problems)}); train the member again")
        return cls(**data)


def vectorizers(record: CaptionsRecord, vocab: dict | None = None) -> list[TfidfVectorizer]:
    words = TfidfVectorizer(ngram_range=(1, record.ngram_max), min_df=record.min_df, sublinear_tf=True,
                            lowercase=True, token_pattern=r"(?u)\b\w+\b",
                            vocabulary=None if vocab is None else vocab["words"])
    out = [words]
    if record.char_ngrams:
        out.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=record.min_df, sublinear_tf=True,
                                   vocabulary=None if vocab is None else vocab["chars"]))
    return out


def fit_label(x, target: np.ndarray, C: float, solver: str) -> tuple[np.ndarray, float]:
    """(coef, intercept) for one label. A soft target t in (0, 1) enters as a positive row of weight t and a
    negative row of weight 1 - t, which is the binary cross-entropy against t."""
    soft = (target > 0) & (target < 1)
    if not soft.any() and target.min() == target.max():  # a label never (or always) seen: its constant prior
        return np.zeros(x.shape[1]), -9.0 if target[0] == 0 else 9.0
    if soft.any():
        pos, neg = target > 0, target < 1
        stack = sp.vstack if sp.issparse(x) else np.concatenate
        x = stack([x[pos], x[neg]])
        weight = np.concatenate([target[pos], 1 - target[neg]])
        target = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
    else:
        weight = None
    lr = LogisticRegression(C=C, solver=solver, max_iter=2000).fit(x, target, sample_weight=weight)
    return lr.coef_[0], float(lr.intercept_[0])


class CaptionModel:
    def __init__(self, record: CaptionsRecord, encoder_dir: Path | None = None, train=None):
        """`train`: the training config (C, tune_*) of a model about to be fitted; None for a saved one."""
        self.record, self.encoder_dir, self.train = record, encoder_dir, train
        self.vecs = vectorizers(record) if record.encoder == "tfidf" else []
        self.coef = self.intercept = self.top = None
        self.history: list[dict] = []  # a tuned model's epochs

    @classmethod
    def of(cls, cfg, encoder_dir: Path | None = None) -> CaptionModel:
        """A model to fit, from its training config (a pipelines.config.CaptionsConfig; not imported here: make
        predict loads this module and never the training config)."""
        return cls(CaptionsRecord.of(cfg), encoder_dir, cfg)

    @property
    def tuned(self) -> int:
        """How many of the encoder's top layers this model fine-tunes (0: frozen embeddings + LR)."""
        return self.record.tune_layers if self.record.encoder != "tfidf" else 0

    def features(self, texts, fit: bool = False):
        if self.tuned:
            below = caption_tuning.layers_below(self.encoder_dir, self.tuned)
            return caption_tuning.TokenStates(*caption_tuning.encode_states(self.encoder_dir, texts, below))
        if self.record.encoder != "tfidf":
            return text_encoder.encode(self.encoder_dir, texts)
        return sp.hstack([v.fit_transform(texts) if fit else v.transform(texts) for v in self.vecs]).tocsr()

    def fit(self, texts, y: np.ndarray, x=None, seed: int = 0, log=None) -> CaptionModel:
        """`y`: 0/1 labels or soft targets in [0, 1]. `x`: the texts' features when already computed (cached
        sentence embeddings or token states); TF-IDF is always fitted on `texts`."""
        x = self.features(texts, fit=True) if x is None or self.vecs else x
        if self.tuned:
            self.top = caption_tuning.pretrained_top(self.encoder_dir, self.tuned, y.shape[1], seed)
            self.history = caption_tuning.train(self.top, x, y, self.train, seed, log)
            return self
        solver = "liblinear" if sp.issparse(x) else "lbfgs"
        # Threads only for lbfgs: liblinear keeps global state, and concurrent fits corrupt each other's
        # coefficients or the heap (scikit-learn#31883; here a munmap_chunk() abort on comp5329-6k).
        fits = Parallel(n_jobs=1 if solver == "liblinear" else -1, prefer="threads")(
            delayed(fit_label)(x, y[:, j].astype(np.float64), self.train.C, solver) for j in range(y.shape[1]))
        self.coef = np.stack([c for c, _ in fits]).astype(np.float32)
        self.intercept = np.array([b for _, b in fits], dtype=np.float32)
        return self

    def predict(self, texts=None, x=None) -> np.ndarray:
        if self.tuned:
            return caption_tuning.predict(self.top, self.features(texts) if x is None else x).astype(np.float64)
        logits = (self.features(texts) if x is None else x) @ self.coef.T + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits)))

    def save(self, path: Path) -> Path:
        """One .npz of plain arrays (terms as unicode arrays): the whole model but a sentence encoder, which
        lives in `encoder_dir`, loadable without pickle."""
        arrays = {"record": np.array(json.dumps(self.record.to_json()))}
        arrays.update(caption_tuning.state_arrays(self.top) if self.tuned else
                      {"coef": self.coef, "intercept": self.intercept})
        for vec, kind in zip(self.vecs, ("words", "chars")):
            terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
            arrays[kind], arrays[f"idf_{kind}"] = np.array(terms), vec.idf_
        path = path.with_suffix(".npz")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: Path, encoder_dir: Path | None = None) -> CaptionModel:
        """A saved fold or refit; a sentence-encoder model finds its encoder in its model folder."""
        path = Path(path).with_suffix(".npz")
        arrays = np.load(path, allow_pickle=False)
        record = CaptionsRecord.from_json(json.loads(str(arrays["record" if "record" in arrays else "config"])), path)
        model = cls(record, encoder_dir or ModelLayout(path.parent.parent).encoder)
        if model.vecs:
            vocab = {kind: {t: i for i, t in enumerate(arrays[kind].tolist())} for kind in ("words", "chars")
                     if kind in arrays}
            model.vecs = vectorizers(record, vocab)
            for vec, kind in zip(model.vecs, ("words", "chars")):
                vec.idf_ = arrays[f"idf_{kind}"]
        if model.tuned:
            model.top = caption_tuning.from_arrays(arrays, caption_tuning.EncoderShape.of(model.encoder_dir),
                                                   model.tuned, len(arrays["top.head.bias"]))
        else:
            model.coef, model.intercept = arrays["coef"], arrays["intercept"]
        return model

    @property
    def params(self) -> int:
        if self.tuned:
            return sum(p.numel() for p in self.top.parameters())
        return int(self.coef.size + self.intercept.size)


def encoder_inputs(cfg, ds, run: RunLayout, model_dir: ModelLayout):
    """(encoder folder, features of train rows then test rows) for a sentence encoder: its embeddings, or for a
    `tune_layers` model the token states below the tuned layers; (None, None) for TF-IDF."""
    if cfg.encoder == "tfidf":
        return None, None
    folder = text_encoder.save_encoder(cfg.encoder, cfg.encoder_source, model_dir.encoder)
    texts = list(ds.train["caption"]) + list(ds.test["caption"])
    if cfg.tune_layers:
        below = caption_tuning.layers_below(folder, cfg.tune_layers)
        return folder, caption_tuning.cached_states(folder, texts, below, run.cache)
    return folder, text_encoder.cached_embeddings(folder, texts, run.cache)


def fit_captions(cfg, ds, run: RunLayout, train_idx, val_idx, out: FitLayout, label: str, log=print,
                 targets: SoftTargets | None = None) -> FitResult:
    texts = ds.train["caption"].to_numpy()
    test_texts = ds.test["caption"].to_numpy()
    y = ds.targets()
    folder, emb = encoder_inputs(cfg, ds, run, ModelLayout(out.dir.parent))
    n = len(texts)
    x_of = (lambda rows: None) if emb is None else (lambda rows: emb[rows])
    fit_rows, fit_y = training_rows(train_idx, y, targets)  # a student's soft targets, pseudo-labelled test rows
    fit_texts = np.concatenate([texts, test_texts])[fit_rows]
    def epoch_line(r: dict) -> None:
        log(f"{label}: epoch {r['epoch']} train_loss {r['train_loss']:.4g}")
    model = CaptionModel.of(cfg, folder).fit(fit_texts, fit_y.astype(np.float64), x=x_of(fit_rows), seed=cfg.seed,
                                          log=epoch_line)
    out.dir.mkdir(parents=True, exist_ok=True)
    weights = model.save(out.captions_model)
    val_prob = model.predict(texts[val_idx], x_of(val_idx)) if len(val_idx) else np.zeros((0, y.shape[1]))
    test_prob = model.predict(test_texts, x_of(n + np.arange(len(test_texts))))
    rule = ds.spec.min_labels_per_image  # decide as the fold score and the submission will
    epochs = model.history[-1]["epoch"] if model.tuned else 1  # the scores are the last epoch's
    row = {"epoch": epochs, "train_micro_f1": metrics.f1(y[train_idx], metrics.decide(
        model.predict(texts[train_idx], x_of(train_idx)), 0.5, rule))}
    if len(val_idx):
        row["micro_f1"] = metrics.f1(y[val_idx], metrics.decide(val_prob, 0.5, rule))
    log(f"{label}: " + " ".join(f"{k} {v:.4g}" for k, v in row.items()))
    if model.tuned:
        history = [*model.history[:-1], {**model.history[-1], **row}]
        return FitResult(val_prob, test_prob, epochs, history, weights,
                         f"{cfg.encoder} with its top {model.tuned} layers fine-tuned + linear", model.params,
                         shared=[folder])
    described = "tf-idf" if folder is None else f"{cfg.encoder} sentence embeddings"
    return FitResult(val_prob, test_prob, 1, [row], weights, f"{described} + logistic regression", model.params,
                     shared=[] if folder is None else [folder])
