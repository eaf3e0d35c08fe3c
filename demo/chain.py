"""`make demo`: the whole chain on the generated demo competition, on a CPU, in minutes.
Each stage is called through its API, as a user's own script would."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from bundle.export import export_bundle
from bundle.predict import predict_bundle
from competition import load_dataset, load_spec
from competition.demo_data import generate
from competition.layout import RunLayout
from distill.student import run_distill
from folds.split import write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions.blend import DEFAULT_BLENDS
from submissions.budget import Budget
from submissions.cam import cam_panels
from submissions.postprocess import Settings
from submissions.report import make_report
from submissions.submit import Submission, run_submit

# An offline-ready backbone plus the captions member, then a student of the same backbone. On 2 CPU
# cores the backbone trains its last stage on cached trunk features (train_from=6): 700 img/s at
# 128 px, where full fine-tuning at 64 px ran ~120 img/s and learned less in the same time. A second
# backbone (mobilenetv2_100, OOF 0.670) cost 140 s and got weight 0 in the weighted blend beside the student.
DEMO_MODELS = {
    "tf_efficientnet_lite0": ["img_size=128", "epochs=8", "train_from=6", "lr=1e-3", "loss=bce",
                              "select_metric=micro_f1"],
    "captions": [],
}
DEMO_K = 5
# The one-model answer to the size budget: lite0 again, on the blended ensemble's probabilities.
DEMO_STUDENT = "tf_efficientnet_lite0"


def run_demo(runs: Path, seed: int = 42) -> int:
    t0 = time.time()
    spec = load_spec("demo")
    run = RunLayout.of(runs, spec.name)
    if not (run.demo_data / "train.csv").exists():
        generate(run.demo_data, seed=seed)
        print(f"[{time.time() - t0:5.0f}s] demo data -> {run.demo_data}")
    ds = load_dataset(spec, run.demo_data)
    if not run.folds.exists():
        folds = write_folds(run, ds, spec, DEMO_K, seed)
        print(folds.report + f"wrote {folds.path} ({folds.rows} rows, {folds.k} folds)")
    for name, overrides in DEMO_MODELS.items():
        train_model(spec, ds, run, resolve(name, overrides))
        print(f"[{time.time() - t0:5.0f}s] trained {name}")
    run_distill(spec, ds, run, resolve(DEMO_STUDENT, DEMO_MODELS[DEMO_STUDENT]), teacher=list(DEMO_MODELS))
    print(f"[{time.time() - t0:5.0f}s] distilled {DEMO_STUDENT}-student")
    names = [*DEMO_MODELS, f"{DEMO_STUDENT}-student"]
    settings = Settings(Budget.of(spec), method=None, trials=100, seed=seed, blends=DEFAULT_BLENDS)
    sub = run_submit(spec, ds, run, settings, "make demo", names=names)
    plots = (make_report(spec, sub.ensemble, sub.thresholds, run.report)
             + cam_panels(spec, ds, sub.ensemble, sub.thresholds, run.report_cam))
    folder = export_bundle(spec, ds, run, sub.path)
    predicted = predict_bundle(folder, run.demo_data, run.predictions / f"{folder.name}.csv")
    mine, theirs = (pd.read_csv(p, dtype=str, keep_default_na=False) for p in (predicted, sub.path))
    agree = int((mine.to_numpy() == theirs.to_numpy()).all(axis=1).sum())
    rest = "" if agree == len(theirs) else " (the rest: float rounding near a threshold)"
    print(f"[{time.time() - t0:5.0f}s] bundle {folder.name}: {agree} of {len(theirs)} predicted rows equal the "
          f"submission's{rest}")
    summarize(sub, run, len(plots), time.time() - t0)
    return 0


def summarize(sub: Submission, run: RunLayout, n_plots: int, seconds: float) -> None:
    ens, art, metric = sub.ensemble, sub.thresholds, sub.ensemble.scoring.metric
    print("\n==== demo summary ====")
    for name, score in ens.member_scores.items():
        print(f"member {name:<24} OOF {metric} {score:.4f} (best global threshold)")
    print(f"blend ({ens.blend_name})".ljust(31) + f" OOF {metric} {ens.blend.score:.4f} (best global threshold)")
    print(f"blend + {art.method} thresholds: OOF {metric} {art.oof_score:.4f}, thresholds nested "
          f"{art.nested_score:.4f}, fully nested {sub.nested.score:.4f}")
    for st in ens.students:
        print(f"student {st['name']}: OOF {metric} {st['oof_score_global_thr']:.4f}, {st['size_mb']:.1f} MB; "
              f"its teacher: {st['teacher_oof_score_global_thr']:.4f}, {st['teacher_mb']:.1f} MB")
    print(f"submission: {sub.path}")
    print(f"plots: {run.report} ({n_plots} files, Grad-CAM panels in {run.report_cam.name}/), "
          f"learning curves under {run.models}")
    print(f"total {seconds:.0f}s")
