"""`make export`: a submission's model as one self-contained folder that `make predict` runs on new images.

runs/<COMP>/bundles/<submission stem>/
  bundle.json       members (kind, config, weight files), blend (method, weights), thresholds, min-labels rule,
                    label tokens, the submission format, the scores; format version
  spec.yaml         the competition spec (how test.csv and the images are read)
  members/<name>/   each member's inference weights, exactly those the budget counted (fold models or the refit,
                    fp16 safetensors; captions: .npz arrays), a shared frozen part (a sentence encoder) once
  blend.npz         a stacked blend's per-label logistic regressions (coefficients, intercepts, constants), or
  blend.skops       its per-label gradient-boosted trees or its MLP (skops: builds only the types it is told to trust)
  wheel/            the project's own wheel, for `pip install --no-deps` on an offline machine
  manifest.json     sha256 and bytes of every file, total MB, versions, git commit
  SHA256SUMS        every file's sha256 (coreutils format), manifest.json included; its own sha256 is the
                    bundle's digest, printed by `make export` and checked by `make predict DIGEST=`
Nothing is pickled: JSON, safetensors, npz and skops. Members the blend gives weight 0 are left out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bundle.manifest import FORMAT, SUMS, digest, write_manifest
from competition.artifacts import atomic_path, exclusive_lock, read_json, write_json
from competition.errors import UserError
from competition.layout import RunLayout
from folds.split import read_folds
from submissions.blend import PerLabel, StackBlend, fit_blends
from submissions.members import Member, load_members
from submissions.scoring import Scoring

ROOT = Path(__file__).resolve().parents[1]


def latest_submission(run: RunLayout) -> Path:
    subs = sorted(run.submissions.glob("*.csv"), key=lambda p: p.stat().st_mtime) if run.submissions.is_dir() else []
    if not subs:
        raise UserError(f"{run.submissions}: no submission to export; run `make submit` first")
    return subs[-1]


def member_files(m: Member, use_full: bool) -> tuple[list[Path], list[Path]]:
    """(the weight files inference runs, shared parts) of a member: its refit or every fold model."""
    fits = [m.meta.full["weights"]] if use_full else [m.meta.fold_weights(f) for f in range(m.meta.k)]
    return [m.dir / w for w in fits], [m.dir / s for s in m.meta.shared_weights]


def copy_member(m: Member, use_full: bool, out: Path) -> dict:
    """Copy one member's inference files into `out`; its record for bundle.json."""
    weights, shared = member_files(m, use_full)
    (out / "members" / m.name).mkdir(parents=True, exist_ok=True)
    names = []
    for i, path in enumerate(weights):
        name = f"members/{m.name}/{'refit' if use_full else f'fold{i}'}{path.suffix}"
        shutil.copyfile(path, out / name)
        names.append(name)
    shared_names = []
    for path in shared:
        name = f"members/{m.name}/{path.name}"
        (shutil.copytree if path.is_dir() else shutil.copyfile)(path, out / name)
        shared_names.append(name)
    fits = [m.meta.full] if use_full else [m.meta.folds[f] for f in range(m.meta.k)]
    return {"name": m.name, "kind": m.meta.kind, "config": m.meta.config, "weights": names, "shared": shared_names,
            "uses": "refit" if use_full else f"{m.meta.k} fold models",
            # per weight file: what computed its cached trunk features (fits before the record: eager)
            "trunk_runtimes": [fit.get("trunk_runtime") or "eager" for fit in fits]}


def stack_arrays(blend: StackBlend) -> dict[str, np.ndarray]:
    """A stacked blend's final per-label logistic regressions as arrays: what `apply` needs on new rows."""
    models = blend.final.models
    width = max((m.coef_.shape[1] for m in models if not isinstance(m, float)), default=0)
    coef = np.stack([np.zeros(width) if isinstance(m, float) else m.coef_[0] for m in models])
    intercept = np.array([0.0 if isinstance(m, float) else m.intercept_[0] for m in models])
    constant = np.array([m if isinstance(m, float) else np.nan for m in models])
    return {"coef": coef, "intercept": intercept, "constant": constant}


def write_stacker(blend: StackBlend, folder: Path) -> str:
    """The final second-level learner of a stacked blend, written without pickle: logistic regressions as arrays
    (blend.npz); trees and the MLP, which arrays cannot hold, with skops (blend.skops), whose loader builds only
    the types `bundle.predict.SKOPS_TRUSTED` names. Its file name."""
    if blend.learner == "stack":
        np.savez(folder / "blend.npz", **stack_arrays(blend))
        return "blend.npz"
    import skops.io
    final = blend.final
    if isinstance(final, PerLabel):
        state = {"models": [None if isinstance(m, float) else m for m in final.models],
                 "constant": np.array([m if isinstance(m, float) else np.nan for m in final.models])}
    else:  # MultiOutputMLP: one network for every label, constants for labels with one class
        constant = np.full(len(final.net.classes_), np.nan)
        constant[list(final.constant)] = list(final.constant.values())
        state = {"net": final.net, "constant": constant}
    skops.io.dump(state, folder / "blend.skops")
    return "blend.skops"


def refit_blend(spec, ds, run: RunLayout, members: list[Member], side: dict):
    """The submission's blend, fitted again on the same OOF rows (deterministic): its weights must be the
    sidecar's, or the run changed since the submission."""
    method = side["blend"]["method"]
    sc = Scoring.of(spec, ds.targets(), read_folds(run.folds, list(ds.train["id"])))
    fitted = fit_blends([m.oof for m in members], sc, (method,))[method]
    weights = None if fitted.blend.weights is None else [float(w) for w in fitted.blend.weights]
    if weights is not None and not np.allclose(weights, side["blend"]["weights"], atol=1e-9):
        raise UserError(f"the {method} blend fitted again gives weights {weights}, the submission's were "
                        f"{side['blend']['weights']}: its members changed since; run `make submit` again")
    return method, weights, fitted.blend


SIDECAR_KEYS = ("members", "blend", "thresholds", "metric", "oof_score", "nested_score", "size_mb")


def read_sidecar(submission: Path) -> dict:
    """The JSON `make submit` writes beside its CSV: what the bundle is made of."""
    path = submission.with_suffix(".json")
    side = read_json(path, "it is written by `make submit` beside its CSV")
    if not isinstance(side, dict) or any(k not in side for k in SIDECAR_KEYS):
        raise UserError(f"{path}: not the record `make submit` writes beside a submission (SUBMISSION= names a "
                        "CSV under runs/<COMP>/submissions/, not a `make predict` output)")
    return side


def without_zero_weights(members: list[Member], weights: list[float] | None):
    """A member the blend weighs 0 changes no probability: neither shipped nor counted nor run."""
    if weights is None:
        return members, weights
    keep = [i for i, w in enumerate(weights) if w > 0]
    return [members[i] for i in keep], [weights[i] for i in keep]


def export_bundle(spec, ds, run: RunLayout, submission: Path | None, ignore_budget: bool = False,
                  log=print) -> Path:
    """Write the bundle of `submission` (default: the latest) and return its folder. A bundle of the same name
    is replaced: it may hold another fit of the same submission's members."""
    submission = Path(submission) if submission else latest_submission(run)
    side = read_sidecar(submission)
    names = [m["name"] for m in side["members"]]
    use_full = {m["name"]: m["uses"] == "full-data refit" for m in side["members"]}
    members = load_members(spec, ds, run, names, log=lambda *_: None)
    method, weights, blend = refit_blend(spec, ds, run, members, side)
    members, weights = without_zero_weights(members, weights)
    out = run.bundles / submission.stem
    with exclusive_lock(run.bundles / f".{submission.stem}.lock"), atomic_path(out) as tmp:
        tmp.unlink()
        tmp.mkdir()
        records = [copy_member(m, use_full[m.name], tmp) for m in members]
        shutil.copyfile(spec.source, tmp / "spec.yaml")
        stacker = write_stacker(blend, tmp) if method.startswith("stack") else None
        write_json(tmp / "bundle.json", {
            "format": FORMAT, "competition": spec.name, "submission": submission.name, "tokens": spec.tokens,
            "members": records, "blend": {"method": method, "weights": weights, "file": stacker},
            "thresholds": [side["thresholds"][t] for t in spec.tokens], "min_labels": spec.min_labels_per_image,
            "metric": side["metric"], "scores": {"oof": side["oof_score"], "nested": side["nested_score"]}})
        build_wheel(tmp / "wheel")
        manifest = write_manifest(tmp, side)
        check_budget(spec, manifest["total_mb"], side, ignore_budget)
        replaced = set_aside(out)
    if replaced:
        shutil.rmtree(replaced, ignore_errors=True)
    log(f"bundle: {out} ({manifest['total_mb']:.1f} MB read by make predict, {len(manifest['files'])} files"
        f"{', replaced the earlier export' if replaced else ''})")
    log(f"bundle digest (sha256 of {SUMS}): {digest(out)}\n  check it anywhere: sha256sum {SUMS} (this digest), "
        f"then sha256sum -c {SUMS}; make predict DIGEST=<digest> refuses any other bundle")
    return out


def set_aside(out: Path) -> Path | None:
    """Move an existing bundle out of the way, so the new one can be renamed in (a folder cannot be renamed over
    a full one); the caller deletes it after the rename. A kill in between leaves the old one beside, unused."""
    if not out.exists():
        return None
    aside = out.with_name(f".{out.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(out, aside)
    return aside


def build_wheel(folder: Path) -> None:
    """The project's own wheel, so an offline machine installs the code that made the bundle."""
    folder.mkdir()
    scratch = ROOT / "build"  # setuptools' scratch folder: removed only when this build made it
    existed = scratch.exists()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(folder), str(ROOT)], capture_output=True, text=True)
    if not existed:
        shutil.rmtree(scratch, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip wheel failed: {r.stderr[-2000:]}")


def check_budget(spec, total_mb: float, side: dict, ignore: bool) -> None:
    """The budget is the bundle: its model files' bytes, measured, against the spec's limit."""
    limit = spec.budget["model_mb"]
    if limit is not None and total_mb > limit + 1e-9 and not ignore:
        raise UserError(f"the bundle's model files (every file `make predict` reads: members, blend, settings) weigh "
                        f"{total_mb:.1f} MB, over the {limit} MB budget (the submission counted "
                        f"{side['size_mb']:.1f} MB of member weights); IGNORE_BUDGET=1 exports anyway")
