"""python -m pipelines {train,bench} --model NAME [key=value ...]: train every fold of one model, or benchmark it;
python -m pipelines plan [--models a,b]: the GPU-hours each would take, from the bench records;
python -m pipelines options: every config key, its default, what it accepts and what it means."""
from __future__ import annotations

import argparse
import os

from competition import UserError
from competition.cli import Competition, competition_args
from competition.layout import RunLayout
from pipelines.config import available_configs, options_text, resolve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    ap.add_argument("cmd", choices=["train", "bench", "plan", "options"])
    competition_args(ap)
    ap.add_argument("--model", default=None, help=f"one of {', '.join(available_configs())} or a YAML path")
    ap.add_argument("--models", default=None, help="plan: comma list (default: every model benched on the device)")
    ap.add_argument("--device", default=None, help="plan: the device of the bench records (default: this machine's)")
    ap.add_argument("--k", type=int, default=5, help="plan: folds, when there is no folds file yet")
    ap.add_argument("--name", default=None, help="train: the model folder's name (default: the config's)")
    ap.add_argument("--force", action="store_true", help="start this model over if its run is incompatible")
    ap.add_argument("--steps", type=int, default=60, help="bench: timed steps per measurement (>= 50)")
    ap.add_argument("--images", type=int, default=None,
                    help="bench: train rows used (default: all on CUDA, 1024 on CPU)")
    ap.add_argument("--compile-too", action=argparse.BooleanOptionalAction, default=None,
                    help="bench: also time the in-memory step with the other compile setting (default: on CUDA)")
    a, overrides = ap.parse_known_args(argv)  # the rest are key=value config overrides
    if a.cmd == "options":
        print(options_text())
        return 0
    comp = Competition.of(a)
    spec, run = comp.spec, comp.run
    if a.cmd == "plan":
        return plan(a, comp, overrides)
    if a.model is None:
        raise UserError(f"{a.cmd} needs --model (MODEL=)")
    cfg = resolve(a.model, overrides, a.name)
    if "captions" in cfg.data_kind and not spec.caption_column:
        raise UserError(f"{spec.name} has no caption column: a model that reads captions cannot be trained for it")
    ds = comp.dataset()
    if a.cmd == "bench":
        from pipelines.bench import run_bench
        run_bench(spec, ds, run, cfg, steps=a.steps, n_images=a.images, compile_too=a.compile_too)
        return 0
    from pipelines.run import train_model
    quiet = int(os.environ.get("RANK", "0")) != 0
    if run.folds.exists() and not quiet:
        from pipelines.plan import warn_if_over
        warn_if_over(spec, ds, run, cfg, folds_k(run, ds, a.k))
    train_model(spec, ds, run, cfg, force=a.force, log=(lambda *_: None) if quiet else print)
    return 0


def folds_k(run: RunLayout, ds, default: int) -> int:
    if not run.folds.exists():
        return default
    from folds.split import read_folds
    return int(read_folds(run.folds, list(ds.train["id"])).max()) + 1


def plan(a, comp: Competition, overrides) -> int:
    from pipelines.bench import this_device
    from pipelines.plan import make_plan, print_plan
    spec, run, ds = comp.spec, comp.run, comp.dataset(check=False)
    device = a.device or this_device()
    estimates, left, spent = make_plan(spec, ds, run, folds_k(run, ds, a.k), a.models.split(",") if a.models else None,
                                       device, overrides)
    print_plan(spec, ds, estimates, left, spent, device)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
