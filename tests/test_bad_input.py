"""Bad input, round two: each crafted case ends in one clear error naming the file, row or value at fault, or
in a correct result; nothing good is lost. Every test here failed on the code before these checks (said per test)."""
import errno
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from competition import load_dataset, load_spec
from competition.artifacts import atomic_path, read_json, write_json, write_text
from competition.errors import UserError
from competition.layout import RunLayout
from folds.split import read_folds, write_folds
from pipelines.config import resolve
from pipelines.run import train_model
from submissions.blend import BLENDS, DEFAULT_BLENDS
from submissions.submit import run_submit

from helpers import settings

QUIET = dict(log=lambda *_: None)


def one_line_error(main, argv, capsys) -> str:
    """What the command line prints for `main(argv)`: exit code 2 and one `error:` line, no traceback."""
    from competition.cli import run
    with pytest.raises(SystemExit) as e:
        run(lambda: main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def captions_run(data, tmp_path, k=3, names=("captions",)):
    """A run of captions members (seconds each): the stage APIs, as `make folds` and `make train` call them."""
    spec = load_spec("demo")
    ds, run = load_dataset(spec, data), RunLayout.of(tmp_path / "runs", spec.name)
    write_folds(run, ds, spec, k, 0)
    for i, name in enumerate(names):
        train_model(spec, ds, run, resolve("captions", ["min_df=1", f"C={4.0 / (i + 1)}"], name), **QUIET)
    return spec, ds, run


@pytest.fixture(scope="module")
def submitted(demo_data, tmp_path_factory):
    """One captions run (3 folds) and its submission, copied by each test that breaks something."""
    spec, ds, run = captions_run(demo_data, tmp_path_factory.mktemp("captions"))
    run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)
    return spec, ds, run


def copy_of(submitted, tmp_path):
    spec, ds, run = submitted
    shutil.copytree(run.root, tmp_path / "runs" / spec.name)
    return spec, ds, RunLayout.of(tmp_path / "runs", spec.name)


# 0. `make submit` on a 2-fold run crashed in the stacked blend (ValueError: zero-size array) inside the
#    fully nested estimate; every blend, with 2 and 3 folds, now submits, and 10 folds with the default ones.
@pytest.mark.parametrize("k, blends", [(2, BLENDS), (3, BLENDS), (10, DEFAULT_BLENDS)])
def test_submit_any_k_with_every_blend(demo_data, tmp_path, k, blends):
    spec, ds, run = captions_run(demo_data, tmp_path, k, names=("captions", "captions_c2"))
    lines = []
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2, blends=blends), "test",
                     log=lines.append)
    # every blend but the rank blend, which only a ranking metric (AUC, mAP) tries
    assert sub.path.exists() and set(sub.ensemble.blends) == {b for b in blends if not BLENDS[b].ranks}
    assert len(sub.nested.per_fold) == k
    said_skip = any("2 folds" in line and "stack" in line and "skipped there" in line for line in lines)
    assert said_skip == (k == 2)


# 1, 2, 8. Numeric settings out of range reached timm (AssertionError), data.py (ZeroDivisionError) or torch
#          (ValueError) as tracebacks; now they fail in the config, before any work, naming key and range.
@pytest.mark.parametrize("override, message", [
    ("epochs=0", "epochs=0; expected >= 1"), ("batch_size=0", "batch_size=0; expected >= 1"),
    ("lr=-1", "lr=-1.0; expected > 0"), ("lr=0", "lr=0.0; expected > 0"), ("img_size=8", "img_size=8; expected >= 32"),
    ("weight_decay=-0.1", "expected >= 0"), ("ema_decay=1.0", r"ema_decay=1.0; expected in \(0, 1\)"),
    ("dropout=1.0", r"expected in \[0, 1\)"), ("patience=0", "patience=0; expected >= 1"),
    ("head_hidden=[64,0]", r"head_hidden=\[64, 0\]; expected >= 1"), ("max_train_batches=0", "expected >= 1"),
    ("min_lr=0.1", "min_lr=0.1 is above lr"),
])
def test_numeric_settings_have_ranges(override, message):
    with pytest.raises(UserError, match=message):
        resolve("tiny", [override])


@pytest.mark.parametrize("override, message", [("C=0", r"C=0.0; expected > 0"), ("ngram_max=0", "expected >= 1"),
                                               ("min_df=0", "expected >= 1")])
def test_captions_settings_have_ranges(override, message):
    with pytest.raises(UserError, match=message):
        resolve("captions", [override])


def test_make_train_with_epochs_zero_is_one_line(demo_data, tmp_path, capsys):
    from pipelines.__main__ import main
    err = one_line_error(main, ["train", "--comp", "demo", "--data", str(demo_data), "--runs", str(tmp_path),
                                "--model", "tiny", "epochs=0"], capsys)
    assert "epochs=0; expected >= 1" in err and not (tmp_path / "demo" / "models").exists()


# 8. A run that failed before its first epoch pinned its config: the corrected command was refused
#    ("config differs ... FORCE=1") although nothing had been trained.
def test_a_run_that_trained_nothing_does_not_pin_its_config(demo_data, tmp_path, monkeypatch):
    import pipelines.images
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0)

    def diverges(*args, **kw):
        raise FloatingPointError("loss is nan")  # stands in for any failure before the first epoch ends
    monkeypatch.setattr(pipelines.images, "fit", diverges)
    with pytest.raises(FloatingPointError):
        train_model(spec, ds, run, resolve("tiny", ["epochs=1", "lr=0.5"]), **QUIET)
    assert run.model("tiny").run.exists()
    monkeypatch.undo()
    lines = []
    train_model(spec, ds, run, resolve("tiny", ["epochs=1", "lr=0.003"]), log=lines.append)
    assert any("nothing was trained under the old settings" in line for line in lines)
    assert read_json(run.model("tiny").run)["config"]["lr"] == 0.003
    with pytest.raises(UserError, match="config differs: lr 0.003 -> 0.5"):  # now something was trained
        train_model(spec, ds, run, resolve("tiny", ["epochs=1", "lr=0.5"]), **QUIET)


# 3. TRIALS=0 reached Optuna ("ValueError: Record does not exist").
@pytest.mark.parametrize("cmd, trials", [("submit", "0"), ("thresholds", "-4")])
def test_trials_below_one_is_one_line(demo_data, tmp_path, capsys, cmd, trials):
    from submissions.__main__ import main
    err = one_line_error(main, [cmd, "--comp", "demo", "--data", str(demo_data), "--runs", str(tmp_path),
                                "--method", "optuna", "--trials", trials], capsys)
    assert f"TRIALS={trials}" in err


def test_optuna_search_refuses_zero_trials():
    from submissions.scoring import Scoring
    from submissions.thresholds import optuna_per_label
    with pytest.raises(UserError, match="TRIALS=0"):
        optuna_per_label(Scoring(np.eye(4, 3), np.zeros(4), "micro_f1", 1), np.random.default_rng(0).random((4, 3)),
                         0, 0)


def test_negative_budget_is_refused():
    from submissions.budget import Budget
    with pytest.raises(UserError, match="BUDGET_MB=-1"):
        Budget.of(load_spec("demo"), model_mb=-1)


# 4. A deleted test_fold1.csv ended `make submit` in a FileNotFoundError traceback, and `make train` said
#    "done, skipped" for every fold and never rebuilt it.
def test_a_fold_with_a_missing_file_is_trained_again(submitted, tmp_path):
    spec, ds, run = copy_of(submitted, tmp_path)
    model = run.model("captions")
    kept = model.test_fold(1).read_bytes()
    model.test_fold(1).unlink()
    with pytest.raises(UserError, match=r"test_fold1.csv: file not found; .*make train MODEL=captions"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)
    lines = []
    train_model(spec, ds, run, resolve("captions", ["min_df=1", "C=4.0"]), log=lines.append)
    assert any("test_fold1.csv missing: training it again" in line for line in lines)
    assert any("fold 0: done, skipped" in line for line in lines)
    assert model.test_fold(1).read_bytes() == kept  # the same fit again (captions are deterministic)
    run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)


# 5. A fold value of 7 in a 3-fold file was accepted: an empty fold 3 was trained, crashed in scikit-learn and
#    left fold3/ and test_fold3.csv behind.
@pytest.mark.parametrize("value, message", [
    ("7", r"rows with a fold outside 0..3 .*unused: \[3, 4, 5, 6\].*line 5: \S+ fold 7"),
    ("-1", r"fold outside 0..3.*line 5: \S+ fold -1"),
    ("x", r"not a whole number.*line 5: \S+ fold 'x'"),
    ("1.5", r"not a whole number.*line 5"),
])
def test_folds_file_values_are_checked(demo_data, tmp_path, value, message):
    spec = load_spec("demo")
    ds, run = load_dataset(spec, demo_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0)
    lines = run.folds.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + "," + value
    run.folds.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"(?s){message}"):
        train_model(spec, ds, run, resolve("captions", ["min_df=1"]), **QUIET)
    assert not run.model("captions").dir.exists()


def test_folds_file_with_one_fold_or_duplicates(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("ImageID,fold\na,0\nb,0\n")
    with pytest.raises(UserError, match="every row is in fold 0"):
        read_folds(path, ["a", "b"])
    path.write_text("ImageID,fold\na,0\nb,1\na,1\n")
    with pytest.raises(UserError, match="(?s)listed more than once.*line 2: a.*line 4: a"):
        read_folds(path, ["a", "b"])


# 6. A lone \r, \x0b, \x0c, \x1c-\x1e, \x85, U+2028 or U+2029 in a caption shifted every later line number
#    (str.splitlines() breaks at them); the reader now counts the file's own \n lines, as grep -n does.
@pytest.mark.parametrize("odd", ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_line_numbers_are_the_files_own(tmp_path, odd):
    spec = load_spec("demo")
    train = ("ImageID,Labels,Caption\n" f'0.jpg,1,"a man{odd}on a horse"\n' '1.jpg,3,"a car"\n'
             '2.jpg,99,"a bus"\n')
    (tmp_path / "train.csv").write_text(train, newline="")
    (tmp_path / "test.csv").write_text('ImageID,Caption\n30000.jpg,"t"\n')
    assert [n for n, line in enumerate(train.split("\n"), 1) if line.startswith("2.jpg")] == [4]
    with pytest.raises(UserError, match=r"line 4 \(2.jpg\): '99'"):
        load_dataset(spec, tmp_path)
    (tmp_path / "train.csv").write_text(train.replace(",99,", ",1,"), newline="")
    ds = load_dataset(spec, tmp_path)
    assert ds.train["caption"][0] == f"a man{odd}on a horse" and list(ds.train["line"]) == [2, 3, 4]


def test_crlf_files_keep_their_line_numbers(tmp_path):
    (tmp_path / "train.csv").write_bytes(b'ImageID,Labels,Caption\r\n0.jpg,1,"a"\r\n1.jpg,99,"b"\r\n')
    (tmp_path / "test.csv").write_bytes(b'ImageID,Caption\r\n30000.jpg,"t"\r\n')
    with pytest.raises(UserError, match=r"line 3 \(1.jpg\): '99'"):
        load_dataset(load_spec("demo"), tmp_path)


# 7. MODEL=/path/missing.yaml was a FileNotFoundError traceback; a YAML syntax error named <unicode string>.
def test_missing_and_broken_yaml_name_the_file(tmp_path, capsys):
    with pytest.raises(UserError, match="missing.yaml: model config not found"):
        resolve(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: resnet18\nlr: [0.1\nepochs: 3\n")
    with pytest.raises(UserError, match=r"broken.yaml: line \d+ column \d+: not valid YAML"):
        resolve(str(broken))
    with pytest.raises(UserError, match="broken.yaml: line .*not valid YAML"):
        load_spec(str(broken))
    with pytest.raises(UserError, match="nope.yaml: competition spec not found"):
        load_spec(str(tmp_path / "nope.yaml"))
    from pipelines.__main__ import main
    err = one_line_error(main, ["train", "--model", str(broken)], capsys)
    assert "broken.yaml" in err and "<unicode string>" not in err


# 9. A hand-truncated thresholds or nested-estimate JSON was a JSONDecodeError traceback naming no file.
@pytest.mark.parametrize("artifact", ["thresholds", "nested", "meta"])
def test_truncated_artifacts_name_the_file_and_the_fix(submitted, tmp_path, artifact):
    spec, ds, run = copy_of(submitted, tmp_path)
    path = {"thresholds": lambda: next(run.thresholds.glob("thresholds-*.json")),
            "nested": lambda: next(run.nested_file("x").parent.glob("nested-*.json")),
            "meta": lambda: run.model("captions").meta}[artifact]()
    path.write_text(path.read_text()[:40])
    fix = {"thresholds": "tunes them again", "nested": "fully nested estimate again",
           "meta": "make train MODEL=captions` writes it again"}[artifact]
    with pytest.raises(UserError, match=f"{path.name}: not valid JSON .*{fix}"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)


@pytest.mark.parametrize("edit, problem", [
    (lambda a: a["thresholds"].pop(next(iter(a["thresholds"]))), r"thresholds\['\w+'\]=None \(expected a finite"),
    (lambda a: a["comparison"][0].update(nested="high"), r"comparison\[0\]\.nested='high'"),
    (lambda a: a.update(method=None), r"method=None \(expected a string"),
])
def test_an_edited_thresholds_artifact_is_refused_by_field(submitted, tmp_path, edit, problem):
    """A thresholds artifact is a typed record: read back equal, and an edited one is one error naming the field,
    never a KeyError deep in the submission."""
    from submissions.thresholds import ThresholdsRecord
    spec, ds, run = copy_of(submitted, tmp_path)
    path = next(run.thresholds.glob("thresholds-*.json"))
    art = json.loads(path.read_text())
    assert ThresholdsRecord.from_json(art, path).to_json() == art
    edit(art)
    path.write_text(json.dumps(art))
    with pytest.raises(UserError, match=rf"{path.name}: not a thresholds record \(.*{problem}.*tunes them again"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)


def test_an_edited_nested_estimate_is_refused_by_field(submitted, tmp_path):
    """The fully nested estimate is a typed record: read back equal; an edited one is one error naming the field."""
    from submissions.postprocess import NestedEstimate
    spec, ds, run = copy_of(submitted, tmp_path)
    path = next(run.nested_file("x").parent.glob("nested-*.json"))
    data = json.loads(path.read_text())
    assert NestedEstimate.from_json(data, path).to_json() == data
    data["per_fold"][1]["score"] = "0.9"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{path.name}: not a fully nested estimate \(per_fold\[1\]\.score='0.9'"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)


def test_broken_probability_csv_is_named(submitted, tmp_path):
    spec, ds, run = copy_of(submitted, tmp_path)
    run.model("captions").oof.write_bytes(b"\x00\xff garbage \xfe")
    with pytest.raises(UserError, match="oof.csv: cannot be read as CSV"):
        run_submit(spec, ds, run, settings(spec, method="fixed"), "test", **QUIET)


# 10. A read-only RUNS folder and a full disk were OSError tracebacks (the full disk named no file).
@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_full_disk_or_read_only_folder_is_one_line_and_keeps_the_old_file(tmp_path, code, cause):
    path = tmp_path / "artifact.json"
    write_json(path, {"good": True})
    with pytest.raises(UserError, match=f"artifact.json: cannot write: {cause}.*nothing was replaced"):
        with atomic_path(path) as tmp:
            tmp.write_text('{"half')
            raise OSError(code, os.strerror(code))
    assert read_json(path) == {"good": True} and [p.name for p in tmp_path.iterdir()] == ["artifact.json"]


def test_read_only_folder_fails_before_writing(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="folds.csv: cannot write: permission denied"):
        write_text(tmp_path / "folds.csv", "x")


def test_storage_errors_elsewhere_are_one_line(capsys):
    from competition.cli import run

    def library_write():  # a library writing its own file, not through atomic_path
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/demo/thresholds/optuna.db")
    with pytest.raises(SystemExit) as e:
        run(library_write)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: /runs/demo/thresholds/optuna.db: cannot write: no space left")

    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")
    with pytest.raises(OSError):  # not the user's: keeps its traceback
        run(bug)


def test_an_atomic_write_survives_power_loss(tmp_path, monkeypatch):
    """Durability: the data reaches the disk before the rename, and the folder's entry after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    write_text(tmp_path / "a.txt", "data")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].startswith(str(tmp_path / ".a.txt.")) and events[2][1] == str(tmp_path)


# 11. `make validate` accepted a duplicated label ("1 1") and a tab between labels.
@pytest.mark.parametrize("cell, message", [("1 1", "label listed twice.*'1 1'"),
                                           ("1\t3", r"whitespace other than.*'1\\t3'"),
                                           ("1  3", "empty label between separators"),
                                           (" 1", "empty label between separators")])
def test_validate_refuses_what_a_strict_scorer_may_misread(cell, message):
    from submissions.validate import validate_frame
    spec = load_spec("demo")
    frame = pd.DataFrame({"ImageID": ["30000.jpg", "30001.jpg"], "Labels": ["2", cell]})
    with pytest.raises(UserError, match=f"(?s){message}"):
        validate_frame(frame, spec, ["30000.jpg", "30001.jpg"])


def test_validate_cli_says_invalid_for_a_tab(demo_data, tmp_path, capsys):
    from submissions.validate import main
    ids = [line.split(",")[0] for line in (demo_data / "test.csv").read_text().splitlines()[1:]]
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageID,Labels\n" + "".join(f"{i},1\t3\n" for i in ids))
    assert main([str(sub), "--comp", "demo", "--data", str(demo_data)]) == 1
    assert "whitespace other than the spec's label separator" in capsys.readouterr().err


# 12. Right after cloning, `make train` answered "runs/demo/data/test.csv: file not found".
def test_demo_data_not_generated_yet_says_how(tmp_path, capsys):
    from pipelines.__main__ import main
    err = one_line_error(main, ["train", "--comp", "demo", "--runs", str(tmp_path), "--data", str(tmp_path / "data"),
                                "--model", "resnext50"], capsys)
    assert "make demo-data" in err and "no data yet" in err
    with pytest.raises(UserError, match="make demo-data COMP=demo_voc"):
        load_dataset(load_spec("demo_voc"), tmp_path / "nothing")
    with pytest.raises(UserError, match="data folder not found; DATA= names"):
        load_dataset(load_spec("comp5329"), tmp_path / "nothing")


def test_spec_values_are_checked(tmp_path):
    from competition.spec import SPEC_DIR
    demo = (SPEC_DIR / "demo.yaml").read_text()
    for old, new, message in [("min_labels_per_image: 1", "min_labels_per_image: -1", "min_labels_per_image -1"),
                              ("model_mb: 100", "model_mb: -5", "budget {'model_mb': -5}"),
                              ("image_dir: data", "image_dir: data\nimage_file: '{}.jpg{}'", "image_file .* one {}"),
                              ("image_dir: data", "image_dir: data\nimage_file: 'x.jpg'", "image_file .* one {}")]:
        path = tmp_path / "spec.yaml"
        path.write_text(demo.replace(old, new))
        with pytest.raises(UserError, match=message):
            load_spec(str(path))


# PASCAL VOC 2007 layout.
@pytest.fixture(scope="module")
def voc_data(tmp_path_factory):
    from competition.demo_data import generate
    out = tmp_path_factory.mktemp("voc") / "data"
    generate(out, n_train=60, n_test=15, size=32, seed=7, workers=1, spec=load_spec("demo_voc"))
    return out


def voc_values(data, token, image_set="trainval"):
    text = (data / "ImageSets" / "Main" / f"{token}_{image_set}.txt").read_text()
    pairs = [line.split() for line in text.splitlines()]
    return {i: int(v) for i, v in pairs}


def test_voc_reads_like_the_other_layouts(voc_data, tmp_path):
    spec = load_spec("demo_voc")
    ds = load_dataset(spec, voc_data)
    assert len(ds.train) == 60 and len(ds.test) == 15 and ds.has_images
    assert ds.train["id"][0] == "000001.jpg" and (voc_data / "JPEGImages" / "000001.jpg").is_file()
    y = ds.targets()
    for j, token in enumerate(spec.tokens):
        values = voc_values(voc_data, token)
        assert [values[i[:-4]] != -1 for i in ds.train["id"]] == list(y[:, j] == 1)  # 0 (difficult) counts
    difficult = sum(v == 0 for t in spec.tokens for v in voc_values(voc_data, t).values())
    assert difficult > 0
    ignore = tmp_path / "ignore.yaml"
    ignore.write_text(spec_text("demo_voc").replace("voc_difficult: positive", "voc_difficult: ignore"))
    y_ignore = load_dataset(load_spec(str(ignore)), voc_data).targets()
    assert y.sum() - y_ignore.sum() == difficult


def spec_text(name):
    from competition.spec import SPEC_DIR
    return (SPEC_DIR / f"{name}.yaml").read_text()


def test_voc2007_spec_has_the_twenty_classes():
    spec = load_spec("voc2007")
    assert len(spec.tokens) == 20 and spec.tokens[0] == "aeroplane" and spec.format == "voc"
    assert spec.metric == "macro_ap" and spec.probabilities  # mAP, as VOC papers score classification


def edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("breakage, message", [
    (lambda m: (m / "7_trainval.txt").unlink(), "label files of the 'trainval' set missing.*7_trainval.txt"),
    (lambda m: edit(m / "3_trainval.txt", "000002 ", "000002 2 "), r"malformed.*3_trainval.txt line 2: '000002 2"),
    (lambda m: edit(m / "3_trainval.txt", "000002 ", "000002x "), "ids differ from 1_trainval.txt.*missing 000002"),
    (lambda m: edit(m / "3_trainval.txt", "000002 ", "000001 "), r"3_trainval.txt line 2: '000001.*also on line 1"),
    (lambda m: [edit(p, "000061 ", "000001 ") for p in m.glob("*test.txt")], "images in both.*000001"),
    (lambda m: (m / "12_trainval.txt").write_text("000001  1\n"), "labels the spec does not have.*12_trainval.txt"),
    (lambda m: shutil.rmtree(m), "label folder not found"),
])
def test_voc_errors_name_file_and_line(voc_data, tmp_path, breakage, message):
    data = tmp_path / "data"
    shutil.copytree(voc_data, data)
    breakage(data / "ImageSets" / "Main")
    with pytest.raises(UserError, match=f"(?s){message}"):
        load_dataset(load_spec("demo_voc"), data)


def test_voc_missing_image_is_named(voc_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(voc_data, data)
    (data / "JPEGImages" / "000004.jpg").unlink()
    with pytest.raises(UserError, match="train id 000004.jpg"):
        load_dataset(load_spec("demo_voc"), data)


def test_voc_chain_folds_train_submit_validate(voc_data, tmp_path):
    from submissions.validate import main as validate
    spec = load_spec("demo_voc")
    ds, run = load_dataset(spec, voc_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), **QUIET)
    sub = run_submit(spec, ds, run, settings(spec, method="global", trials=2), "test", **QUIET)
    path, ens = sub.path, sub.ensemble
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame["ImageID"]) == list(ds.test["id"]) and (frame["Labels"] != "").all()
    assert ens.scoring.metric == "macro_f1"
    assert validate([str(path), "--comp", "demo_voc", "--data", str(voc_data)]) == 0
    assert json.loads(path.with_suffix(".json").read_text())["metric"] == "macro_f1"
