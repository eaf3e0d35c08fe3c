"""python -m pipelines {train,bench} --model NAME [key=value ...]: train every fold of one model, or benchmark it."""
from __future__ import annotations

import argparse
import os

from competition import UserError, load_dataset, load_spec
from competition.layout import RunLayout
from pipelines.config import available_configs, resolve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    ap.add_argument("cmd", choices=["train", "bench"])
    ap.add_argument("--comp", default="demo")
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--model", required=True, help=f"one of {', '.join(available_configs())} or a YAML path")
    ap.add_argument("--force", action="store_true", help="start this model over if its run is incompatible")
    ap.add_argument("--steps", type=int, default=60, help="bench: timed steps per measurement (>= 50)")
    ap.add_argument("--images", type=int, default=None, help="bench: train rows used (default: all on CUDA, 1024 on CPU)")
    ap.add_argument("--compile-too", action=argparse.BooleanOptionalAction, default=None,
                    help="bench: also time the in-memory step with the other compile setting (default: on CUDA)")
    a, overrides = ap.parse_known_args(argv)  # the rest are key=value config overrides
    cfg = resolve(a.model, overrides)
    spec = load_spec(a.comp)
    if cfg["kind"] == "captions" and not spec.caption_column:
        raise UserError(f"{spec.name} has no caption column: a captions model cannot be trained for it")
    ds = load_dataset(spec, a.data)
    if a.cmd == "bench":
        from pipelines.bench import run_bench
        run_bench(spec, ds, RunLayout.of(a.runs, spec.name), cfg, steps=a.steps, n_images=a.images,
                  compile_too=a.compile_too)
        return 0
    from pipelines.run import train_model
    quiet = int(os.environ.get("RANK", "0")) != 0
    train_model(spec, ds, RunLayout.of(a.runs, spec.name), cfg, force=a.force,
                log=(lambda *_: None) if quiet else print)
    return 0


if __name__ == "__main__":
    from competition.cli import run
    run(main)
