"""`make demo`: the whole chain on the generated demo competition, on a CPU, in minutes."""
from __future__ import annotations

import time
from pathlib import Path

from competition import load_dataset, load_spec
from competition.demo_data import generate

# Two offline-ready backbones plus the captions member. On 2 CPU cores the backbones train
# their last stage on cached trunk features (train_from=6): 700 img/s at 128 px, where full
# fine-tuning at 64 px ran ~120 img/s and learned less in the same time.
DEMO_MODELS = {
    "tf_efficientnet_lite0": ["img_size=128", "epochs=8", "train_from=6"],
    "mobilenetv2_100": ["img_size=128", "epochs=8", "train_from=6"],
    "captions": [],
}
DEMO_K = 5


def run_demo(runs: Path, seed: int = 42) -> int:
    from folds.__main__ import main as folds_main
    from pipelines.config import resolve
    from pipelines.run import train_model
    from submissions.submit import run_submit

    t0 = time.time()
    spec = load_spec("demo")
    data = runs / "demo" / "data"
    if not (data / "train.csv").exists():
        generate(data, seed=seed)
        print(f"[{time.time() - t0:5.0f}s] demo data -> {data}")
    if not (runs / "demo" / "folds.csv").exists():
        folds_main(["--comp", "demo", "--data", str(data), "--runs", str(runs), "--k", str(DEMO_K),
                    "--seed", str(seed)])
    ds = load_dataset(spec, data)
    for name, overrides in DEMO_MODELS.items():
        train_model(spec, ds, runs, resolve(name, overrides))
        print(f"[{time.time() - t0:5.0f}s] trained {name}")
    comp_dir = runs / "demo"
    out, members, blends, blend_name, art, y = run_submit(spec, ds, comp_dir, "make demo", names=list(DEMO_MODELS),
                                                          trials=100, seed=seed)
    from submissions.report import make_report
    plots = make_report(spec, members, blends, blend_name, art, y, comp_dir / "report")
    import json
    side = json.loads(out.with_suffix(".json").read_text())
    print("\n==== demo summary ====")
    for m in side["members"]:
        print(f"member {m['name']:<24} OOF micro-F1 {m['oof_micro_f1_global_thr']:.4f} (best global threshold)")
    print(f"blend ({side['blend']['method']})".ljust(31) + f" OOF micro-F1 {side['blend']['oof_micro_f1_global_thr_chosen']:.4f} "
          "(best global threshold)")
    print(f"blend + {side['threshold_method']} thresholds: OOF micro-F1 {side['oof_micro_f1']:.4f}, "
          f"nested CV {side['nested_micro_f1']:.4f}")
    print(f"submission: {out}")
    print(f"plots: {comp_dir / 'report'} ({len(plots)} files), learning curves under {comp_dir / 'models'}")
    print(f"total {time.time() - t0:.0f}s")
    return 0
