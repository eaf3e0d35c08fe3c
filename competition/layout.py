"""Every path of a competition's run folder, named once. Writers and readers of an artifact both ask here.

runs/<COMP>/
  data/                           generated demo data (the demo competition only)
  eda/                            `make eda` plots and summary
  folds.csv                       ImageID,fold: written once by `make folds`
  folds_report.txt, .csv          per-fold label counts and deviations
  cache/                          decoded images (uint8 .npy) and trunk features, keyed by their inputs
  models/<MODEL>/                 one backbone or the captions model (ModelLayout)
  thresholds/                     thresholds-<blend key>.json, optuna.db
  nested/                         nested-<members+settings key>.json: the fully nested estimate of post-processing
  pseudo/<NAME>/                  `make pseudo`: a blend's soft labels for the test rows (PseudoLayout)
  submissions/                    <COMP>-<time>-cv<score>.csv and its .json sidecar
  bundles/<submission stem>/      `make export`: the submission's model, all `make predict` needs
  predictions/                    `make predict` outputs of the demo and the benchmarks (<name>.csv + .csv.json)
  report/                         `make report` plots (report/cam/: Grad-CAM panels)
  bench/<MODEL>--<device>.json    `make bench` rates on one kind of machine, read by `make plan`
  log.csv                         a row per trained model and per submission; `make lb` prints it
"""
from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class FitLayout:
    """One fitted model: a fold (fold<k>/) or the full-data refit (full/)."""
    dir: Path

    @property
    def oof(self) -> Path:          # this fold's validation rows (folds only)
        return self.dir / "oof.csv"

    @property
    def history(self) -> Path:
        return self.dir / "history.csv"

    @property
    def done(self) -> Path:         # written last: the fit is complete only when it exists
        return self.dir / "done.json"

    @property
    def state(self) -> Path:        # resumable training state, removed when the fit is done
        return self.dir / "state.pt"

    @property
    def best_weights(self) -> Path:
        return self.dir / "best.safetensors"

    @property
    def captions_model(self) -> Path:
        return self.dir / "model.npz"

    @property
    def lock(self) -> Path:         # held by the one process fitting it
        return self.dir / ".lock"


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """runs/<COMP>/models/<MODEL>/: every fold of one model, assembled."""
    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def run(self) -> Path:          # what the run started with: config, folds and data fingerprints, labels
        return self.dir / "run.json"

    @property
    def config(self) -> Path:       # the resolved config, readable (timm's args.yaml)
        return self.dir / "config.yaml"

    @property
    def meta(self) -> Path:         # per-fold results, sizes, GPU-hours, OOF scores
        return self.dir / "meta.json"

    @property
    def oof(self) -> Path:          # ImageID,fold,<labels>, train.csv order, once every fold is done
        return self.dir / "oof.csv"

    def test_fold(self, f: int) -> Path:  # ImageID,<labels>: fold f's model on test.csv
        return self.dir / f"test_fold{f}.csv"

    @property
    def test_full(self) -> Path:
        return self.dir / "test_full.csv"

    @property
    def encoder(self) -> Path:      # a captions model's frozen sentence encoder, shared by its folds
        return self.dir / "encoder"

    @property
    def learning_curves(self) -> Path:
        return self.dir / "learning_curves.png"

    def fold(self, f: int) -> FitLayout:
        return FitLayout(self.dir / f"fold{f}")

    @property
    def full(self) -> FitLayout:    # the refit on every train row (its folder keeps the name "full")
        return FitLayout(self.dir / "full")

    def fit(self, f: int | None) -> FitLayout:
        """Fold f's fit, or the refit for None."""
        return self.full if f is None else self.fold(f)


@dataclasses.dataclass(frozen=True)
class PseudoLayout:
    """runs/<COMP>/pseudo/<NAME>/: one blend's soft labels for the test rows (`make pseudo`)."""
    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def test(self) -> Path:         # ImageID,<labels>: the whole ensemble's (what a refit learns)
        return self.dir / "test.csv"

    def test_fold(self, f: int) -> Path:  # fold f's models only, which never saw fold f (what fold f learns)
        return self.dir / f"test_fold{f}.csv"

    @property
    def record(self) -> Path:       # members, blend, score, k, sha256 of the probabilities; written last
        return self.dir / "pseudo.json"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """runs/<COMP>/: one competition's artifacts."""
    root: Path

    @classmethod
    def of(cls, runs, competition: str) -> RunLayout:
        return cls(Path(runs) / competition)

    @property
    def demo_data(self) -> Path:
        return self.root / "data"

    @property
    def eda(self) -> Path:
        return self.root / "eda"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def folds_report(self) -> Path:
        return self.root / "folds_report.txt"

    @property
    def folds_table(self) -> Path:
        return self.root / "folds_report.csv"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def image_cache(self, images_key: str, size: int) -> Path:
        return self.cache / f"images_{images_key}_{size}px.npy"

    @staticmethod
    def trunk_features(image_cache: Path, arch: str, start: int, weights_key: str) -> Path:
        """Beside the image cache it was computed from, keyed by that cache and the trunk's weights."""
        return Path(image_cache).with_name(f"trunk_{arch}_s{start}_{weights_key}_{Path(image_cache).stem}.npy")

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> ModelLayout:
        return ModelLayout(self.models / name)

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self.models.iterdir() if p.is_dir()) if self.models.is_dir() else []

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds"

    def thresholds_file(self, key: str) -> Path:
        return self.thresholds / f"thresholds-{key}.json"

    @property
    def optuna_db(self) -> Path:
        return self.thresholds / "optuna.db"

    def pseudo(self, name: str) -> PseudoLayout:
        return PseudoLayout(self.root / "pseudo" / name)

    def nested_file(self, key: str) -> Path:
        return self.root / "nested" / f"nested-{key}.json"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def bundles(self) -> Path:      # `make export`: bundles/<submission stem>/, what `make predict` reads
        return self.root / "bundles"

    @property
    def predictions(self) -> Path:  # a bundle's predictions made here (never inside the bundle)
        return self.root / "predictions"

    def submission(self, competition: str, stamp: str, score: float) -> Path:
        return self.submissions / f"{competition}-{stamp}-cv{score:.4f}.csv"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    @property
    def log_lock(self) -> Path:
        return self.root / ".log.csv.lock"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    def bench_record(self, model: str, device: str) -> Path:  # device: a slug of the device's name
        return self.bench / f"{model}--{device}.json"

    @property
    def report_cam(self) -> Path:
        return self.report / "cam"
