"""`make export` -> `make predict`: a submission's model as one folder, and predictions from it alone."""
import json
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
    assert [m["name"] for m in bundle["members"]] == names and bundle["blend"]["method"] == blends[0]
    manifest = json.loads((moved / "manifest.json").read_text())
    assert any(name.startswith("wheel/") and name.endswith(".whl") for name in manifest["files"])
    side = json.loads(sub.path.with_suffix(".json").read_text())
    assert manifest["total_mb"] == pytest.approx(side["size_mb"], abs=0.01)  # the budget's MB are the bundle's


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
    _, folder = submit_and_export(trained, ["tiny", "captions"], ("weighted",))
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
    with pytest.raises(UserError, match="bundle format 99, this project reads format 1"):
        predict_bundle(broken, demo_data, tmp_path / "p.csv", **QUIET)


def test_bad_new_data_is_one_clear_error(trained, demo_data, tmp_path):
    """A test.csv without the captions a member needs; a missing image; an OUT of another bundle's."""
    _, folder = submit_and_export(trained, ["tiny", "captions"], ("weighted",))
    data = tmp_path / "new"
    shutil.copytree(demo_data, data)
    lines = (data / "test.csv").read_text().splitlines()
    (data / "test.csv").write_text("ImageID\n" + "".join(f"{line.split(',')[0]}\n" for line in lines[1:]))
    with pytest.raises(UserError, match="test.csv: no Caption column, and the model's captions member needs it"):
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
    spec, ds, _ = trained
    sub, folder = submit_and_export(trained, ["tiny", "tiny_asl", "captions"], ("weighted",))
    calls, built, real = [], [], predict.trunk_runner

    def counting(*args):
        run = real(*args)
        built.append(args[-1])
        return lambda x: calls.append(len(x)) or run(x)
    monkeypatch.setattr(predict, "trunk_runner", counting)
    assert predict_bundle(folder, demo_data, tmp_path / "p.csv", **QUIET).read_text() == sub.path.read_text()
    batches = -(-len(ds.test) // predict.BATCH)
    assert len(built) == 1 and len(calls) == batches * 2 and sum(calls) == 2 * len(ds.test)  # 2 views (flip TTA)
    bundle = json.loads((folder / "bundle.json").read_text())
    trained = {r for m in bundle["members"] if m["kind"] == "image" for r in m["trunk_runtimes"]}
    assert trained == set(built) == {resolve_runtime("auto", torch.device("cpu"))}  # as its features were made


def test_a_skops_stacker_builds_only_the_trusted_types(tmp_path):
    """blend.skops is loaded with a fixed list of trusted types: a file holding another one is refused by name."""
    import skops.io
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    from bundle.predict import stacker_probs
    path = tmp_path / "blend.skops"
    skops.io.dump({"net": SGDOptimizer([], 0.1), "constant": [0.0]}, path)
    with pytest.raises(UserError, match=r"blend.skops: holds types .*SGDOptimizer"):
        stacker_probs(path, [[0.0]])


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
