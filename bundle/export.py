"""`make export`: a submission's model as one self-contained folder that `make predict` runs on new images.

runs/<COMP>/bundles/<submission stem>/
  bundle.json       members (kind, weight files, refit or folds, each image network's inference record), blend
                    (method, weights), thresholds in the order of the label tokens, the tokens, the submission,
                    the scores; format version
  spec.yaml         the competition spec (how test.csv and the images are read; the min-labels rule)
  members/<name>/   each member's inference weights, exactly those the budget counted (fold models or the refit,
                    fp16 safetensors; captions: .npz arrays)
  shared/<sha256>/  the frozen parts members need beside their fits (a sentence encoder), once per content: two
                    captions members with the same encoder share one copy, and the budget counts it once
  blend.npz         a stacked blend's saved second level, copied from beside the submission (submissions.blend_file):
  blend.skops       per-label logistic regressions as arrays, or its trees or MLP (skops, a trust list); no refit
  wheel/            the project's own wheel, for `pip install --no-deps` on an offline machine
  manifest.json     sha256 and bytes of every file, total MB, versions, git commit
  SHA256SUMS        every file's sha256 (coreutils format), manifest.json included; its own sha256 is the
                    bundle's digest, printed by `make export` and checked by `make predict DIGEST=`
Nothing is pickled: JSON, safetensors, npz and skops. Members the blend gives weight 0 are left out.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bundle.manifest import FORMAT, SUMS, digest, write_manifest
from bundle.record import BlendRecord, BundleRecord, MemberRecord, Scores
from competition.artifacts import atomic_path, exclusive_lock, write_json, write_text
from competition.errors import UserError
from competition.layout import RunLayout
from pipelines.inference import fit_record
from submissions.blend_file import MEAN_METHODS
from submissions.members import Member, load_members, part_sha256
from submissions.sidecar import Sidecar

ROOT = Path(__file__).resolve().parents[1]


def latest_submission(run: RunLayout) -> Path:
    subs = sorted(run.submissions.glob("*.csv"), key=lambda p: p.stat().st_mtime) if run.submissions.is_dir() else []
    if not subs:
        raise UserError(f"{run.submissions}: no submission to export; run `make submit` first")
    return subs[-1]


def member_files(m: Member, use_full: bool) -> tuple[list[Path], list[Path]]:
    """(the weight files inference runs, shared parts) of a member: its refit or every fold model."""
    fits = [m.meta.full.weights] if use_full else [m.meta.fold_weights(f) for f in range(m.meta.k)]
    return [m.dir / w for w in fits], [m.dir / s for s in m.meta.shared_weights]


def copy_member(m: Member, use_full: bool, out: Path) -> MemberRecord:
    """Copy one member's inference files into `out`; its record for bundle.json."""
    weights, shared = member_files(m, use_full)
    (out / "members" / m.name).mkdir(parents=True, exist_ok=True)
    names = []
    for i, path in enumerate(weights):
        name = f"members/{m.name}/{'refit' if use_full else f'fold{i}'}{path.suffix}"
        shutil.copyfile(path, out / name)
        names.append(name)
    shared_names = []
    for path in shared:  # named by content alone: members with the same encoder bytes name the same one copy
        name = f"shared/{part_sha256(path)[:16]}{'' if path.is_dir() else path.suffix}"
        if not (out / name).exists():
            (out / "shared").mkdir(exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copyfile)(path, out / name)
        shared_names.append(name)
    inference = ()
    if m.meta.kind == "image":  # per weight file, how it predicts: its fit's record, checked here
        fits = {"refit": m.meta.full} if use_full else {f"fold {f}": m.meta.folds[f] for f in range(m.meta.k)}
        inference = tuple(fit_record(info, f"{m.dir} {fit}") for fit, info in fits.items())
    return MemberRecord(m.name, m.meta.kind, tuple(names), tuple(shared_names), use_full,
                        "refit" if use_full else f"{m.meta.k} fold models", inference)


def saved_blend(submission: Path, side: Sidecar) -> Path | None:
    """The blend's saved form `make submit` wrote beside the submission (a stacker's second level), or None."""
    method, name = side.blend.method, side.blend.file
    if method in MEAN_METHODS:  # a mean blend is its weights (in the sidecar)
        return None
    path = submission.with_name(name) if name else None
    if path is None or not path.is_file():
        raise UserError(f"{submission}: its {method} blend's saved second level "
                        f"({path.name if path else 'none recorded'}) is not beside it; run `make submit` again")
    return path


def check_unchanged(members: list[Member], side: Sidecar) -> None:
    """The members as the submission used them: a member retrained since (another OOF) is another model."""
    recorded = {m.name: m.oof_sha256 for m in side.members}
    changed = [m.name for m in members if recorded.get(m.name) != m.oof_sha256]
    if changed:
        raise UserError(f"members changed since the submission was made (their OOF differs): {', '.join(changed)}; "
                        "run `make submit` again")


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
    side = Sidecar.read(submission)
    names = [m.name for m in side.members]
    use_full = {m.name: m.refit for m in side.members}
    members = load_members(spec, ds, run, names, log=lambda *_: None)
    check_unchanged(members, side)
    method, stacker = side.blend.method, saved_blend(submission, side)
    members, weights = without_zero_weights(members, side.blend.weights)
    out = run.bundles / submission.stem
    with exclusive_lock(run.bundles / f".{submission.stem}.lock"), atomic_path(out) as tmp:
        tmp.unlink()
        tmp.mkdir()
        records = [copy_member(m, use_full[m.name], tmp) for m in members]
        if spec.labels_file is None:
            shutil.copyfile(spec.source, tmp / "spec.yaml")
        else:  # the labels it read, inlined: a bundle holds no data folder
            write_text(tmp / "spec.yaml", spec.inlined_yaml())
        blend_file = f"blend{stacker.suffixes[-1]}" if stacker else None  # blend.npz or blend.skops
        if stacker:
            shutil.copyfile(stacker, tmp / blend_file)
        record = BundleRecord(FORMAT, spec.name, submission.name, tuple(spec.tokens), tuple(records),
                              BlendRecord(method, None if weights is None else tuple(weights), blend_file),
                              tuple(side.thresholds[t] for t in spec.tokens), side.metric,
                              Scores(side.oof_score, side.nested_score))
        # Read back as make predict reads it: an export never ships a record that predict would refuse.
        write_json(tmp / "bundle.json", BundleRecord.from_json(record.to_json(), str(tmp / "bundle.json")).to_json())
        build_wheel(tmp / "wheel")
        manifest = write_manifest(tmp, {"oof": side.oof_score, "nested": side.nested_score, "metric": side.metric})
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


# Every file of the wheel is dated 1980-01-01 (zip's first date), so the same code builds the same bytes and two
# exports of one submission have one digest (wheel honours SOURCE_DATE_EPOCH; entries are written sorted).
WHEEL_EPOCH = 315532800


def build_wheel(folder: Path) -> None:
    """The project's own wheel, reproducible, so an offline machine installs the code that made the bundle."""
    folder.mkdir()
    scratch = ROOT / "build"  # setuptools' scratch folder: removed only when this build made it
    # One build at a time per checkout: two exports at once would share (and one remove) that scratch folder.
    with exclusive_lock(Path(tempfile.gettempdir()) / f"multilabel-wheel-{hashlib.sha1(bytes(ROOT)).hexdigest()[:12]}"):
        existed = scratch.exists()
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(folder), str(ROOT)], capture_output=True, text=True,
                           env={**os.environ, "SOURCE_DATE_EPOCH": str(WHEEL_EPOCH)})
        if not existed:
            shutil.rmtree(scratch, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip wheel failed: {r.stderr[-2000:]}")


def check_budget(spec, total_mb: float, side: Sidecar, ignore: bool) -> None:
    """The budget is the bundle: its model files' bytes, measured, against the spec's limit."""
    limit = spec.budget["model_mb"]
    if limit is not None and total_mb > limit + 1e-9 and not ignore:
        raise UserError(f"the bundle's model files (every file `make predict` reads: members, blend, settings) weigh "
                        f"{total_mb:.1f} MB, over the {limit} MB budget (the submission counted "
                        f"{side.size_mb:.1f} MB of member weights); IGNORE_BUDGET=1 exports anyway")
