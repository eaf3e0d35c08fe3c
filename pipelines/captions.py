"""Captions member: TF-IDF n-grams + one-vs-rest logistic regression (scikit-learn).

It writes the same artifacts as an image model, so the blender treats it as one more member.
The fitted model is saved without pickle: vocabulary, idf, coefficients and settings as plain
arrays in one .npz, so loading it runs no code and its size is the whole model's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from competition import metrics
from competition.artifacts import atomic_path
from competition.errors import UserError
from competition.layout import FitLayout, RunLayout
from pipelines.result import FitResult


def vectorizers(cfg: dict, vocab: dict | None = None) -> list[TfidfVectorizer]:
    words = TfidfVectorizer(ngram_range=(1, cfg["ngram_max"]), min_df=cfg["min_df"], sublinear_tf=True,
                            lowercase=True, token_pattern=r"(?u)\b\w+\b",
                            vocabulary=None if vocab is None else vocab["words"])
    out = [words]
    if cfg["char_ngrams"]:
        out.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=cfg["min_df"], sublinear_tf=True,
                                   vocabulary=None if vocab is None else vocab["chars"]))
    return out


class CaptionModel:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.vecs = vectorizers(cfg)
        self.coef = self.intercept = None

    def features(self, texts, fit: bool = False):
        return sp.hstack([v.fit_transform(texts) if fit else v.transform(texts) for v in self.vecs]).tocsr()

    def fit(self, texts, y: np.ndarray) -> "CaptionModel":
        x = self.features(texts, fit=True)
        coefs, intercepts = [], []
        for j in range(y.shape[1]):
            if y[:, j].min() == y[:, j].max():  # a label never (or always) seen: constant prior
                coefs.append(np.zeros(x.shape[1]))
                intercepts.append(-9.0 if y[0, j] == 0 else 9.0)
                continue
            lr = LogisticRegression(C=self.cfg["C"], solver="liblinear", max_iter=1000).fit(x, y[:, j])
            coefs.append(lr.coef_[0])
            intercepts.append(lr.intercept_[0])
        self.coef, self.intercept = np.stack(coefs).astype(np.float32), np.array(intercepts, dtype=np.float32)
        return self

    def predict(self, texts) -> np.ndarray:
        logits = self.features(texts) @ self.coef.T + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits)))

    def save(self, path: Path) -> Path:
        """One .npz of plain arrays (terms as unicode arrays): the whole model, loadable without pickle."""
        arrays = {"coef": self.coef, "intercept": self.intercept, "config": np.array(json.dumps(self.cfg))}
        for vec, kind in zip(self.vecs, ("words", "chars")):
            terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
            arrays[kind], arrays[f"idf_{kind}"] = np.array(terms), vec.idf_
        path = path.with_suffix(".npz")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> "CaptionModel":
        arrays = np.load(Path(path).with_suffix(".npz"), allow_pickle=False)
        cfg = json.loads(str(arrays["config"]))
        vocab = {kind: {t: i for i, t in enumerate(arrays[kind].tolist())} for kind in ("words", "chars") if kind in arrays}
        model = cls(cfg)
        model.vecs = vectorizers(cfg, vocab)
        for vec, kind in zip(model.vecs, ("words", "chars")):
            vec.idf_ = arrays[f"idf_{kind}"]
        model.coef, model.intercept = arrays["coef"], arrays["intercept"]
        return model


def fit_captions(cfg, ds, run: RunLayout, train_idx, val_idx, out: FitLayout, label: str, log=print,
                 targets=None) -> FitResult:
    if targets is not None:  # logistic regression takes 0/1 classes only
        raise UserError("a captions model learns 0/1 labels only: a distilled student must be an image model")
    texts = ds.train["caption"].to_numpy()
    y = ds.targets()
    model = CaptionModel(cfg).fit(texts[train_idx], y[train_idx])
    out.dir.mkdir(parents=True, exist_ok=True)
    weights = model.save(out.captions_model)
    val_prob = model.predict(texts[val_idx]) if len(val_idx) else np.zeros((0, y.shape[1]))
    test_prob = model.predict(ds.test["caption"].to_numpy())
    row = {"epoch": 1, "train_micro_f1": metrics.f1(y[train_idx], metrics.decide(model.predict(texts[train_idx])))}
    if len(val_idx):
        row["micro_f1"] = metrics.f1(y[val_idx], metrics.decide(val_prob))
    log(f"{label}: " + " ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return FitResult(val_prob, test_prob, 1, [row], weights, "tf-idf + logistic regression",
                     int(model.coef.size + model.intercept.size))
