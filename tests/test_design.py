"""The house's rules, checked: one-way imports, data identity computed once, the spec's rule everywhere."""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import load_dataset, load_spec
from competition.layout import RunLayout
from competition.metrics import decide, f1
from folds.split import write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions.submit import run_submit

from helpers import settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("competition", "folds", "pipelines", "submissions", "distill", "bundle", "demo")
QUIET = dict(log=lambda *_: None)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it, function bodies included)."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import module` imports the module (and runs pkg/__init__, which is no dependency)
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(paths)
                found |= subs if len(subs) == len(node.names) else subs | {node.module}
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = found
    return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


def test_no_import_cycles_and_the_blender_does_not_reach_into_training():
    graph = project_imports()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # The blender never trains; distill trains its students through the training stage's API alone
    # (pipelines.run.train_model), never its fold orchestration or loop.
    inner = ("pipelines.fits", "pipelines.train", "pipelines.data", "pipelines.augment")
    reach = {m: sorted(d for d in deps if d.startswith(("pipelines.run", *inner)))
             for m, deps in graph.items() if m.startswith("submissions")}
    reach |= {m: sorted(d for d in deps if d.startswith(inner)) for m, deps in graph.items() if m.startswith("distill")}
    assert not any(reach.values()), reach
    facades = [p for p in PACKAGES if "__getattr__" in (ROOT / p / "__init__.py").read_text()]
    assert not facades, f"a package facade hides imports from these rules: {facades}"


def test_lower_floors_never_import_higher_ones():
    floor = {p: i for i, p in enumerate(PACKAGES)}
    up = [(m, d) for m, deps in project_imports().items() for d in deps
          if floor[d.split(".")[0]] > floor[m.split(".")[0]]]
    assert not up, up


def test_no_function_longer_than_60_lines():
    long = []
    for pkg in (*PACKAGES, "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long


def test_image_files_are_hashed_once_per_command(demo_data, tmp_path, monkeypatch):
    """Training an image model on 3 folds with its refit, then submitting it, reads each image file's bytes
    for its identity once (it was 1 + 3 + 1 + 1 times: the run, every fold's cache, the refit, each member)."""
    from competition import identity
    calls = []
    real = identity.file_digest
    monkeypatch.setattr(identity, "file_digest", lambda path, image_id: (calls.append(path), real(path, image_id))[1])
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "fullfit=true"]), **QUIET)
    run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)
    assert len(calls) == len(ds.train) + len(ds.test) and len(set(calls)) == len(calls)


def spec_with(tmp_path, **changes):
    from competition.spec import SPEC_DIR
    text = (SPEC_DIR / "demo.yaml").read_text()
    for key, value in changes.items():
        text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines())
    path = tmp_path / "spec.yaml"
    path.write_text(text + "\n")
    return load_spec(str(path))


def test_a_spec_with_min_labels_2_submits(demo_data, tmp_path):
    """Defect: `exact` (min_labels 0 or 1 only) was offered for any micro-F1 spec, and raised mid-submit."""
    from submissions.validate import validate_frame
    spec = spec_with(tmp_path, min_labels_per_image=2)
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, trials=3), "test", **QUIET)
    side = json.loads(sub.path.with_suffix(".json").read_text())
    assert {r["method"] for r in side["threshold_comparison"]} == {"fixed", "global", "optuna"}
    frame = pd.read_csv(sub.path, dtype=str, keep_default_na=False)
    assert (frame["Labels"].str.split().str.len() >= 2).all()
    validate_frame(frame, spec, list(ds.test["id"]))
    from competition.errors import UserError
    with pytest.raises(UserError, match="'exact' does not apply to metric micro_f1 with min_labels_per_image 2"):
        run_submit(spec, ds, run, settings(spec, method="exact"), "test", **QUIET)


def test_early_stopping_decides_by_the_specs_rule(demo_data, tmp_path, monkeypatch):
    """Defect: validation during training decided with "at least one label" whatever the spec said, so on a
    min_labels 0 spec early stopping followed another score than the one the fold records. Predictions are
    pinned so that the two rules differ: every row's labels sit below 0.5 except one in every other row."""
    import pipelines.train as train
    real = train.predict

    def pinned(*args, **kw):
        prob = np.full_like(real(*args, **kw), 0.3)
        prob[::2, 0] = 0.7
        return prob
    monkeypatch.setattr(train, "predict", pinned)
    spec = spec_with(tmp_path, min_labels_per_image=0)
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=2", "folds=0", "tta=false"]), **QUIET)
    fold = run.model("tiny").fold(0)
    history, done = pd.read_csv(fold.history), json.loads(fold.done.read_text())
    val = np.nonzero(pd.read_csv(run.folds)["fold"].to_numpy() == 0)[0]
    y, prob = ds.targets()[val], np.full((len(val), len(spec.tokens)), 0.3)
    prob[::2, 0] = 0.7
    rule0, rule1 = f1(y, decide(prob, 0.5, 0)), f1(y, decide(prob, 0.5, 1))
    assert abs(rule0 - rule1) > 0.05  # the two rules disagree here, so the check below can fail
    assert done["val"]["micro_f1"] == pytest.approx(rule0)
    # every epoch's selection score, by the same rule
    assert history["micro_f1"].tolist() == pytest.approx([rule0] * len(history))


def test_prediction_loads_no_training_code():
    """`make predict` imports the model builder, readers and captions models (a tuned one's layers live with their
    per-fold fit in pipelines.caption_tuning, on torch alone), never the image training loop, the fold
    orchestration, the folds or the blender's fitting (an offline notebook needs none of their packages)."""
    import subprocess
    import sys
    code = ("import sys, bundle.predict; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pipelines', 'folds', 'submissions', 'distill', 'optuna', 'iterstrat', 'albumentations'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert loaded <= {"pipelines", "pipelines.captions", "pipelines.caption_tuning", "pipelines.inference",
                      "pipelines.model", "pipelines.text_encoder", "pipelines.weights", "pipelines.result",
                      "pipelines.runtime", "pipelines.preprocess", "submissions",
                      "submissions.validate", "submissions.blend_file"}, loaded


def test_every_stacked_blend_has_one_saved_form():
    """Every blend (submissions.blend.BLENDS, one class each) is applied through a saved form `make predict` reads
    without the fitting side (blend_file): a mean blend by its method (MeanForm's), a stacked one by its file."""
    from submissions.blend import BLENDS
    from submissions.blend_file import FORMS, MEAN_METHODS
    assert {n for n, b in BLENDS.items() if b.saved is None} == set(MEAN_METHODS)
    assert all(b.saved in FORMS.values() for b in BLENDS.values() if b.stacked or b.saved)
