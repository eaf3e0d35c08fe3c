import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition import UserError, load_dataset, load_spec
from competition.images import load_resized, rgb_image
from competition.layout import RunLayout
from competition.reader import encode


def spec():
    return load_spec("comp5329")


def decoded(path):
    """The image as the cache gets it before resizing: full size, so shapes and values can be checked."""
    with Image.open(path) as im:
        return np.asarray(rgb_image(im))


def test_spec_labels_are_strings_in_order():
    s = spec()
    assert s.tokens == [str(i) for i in range(1, 20) if i != 12]
    assert s.labels["1"] == "person" and s.labels["19"] == "horse"
    assert s.budget == {"model_mb": 100, "gpu_hours": 24}


def test_unknown_spec_lists_valid_names():
    with pytest.raises(UserError, match="comp5329.*demo|demo.*comp5329"):
        load_spec("nope")


def test_run_folder_paths_are_named_in_the_layout_only():
    """Writers and readers of an artifact must agree on its path: only competition/layout.py spells them."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    # A path is built from a literal that starts with the name; prose in docstrings and messages may mention it.
    files = (r'f?"(folds\.csv|folds_report|oof\.csv|meta\.json|run\.json|done\.json|state\.pt|history\.csv|'
             r'config\.yaml|test_fold|test_full|best\.safetensors|model\.npz|thresholds-|optuna\.db|learning_curves\.png)'
             r'|f"(images_|trunk_)')
    folders = r'/ f?"(models|cache|submissions|report|eda|thresholds|full|fold\{f\})"'
    names = re.compile(f"{files}|{folders}")
    offenders = []
    for path in sorted(root.glob("*/*.py")):
        if path.parts[-2] in ("tests", ".venv") or path.name == "layout.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if names.search(line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_unknown_spec_key_fails(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ndata: d\nlabels: {a: A}\ncolour: red\n")
    with pytest.raises(UserError, match="unknown keys.*colour"):
        load_spec(str(p))


def test_tag_word_labels_need_no_code(tmp_path):
    p = tmp_path / "planet.yaml"
    p.write_text("name: planet\ndata: d\nid_pattern: '(train|test)_\\d+'\n"
                 "labels: {clear: clear, primary: primary, road: road}\n")
    (tmp_path / "train.csv").write_text("ImageID,Labels\ntrain_0,clear primary\ntrain_1,road\n")
    (tmp_path / "test.csv").write_text("ImageID\ntest_0\n")
    ds = load_dataset(load_spec(str(p)), tmp_path)
    assert ds.targets().tolist() == [[1, 1, 0], [0, 0, 1]]


def test_reader_survives_quotes_and_newlines(quirks):
    ds = load_dataset(spec(), quirks)
    assert len(ds.train) == 8 and len(ds.test) == 3
    cap = dict(zip(ds.train["id"], ds.train["caption"]))
    assert cap["3.jpg"] == 'A man surfing with titling that reads "spray."'
    assert cap["5.jpg"] == "A store\n\n\nfull of very tidily arranged piles of jeans, and tops."
    assert cap["6.jpg"] == 'A dog, a frisbee and "quoted" words.'  # proper CSV escaping is undone
    assert cap["7.jpg"] == 'A fire hydrant that reads " Make Love To Iraq " .'
    labels = dict(zip(ds.train["id"], ds.train["labels"]))
    assert labels["2.jpg"] == ("3", "8", "13")  # spec order, whatever the file's order
    assert ds.test["caption"].tolist()[1] == 'Two lines\nof caption with "quotes".'
    assert not ds.has_images  # captions only is valid


def write(tmp_path, train_rows, test_rows=('30000.jpg,"t"',)):
    (tmp_path / "train.csv").write_text("ImageID,Labels,Caption\n" + "\n".join(train_rows) + "\n")
    (tmp_path / "test.csv").write_text("ImageID,Caption\n" + "\n".join(test_rows) + "\n")
    return tmp_path


def test_duplicate_ids_listed(tmp_path):
    write(tmp_path, ['0.jpg,1,"a"', '1.jpg,2,"b"', '0.jpg,3,"c"'])
    with pytest.raises(UserError, match=r"train.csv: 2 duplicate ids:\n  line 2: 0.jpg\n  line 4: 0.jpg"):
        load_dataset(spec(), tmp_path)


def test_unknown_labels_listed_with_rows(tmp_path):
    write(tmp_path, ['0.jpg,1 12,"a"', '1.jpg,2,"b"', '2.jpg,25 3,"c"'])
    with pytest.raises(UserError) as e:
        load_dataset(spec(), tmp_path)
    msg = str(e.value)
    assert "train.csv: 2 rows with unknown label tokens" in msg
    assert "line 2 (0.jpg): '12'" in msg and "line 4 (2.jpg): '25'" in msg


def test_empty_label_cell(tmp_path):
    write(tmp_path, ['0.jpg,1,"a"', '1.jpg,,"b"'])
    with pytest.raises(UserError, match=r"1 rows with an empty label cell:\n  line 3 \(1.jpg\)"):
        load_dataset(spec(), tmp_path)


def test_many_offenders_are_counted(tmp_path):
    write(tmp_path, [f'{i}.jpg,99,"x"' for i in range(30)])
    with pytest.raises(UserError, match=r"30 rows with unknown label tokens.*\.\.\. and 10 more"):
        try:
            load_dataset(spec(), tmp_path)
        except UserError as e:
            assert str(e).count("line ") == 20
            raise UserError(str(e).replace("\n", " ")) from None


def test_missing_and_undecodable_images(demo_copy):
    (demo_copy / "data" / "1.jpg").unlink()
    (demo_copy / "data" / "2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError) as e:
        load_dataset(load_spec("demo"), demo_copy)
    msg = str(e.value)
    assert "2 images missing or unreadable" in msg
    assert "train id 1.jpg: missing file" in msg and "train id 2.jpg: cannot read image" in msg


def test_image_modes_decode_to_rgb(tmp_path):
    """Every mode decodes to the RGB pixels PIL's own conversion gives (lossless files, compared exactly)."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    cases = {  # file: (what is saved, the RGB it must decode to)
        "gray.png": (base.convert("L"), np.repeat(np.asarray(base.convert("L"))[..., None], 3, axis=2)),
        "rgba.png": (base.convert("RGBA"), np.asarray(base)),  # opaque: the same pixels
        "palette.png": (base.convert("P"), np.asarray(base.convert("P").convert("RGB"))),
        "cmyk.tif": (base.convert("CMYK"), np.asarray(base.convert("CMYK").convert("RGB"))),
    }
    for name, (im, _) in cases.items():
        im.save(tmp_path / name)
    base.save(tmp_path / "png_named.jpg", format="PNG")
    cases["png_named.jpg"] = (None, np.asarray(base))
    for name, (_, want) in cases.items():
        arr = decoded(tmp_path / name)
        assert arr.dtype == np.uint8 and np.array_equal(arr, want), name
    assert np.abs(decoded(tmp_path / "gray.png").astype(int) - np.asarray(base).astype(int)).max() > 20  # a real change
    assert load_resized(tmp_path / "cmyk.tif", 16).shape == (16, 16, 3)
    # Transparent pixels become white; half-transparent ones blend towards white.
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    clear.putpixel((0, 0), (255, 0, 0, 255))
    clear.save(tmp_path / "clear.png")
    out = decoded(tmp_path / "clear.png")
    assert out[0, 0].tolist() == [255, 0, 0] and (out.reshape(-1, 3)[1:] == 255).all()


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])  # np.rot90 turns: +1 = anticlockwise
def test_exif_orientation_applied(tmp_path, orientation, turn):
    """An asymmetric image with an EXIF orientation decodes upright: the pixels of the stored image, turned as
    the tag says (6: 90 degrees clockwise on display)."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:5, :10] = (255, 0, 0)   # top-left: red
    stored[-5:, :3] = (0, 255, 0)   # bottom-left: green
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    assert np.array_equal(decoded(tmp_path / "rot.png"), np.rot90(stored, k=turn))


def test_multi_hot_in_spec_order():
    y = encode([("1", "19"), ("3",)], spec().tokens)
    assert y.shape == (2, 18) and y[0, 0] == 1 and y[0, 17] == 1 and y[1, 2] == 1 and y.sum() == 3


def test_real_files_quirk_counts_if_present():
    """Only where the shared competition files exist beside the checkout (developers' machines)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "comp5329-6k"
    if not root.exists():
        pytest.skip("shared data set not present")
    ds = load_dataset(spec(), root, check=False)
    assert (len(ds.train), len(ds.test)) == (6000, 1000)


@pytest.mark.parametrize("size", [16, 40, 128])
def test_demo_data_renders_at_any_size(tmp_path, size):
    from competition.demo_data import render
    assert np.asarray(render(0, ["1", "3", "19"], size)).shape == (size, size, 3)


def test_demo_data_statistics_and_format(demo_data):
    from competition.demo_data import sample_labels
    rng = np.random.default_rng(0)
    sets = [sample_labels(rng) for _ in range(4000)]
    person = np.mean(["1" in s for s in sets])
    per_image = np.mean([len(s) for s in sets])
    assert 0.72 < person < 0.80 and 1.35 < per_image < 1.75
    ds = load_dataset(load_spec("demo"), demo_data)  # the COMP5329 reader takes it, quirks included
    assert len(ds.train) == 90 and len(ds.test) == 24 and ds.has_images


def captions_only(tmp_path, train_rows, test_rows):
    """A COMP5329-format data set without images, written as raw text (so every quirk survives)."""
    (tmp_path / "train.csv").write_text("ImageID,Labels,Caption\n" + "".join(r + "\n" for r in train_rows))
    (tmp_path / "test.csv").write_text("ImageID,Caption\n" + "".join(r + "\n" for r in test_rows))
    return tmp_path


def test_record_ids_any_case_and_spacing(tmp_path):
    data = captions_only(tmp_path, ["0.jpg,1,a man", "1.jpg,2 3,a bike"],
                         ["30000.jpg,a cat", "30005.JPG,a dog", " 30006.jpg,a bus", "30007.jpg ,a car",
                          '"30008.jpg",a boat'])
    ds = load_dataset(spec(), data)
    assert ds.test.id.tolist() == ["30000.jpg", "30005.JPG", "30006.jpg", "30007.jpg", "30008.jpg"]
    assert ds.test.caption.tolist() == ["a cat", "a dog", "a bus", "a car", "a boat"]


def test_line_that_looks_like_a_record_is_never_glued_into_a_caption(tmp_path):
    data = captions_only(tmp_path, ["0.jpg,1,a man", "1.jpg,2,a bike"],
                         ["30000.jpg,a cat", "5,a horse", '30001.jpg,"a quoted caption that goes on', "",
                          'over two lines"', "30002.jpg,an unquoted caption", "cannot go on"])
    with pytest.raises(UserError, match=r"(?s)test.csv: 2 lines that are neither a record.*nor the continuation "
                                        r"of an open quoted caption.*line 3: '5,a horse'.*line 8: 'cannot go on'"):
        load_dataset(spec(), data)


def test_a_row_whose_id_has_a_space_is_an_error_not_caption_text(tmp_path):
    """`30005 .jpg,"A people..."` after a closed caption: a scorer counts it as a row, so the reader may not glue
    it onto the caption before it (it did: 19 predictions for 20 rows, and make validate said valid)."""
    from submissions.validate import raw_ids
    rows = ['30004.jpg,"A man on a horse."', '30005 .jpg,"A people on a bus."', '30006.jpg,"Two dogs."']
    data = captions_only(tmp_path, ["0.jpg,1,a man"], rows)
    with pytest.raises(UserError, match=r"""(?s)test.csv: 1 lines that are neither.*line 3: '30005 .jpg,"A people"""):
        load_dataset(spec(), data)
    assert raw_ids(data / "test.csv") == ["30004.jpg", "30005 .jpg", "30006.jpg"]  # make validate counts 3 rows
    ok = captions_only(tmp_path, ["0.jpg,1,a man"], ['30004.jpg,"A store', "", "", 'full of jeans."', "",
                                                      '30006.jpg,"A sign that reads "stop"."'])
    captions = load_dataset(spec(), ok).test.caption.tolist()
    assert captions == ["A store\n\n\nfull of jeans.", 'A sign that reads "stop".']
    assert raw_ids(ok / "test.csv") == ["30004.jpg", "30006.jpg"]


def test_files_without_records_fail_at_load(tmp_path):
    data = captions_only(tmp_path, ["0.jpg,1,a man"], [])
    with pytest.raises(UserError, match="test.csv: no records after the header"):
        load_dataset(spec(), data)
    data = captions_only(tmp_path, [], ["30000.jpg,a cat"])
    with pytest.raises(UserError, match="train.csv: no records after the header"):
        load_dataset(spec(), data)


def test_encodings(tmp_path):
    data = captions_only(tmp_path, ["0.jpg,1,a man", "1.jpg,2,a bike"], ["30000.jpg,a cat"])
    text = (data / "train.csv").read_text()
    (data / "train.csv").write_bytes(text.encode("utf-16"))  # with a BOM: unambiguous, read as is
    assert load_dataset(spec(), data).train.caption.tolist() == ["a man", "a bike"]
    (data / "train.csv").write_bytes(text.replace("a bike", "a caf\xe9").encode("latin-1"))
    with pytest.raises(UserError, match=r"train.csv: line 3 is not UTF-8 \(byte b'\\xe9'"):
        load_dataset(spec(), data)


def test_16_bit_png_keeps_its_range(tmp_path):
    values = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # PIL mode I;16
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = decoded(tmp_path / "deep.png")[..., 0]
    assert gray.tolist() == [[0, 128], [255, 64]]


@pytest.fixture(scope="module")
def label_files_data(tmp_path_factory):
    """The tiny demo competition in the label-folder layout."""
    from competition.demo_data import generate
    out = tmp_path_factory.mktemp("label_files") / "data"
    generate(out, n_train=60, n_test=12, size=32, seed=5, workers=1, spec=load_spec("demo_label_files"))
    return out


def test_label_files_read_like_the_csv_layout(label_files_data):
    spec = load_spec("demo_label_files")
    ds = load_dataset(spec, label_files_data)
    assert len(ds.train) == 60 and len(ds.test) == 12 and list(ds.train["id"][:3]) == ["0.jpg", "1.jpg", "2.jpg"]
    y = ds.targets()
    assert (y.sum(1) == 0).sum() >= 5  # images without labels are train rows too
    listed = (label_files_data / "labels" / "3.txt").read_text().split()
    assert sorted(ds.train["id"][y[:, spec.tokens.index("3")] == 1]) == sorted(listed)


def broken_copy(src, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "labels" / "7.txt").unlink(), "label files missing.*7.txt"),
    (lambda d: (d / "labels" / "3.txt").write_text("0.jpg\n1.jpg\n0.jpg\n"),
     "more than once.*3.txt line 3: '0.jpg' \\(also line 1\\)"),
    (lambda d: (d / "labels" / "3.txt").write_text("0.jpg\n999.jpg\n"), "no train image.*3.txt line 2: '999.jpg'"),
    (lambda d: (d / "labels" / "3.txt").write_text("30000.jpg\n"), "test images.*3.txt line 1: '30000.jpg'"),
    (lambda d: (d / "labels" / "12.txt").write_text("0.jpg\n"), "labels the spec does not have.*12.txt"),
])
def test_label_files_errors_name_file_and_line(label_files_data, tmp_path, breakage, message):
    data = broken_copy(label_files_data, tmp_path)
    breakage(data)
    with pytest.raises(UserError, match=f"(?s){message}"):
        load_dataset(load_spec("demo_label_files"), data)


def test_label_files_chain_folds_train_submit(label_files_data, tmp_path):
    from folds.split import write_folds
    from pipelines.config import resolve
    from pipelines.run import train_model
    from submissions.submit import run_submit
    from submissions.validate import validate_frame
    spec = load_spec("demo_label_files")
    ds, run = load_dataset(spec, label_files_data), RunLayout.of(tmp_path, spec.name)
    write_folds(run, ds, spec, 3, 0, False)
    train_model(spec, ds, run, resolve("tiny", ["epochs=1"]), log=lambda *_: None)
    from helpers import settings
    path = run_submit(spec, ds, run, settings(spec, method="fixed", trials=5), "test", log=lambda *_: None).path
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == [spec.id_column, spec.label_column] and list(frame["ImageID"]) == list(ds.test["id"])
    validate_frame(frame, spec, list(ds.test["id"]))
