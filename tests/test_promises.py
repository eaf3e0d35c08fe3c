"""README promises that no test used to check: the budget end to end, stale data of every kind, the min-labels
rule in submissions, Grad-CAM's fold discipline, captions-only data, `label_file_image`. In process, on one
shared trained run (copied where a test changes it)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from competition import load_dataset, load_spec
from competition.errors import UserError
from competition.layout import RunLayout
from competition.metrics import decide
from folds.split import write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions.submit import run_submit

from helpers import settings

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """tiny (3 folds and its refit) and captions, on the tiny demo."""
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path_factory.mktemp("promises"), spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "fullfit=true"]), **QUIET)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    return spec, ds, run


def copied(trained, tmp_path, data=None):
    spec, ds, run = trained
    shutil.copytree(run.root, tmp_path / "runs" / spec.name)
    return spec, ds if data is None else load_dataset(spec, data), RunLayout.of(tmp_path / "runs", spec.name)


def model_mb(run, name) -> tuple[float, float | None]:
    meta = json.loads(run.model(name).meta.read_text())
    folds = sum(meta["weights_mb_per_fold"].values()) + meta["shared_mb"]
    full = (run.model(name).dir / meta["full"]["weights"]).stat().st_size / 2**20 if meta["full"] else None
    return folds, full


def test_budget_end_to_end(trained, tmp_path):
    """BUDGET_MB between tiny's refit and its 3 fold models: tiny enters as its refit, and the blend's test rows
    are the refit's test probabilities; below the refit tiny is dropped; a GPU-hour budget drops the member whose
    training cost too much; a budget nothing fits is an error."""
    spec, ds, run = copied(trained, tmp_path)
    folds_mb, full_mb = model_mb(run, "tiny")
    captions_mb, _ = model_mb(run, "captions")
    assert full_mb < folds_mb / 2
    sub = run_submit(spec, ds, run, settings(spec, method="fixed", blends=("mean",), model_mb=(full_mb + folds_mb) / 2),
                     "test", ["tiny"], **QUIET)
    assert sub.ensemble.use_full == {"tiny": True}
    refit = pd.read_csv(run.model("tiny").test_full)[spec.tokens].to_numpy()
    folds = np.mean([pd.read_csv(run.model("tiny").test_fold(f))[spec.tokens].to_numpy() for f in range(3)], 0)
    np.testing.assert_allclose(sub.ensemble.blend.test, refit, atol=1e-9)  # the refit's, not the folds'
    assert np.abs(refit - folds).max() > 1e-3
    side = json.loads(sub.path.with_suffix(".json").read_text())
    assert side["size_mb"] == pytest.approx(full_mb, abs=1e-3) and side["budget"]["within"]
    assert side["members"][0]["uses"] == "full-data refit"
    sub = run_submit(spec, ds, run, settings(spec, method="fixed", model_mb=captions_mb + full_mb / 2), "test", **QUIET)
    assert [m.name for m in sub.ensemble.members] == ["captions"]
    meta_path = run.model("captions").meta
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | {"gpu_hours": 30.0}))
    sub = run_submit(spec, ds, run, settings(spec, method="fixed", model_mb=1000, gpu_hours=24), "test", **QUIET)
    assert [m.name for m in sub.ensemble.members] == ["tiny"]  # captions "cost" 30 GPU-hours: over 24
    with pytest.raises(UserError, match="no member fits the budget"):
        run_submit(spec, ds, run, settings(spec, method="fixed", model_mb=full_mb / 2), "test", **QUIET)


@pytest.mark.parametrize("change, stale", [
    ("caption", {"captions"}),   # a train caption edited: the captions model learnt from other text
    ("image", {"tiny"}),         # an image replaced: the image model saw other pixels
    ("test id", {"tiny", "captions"}),  # a test row dropped: both predicted other rows
])
def test_stale_data_is_refused(trained, demo_data, tmp_path, change, stale):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    if change == "caption":
        lines = (data / "train.csv").read_text().split("\n")
        lines[1] = lines[1].replace('"', '"an extra word, ', 1)
        (data / "train.csv").write_text("\n".join(lines))
    elif change == "image":
        first = pd.read_csv(data / "train.csv", usecols=[0])["ImageID"].iloc[0]
        shutil.copyfile(data / "data" / "30000.jpg", data / "data" / first)
    else:
        lines = (data / "test.csv").read_text().splitlines()
        (data / "test.csv").write_text("\n".join(lines[:-1]) + "\n")
    spec, ds, run = copied(trained, tmp_path, data)
    with pytest.raises(UserError, match="trained on other data") as e:
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)
    named = {line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]}
    assert named == stale
    with pytest.raises(UserError, match="the training data changed"):
        train_model(spec, ds, run, resolve(sorted(stale)[0] if sorted(stale)[0] == "captions" else "tiny",
                                           ["min_df=1"] if "captions" in stale else ["epochs=1", "fullfit=true"]),
                    **QUIET)


def test_min_labels_0_submissions_have_empty_rows(trained, tmp_path):
    """A spec whose images may carry no label: rows with nothing above its threshold stay empty."""
    from competition.spec import SPEC_DIR
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text((SPEC_DIR / "demo.yaml").read_text().replace("min_labels_per_image: 1",
                                                                      "min_labels_per_image: 0"))
    spec0 = load_spec(str(spec_path))
    _, ds, run = copied(trained, tmp_path)
    sub = run_submit(spec0, load_dataset(spec0, ds.root), run, settings(spec0, method="fixed", blends=("mean",)),
                     "test", **QUIET)
    frame = pd.read_csv(sub.path, dtype=str, keep_default_na=False)
    want = decide(sub.ensemble.blend.test, 0.5, 0)
    assert (frame["Labels"] == "").sum() == (want.sum(1) == 0).sum() > 0
    assert list(frame["Labels"]) == [" ".join(t for t, v in zip(spec0.tokens, row) if v) for row in want]


def test_grad_cam_explains_each_image_with_the_fold_model_that_never_saw_it(trained, tmp_path, monkeypatch):
    import submissions.cam as cam
    from submissions.submit import run_thresholds
    spec, ds, run = trained
    ens, thresholds = run_thresholds(spec, ds, run, settings(spec, method="fixed"), **QUIET)
    fold_of_net, loaded, calls = {}, [], []
    real_net, real_load, real_maps = cam.fold_net, cam.load_resized, cam.label_maps

    def net(member, fold):
        out = real_net(member, fold)
        fold_of_net[id(out[0])] = fold
        return out

    def load(path, size):
        loaded.append(path.name)  # the image each map is made of: label_maps follows its load_resized
        return real_load(path, size)
    monkeypatch.setattr(cam, "fold_net", net)
    monkeypatch.setattr(cam, "load_resized", load)
    monkeypatch.setattr(cam, "label_maps", lambda n, image, *a: (calls.append((fold_of_net[id(n)], loaded[-1])),
                                                                 real_maps(n, image, *a))[1])
    assert cam.cam_panels(spec, ds, ens, thresholds, tmp_path / "cam", per_label=2)
    fold = dict(zip(ds.train["id"], ens.scoring.fold))
    assert len(calls) > 10 and len(set(fold_of_net.values())) == 3
    assert all(net_fold == fold[name] for net_fold, name in calls)


def test_a_captions_only_data_set_submits(quirks, tmp_path):
    """No images at all: folds, the captions member and a validated submission."""
    from submissions.validate import validate_frame
    spec = load_spec("comp5329")
    ds, run = load_dataset(spec, quirks), RunLayout.of(tmp_path, spec.name)
    assert not ds.has_images
    write_folds(run, ds, spec, 2, 0)
    train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2), "test", **QUIET)
    frame = pd.read_csv(sub.path, dtype=str, keep_default_na=False)
    validate_frame(frame, spec, list(ds.test["id"]))
    with pytest.raises(UserError, match="no images; this stage needs them"):
        train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), **QUIET)


def test_label_file_image_names_the_file_a_listed_name_means(tmp_path):
    """Label files that list `7` for `im7.jpg` (`label_file_image: 'im{}.jpg'`), and the errors around it."""
    from competition.demo_data import generate
    from competition.spec import SPEC_DIR
    data = tmp_path / "data"
    generate(data, n_train=30, n_test=6, size=24, seed=1, workers=1, spec=load_spec("demo_label_files"))
    for image in (data / "data").iterdir():
        image.rename(image.with_name(f"im{image.name}"))
    for path in (data / "labels").glob("*.txt"):
        path.write_text("".join(f"{line.removesuffix('.jpg')}\n" for line in path.read_text().split()))
    test = (data / "test.csv").read_text().splitlines()
    (data / "test.csv").write_text("\n".join([test[0], *(f"im{i}" for i in test[1:])]) + "\n")
    text = (SPEC_DIR / "demo_label_files.yaml").read_text()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(text.replace("label_file_image: '{}'", "label_file_image: 'im{}.jpg'")
                         .replace(r"id_pattern: '\d+\.jpg'", r"id_pattern: 'im\d+\.jpg'"))
    spec = load_spec(str(spec_path))
    ds = load_dataset(spec, data)
    y = ds.targets()
    listed = (data / "labels" / "3.txt").read_text().split()
    assert sorted(ds.train["id"][y[:, spec.tokens.index("3")] == 1]) == sorted(f"im{n}.jpg" for n in listed)
    (data / "labels" / "3.txt").write_text("999\n")
    with pytest.raises(UserError, match=r"(?s)no train image.*3.txt line 1: '999'"):
        load_dataset(spec, data)
    spec_path.write_text(text.replace("label_file_image: '{}'", "label_file_image: 'im.jpg'"))
    with pytest.raises(UserError, match="needs a \\{\\} for the listed name"):
        load_spec(str(spec_path))
