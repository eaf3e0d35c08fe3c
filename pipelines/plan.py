"""`make plan`: the GPU-hours each model would take, from the rates `make bench` recorded on one kind of machine,
and which of them fit what is left of the competition's GPU-hour budget. `make train` warns from the same plan.

Hours = training images / the bench's real-loop rate + evaluation images / (3 x that rate): a forward pass costs
about a third of a training step. Epochs are the config's, an upper bound when early stopping cuts a fold short.
Not counted: building the image cache and trunk features (once per image size / backbone, minutes)."""
from __future__ import annotations

import dataclasses
import sys

from competition.artifacts import read_json
from competition.errors import UserError
from competition.formats import ModelMeta
from competition.layout import RunLayout
from pipelines.bench import SPEED_KEYS, device_slug, this_device
from pipelines.config import ModelConfig, resolve

EVAL_COST = 1 / 3


@dataclasses.dataclass
class Estimate:
    model: str
    images_per_s: float | None  # the bench's real-loop rate; None: no usable record
    epochs: int
    folds_left: list[int]
    refit: bool
    hours: float                # wall hours on the device
    gpu_hours: float            # = hours on a GPU, 0 on a CPU (the budget counts GPU time)
    note: str = ""


def spent_gpu_hours(run: RunLayout) -> dict[str, float]:
    """GPU-hours every model in the run folder has recorded so far (finished folds and refits)."""
    return {n: float(ModelMeta.read(run.model(n).meta).gpu_hours) for n in run.model_names()
            if run.model(n).meta.exists()}


def hours_left(spec, spent: dict[str, float]) -> float:
    budget = spec.budget["gpu_hours"]
    return float("inf") if budget is None else budget - sum(spent.values())


def folds_left(run: RunLayout, cfg: ModelConfig, k: int) -> list[int]:
    model = run.model(cfg.name)
    return [f for f in cfg.fold_list(k) if not model.fold(f).done.exists()]


def estimate(run: RunLayout, cfg: ModelConfig, n_train: int, n_test: int, k: int, device: str) -> Estimate:
    left = folds_left(run, cfg, k)
    refit = cfg.fullfit and not run.model(cfg.name).full.done.exists()
    if cfg.kind == "captions":
        return Estimate(cfg.name, None, 1, left, refit, 0.0, 0.0, "CPU only (scikit-learn): no GPU-hours")
    path = run.bench_record(cfg.name, device_slug(device))
    if not path.exists():
        return Estimate(cfg.name, None, cfg.epochs, left, refit, 0.0, 0.0,
                        f"no bench record on {device}: make bench MODEL={cfg.name}")
    record = read_json(path)
    changed = [key for key in SPEED_KEYS if record["config"].get(key) != getattr(cfg, key)]
    if changed:
        return Estimate(cfg.name, None, cfg.epochs, left, refit, 0.0, 0.0,
                        f"bench record is for other {', '.join(changed)}: run make bench again")
    rate, epochs, views = record["real_loop_images_per_s"], cfg.epochs, 2 if cfg.tta else 1
    fold_rows = n_train / k
    train = len(left) * epochs * (n_train - fold_rows) + refit * epochs * n_train
    evaluate = len(left) * (epochs * fold_rows + views * (fold_rows + n_test)) + refit * views * n_test
    hours = (train + evaluate * EVAL_COST) / rate / 3600
    on_gpu = not device.startswith("cpu")
    return Estimate(cfg.name, rate, epochs, left, refit, hours, hours if on_gpu else 0.0)


def recorded_models(run: RunLayout, device: str) -> list[str]:
    suffix = f"--{device_slug(device)}.json"
    return sorted(p.name.removesuffix(suffix) for p in run.bench.glob(f"*{suffix}")) if run.bench.exists() else []


def make_plan(spec, ds, run: RunLayout, k: int, models: list[str] | None = None, device: str | None = None,
              overrides=None) -> tuple[list[Estimate], float, dict]:
    """(estimates in the given order, GPU-hours left, spent per model) for `models` (default: every model
    with a bench record on `device`, default this machine's)."""
    device = device or this_device()
    models = models or recorded_models(run, device)
    if not models:
        raise UserError(f"{run.bench}: no bench record on {device}; run `make bench MODEL=...` first")
    spent = spent_gpu_hours(run)
    estimates = []
    for m in models:
        cfg = resolve(m)  # an unknown model fails here, naming the valid ones
        # Overrides (EPOCHS=, IMG=, ...) are the image models' keys; a captions model plans as configured.
        cfg = resolve(m, overrides) if cfg.kind == "image" else cfg
        estimates.append(estimate(run, cfg, len(ds.train), len(ds.test), k, device))
    return estimates, hours_left(spec, spent), spent


def print_plan(spec, ds, estimates: list[Estimate], left: float, spent: dict, device: str, log=print) -> None:
    budget = spec.budget["gpu_hours"]
    log(f"GPU-hour plan on {device}: {spec.name}, {len(ds.train)} train + {len(ds.test)} test rows; "
        f"budget {budget} GPU-h, spent {sum(spent.values()):.2f}, left {left:.2f}")
    log(f"{'model':<24}{'img/s':>9}{'epochs':>8}{'folds':>7}{'refit':>7}{'hours':>8}{'GPU-h':>8}{'total':>8}  fits")
    total = 0.0
    for e in estimates:
        if e.images_per_s is None:
            log(f"{e.model:<24}{'-':>9}{e.epochs:>8}{len(e.folds_left):>7}{'yes' if e.refit else 'no':>7}"
                f"{'':>8}{'':>8}{total:>8.2f}  {e.note}")
            continue
        total += e.gpu_hours
        log(f"{e.model:<24}{e.images_per_s:>9.1f}{e.epochs:>8}{len(e.folds_left):>7}{'yes' if e.refit else 'no':>7}"
            f"{e.hours:>8.2f}{e.gpu_hours:>8.2f}{total:>8.2f}  {'yes' if total <= left + 1e-9 else 'NO: over budget'}")


def warn_if_over(spec, ds, run: RunLayout, cfg: ModelConfig, k: int, device: str | None = None) -> str | None:
    """The warning `make train` prints when the plan says this run needs more GPU-hours than are left."""
    if spec.budget["gpu_hours"] is None:
        return None
    device = device or this_device()
    e = estimate(run, cfg, len(ds.train), len(ds.test), k, device)
    left = hours_left(spec, spent_gpu_hours(run))
    if e.gpu_hours <= left:
        return None
    message = (f"WARNING: the plan says {cfg.name} needs {e.gpu_hours:.2f} GPU-hours on {device} "
               f"({len(e.folds_left)} folds{' + refit' if e.refit else ''}, {e.epochs} epochs at "
               f"{e.images_per_s:.0f} img/s), but only {left:.2f} of {spec.budget['gpu_hours']} are left (make plan)")
    print(message, file=sys.stderr)
    return message
