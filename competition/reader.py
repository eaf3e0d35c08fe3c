"""Read a competition's raw train/test CSVs and validate them, reporting every offender at once.

The COMP5329 files are not valid CSV: some captions hold unescaped quotes and some span
several lines, so `pandas.read_csv` mis-parses them. Records are found instead by the line
that starts with an image id (the spec's `id_pattern`); the caption, the last column, is
everything after the other fields, up to the next record. A file whose header holds other columns besides the
spec's (Kaggle's one-hot and metadata files: ids, label columns, PatientID, ...) is standard CSV: it is read
with the csv module, by column name, the other columns ignored.
"""
from __future__ import annotations

import csv
import dataclasses
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from competition import identity
from competition.errors import UserError, offenders_error
from competition.images import Planes, header_problem
from competition.spec import Spec


def unquote(field: str) -> str:
    """Strip one pair of enclosing quotes; undo CSV's doubled quotes only if the field used them."""
    field = field.strip()
    if len(field) >= 2 and field[0] == field[-1] == '"':
        field = field[1:-1]
        if '"' in field and re.fullmatch(r'(?:[^"]|"")*', field):
            field = field.replace('""', '"')
    return field


def decode_text(path: Path) -> str:
    """UTF-8 (BOM or not) or UTF-16 with a BOM; anything else is named by file, line and byte."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 (byte {raw[e.start:e.start + 1]!r} at offset {e.start}); "
                        "save the file as UTF-8") from None


def file_lines(text: str) -> list[str]:
    """The file's own lines: split at "\n" only (and a CRLF's "\r"), so line numbers are those of `grep -n`.
    str.splitlines() also breaks at a lone "\r", "\x0b", "\x0c", "\x1c"-"\x1e", "\x85", U+2028 and U+2029,
    which real captions hold, and would shift every later line number."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it starts none
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# A field that looks like an image id whatever the spec says: one token with a digit ("30005.JPG", "5").
ID_LIKE = re.compile(r'^\s*"?\s*[^\s,"]*\d[^\s,"]*\s*"?\s*(?:,|$)')


def record_start(id_pattern: str) -> re.Pattern:
    """A line that starts a record: the id (any case, spaces or quotes around it), then a comma or the end."""
    return re.compile(rf'^\s*"?\s*(?:{id_pattern})\s*"?\s*(?:,|$)', re.IGNORECASE)


def continues(parts: list[str], line: str) -> bool:
    """Whether `line` can be part of the record whose lines are `parts`: a blank line, or any line while the
    record's quoted last field is still open (it started with a quote after a comma and nothing since ended with
    one). A CSV field spans lines only inside quotes: any other line is a row of its own, never caption text."""
    if not line.strip():
        return True
    return bool(re.search(r',\s*"', parts[0])) and not "\n".join(parts).rstrip().endswith('"')


def split_records(path: Path, lines: list[str], id_pattern: str) -> list[tuple[int, list[str]]]:
    """(line number, lines) per record. Continuation lines belong to the open quoted caption before them; a line
    that cannot continue one (the record before it is closed) or that looks like a record of its own is listed,
    never glued into a caption: a scorer counts it as a row."""
    starts = record_start(id_pattern)
    records: list[tuple[int, list[str]]] = []
    stray, unplaced, loose = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if starts.match(line):
            records.append((number, [line]))
        elif ID_LIKE.match(line):
            unplaced.append(f"line {number}: {line[:80]!r}")
        elif records and continues(records[-1][1], line):
            records[-1][1].append(line)
        elif not records:
            if line.strip():
                stray.append(f"line {number}: {line[:80]!r}")
        else:
            loose.append(f"line {number}: {line[:80]!r}")
    if stray:
        raise offenders_error(path, "lines before the first record that do not start with an id", stray)
    if unplaced or loose:
        raise offenders_error(path, f"lines that are neither a record whose id matches the spec's id_pattern "
                                    f"{id_pattern!r} nor the continuation of an open quoted caption (fix the id "
                                    "or the quotes, or the spec)", unplaced + loose)
    return records


def read_records(path: Path, id_pattern: str, columns: list[str], text: str | None = None) -> pd.DataFrame:
    """Split a file into records by id-led lines, so stray quotes and newlines stay inside a caption. `text`: the
    file already decoded."""
    if text is None and not path.is_file():
        raise UserError(f"{path}: file not found")
    lines = file_lines(decode_text(path) if text is None else text)
    if not lines:
        raise UserError(f"{path}: empty file")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    if header != columns:
        raise UserError(f"{path}: header {header} differs from the spec's columns {columns}")
    records = split_records(path, lines, id_pattern)
    if not records:
        raise UserError(f"{path}: no records after the header")
    rows = []
    for number, parts in records:
        text = "\n".join(parts).rstrip()
        fields = text.split(",", len(columns) - 1)
        if len(fields) < len(columns):
            fields += [""] * (len(columns) - len(fields))
        fields = [unquote(f) for f in fields]
        rows.append([fields[0].strip(), *fields[1:], number])
    return pd.DataFrame(rows, columns=columns + ["line"])


def read_columns(path: Path, spec: Spec, columns: list[str]) -> pd.DataFrame:
    """`columns` of every record of `path` (and each record's first line). A header that is exactly `columns` is
    read by id-led records (`read_records`: COMP5329's quirks); any other header must hold every one of them."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = decode_text(path)
    header = [h.strip() for h in next(csv.reader(file_lines(text)[:1]), [])]
    if header == columns or not header:
        return read_records(path, spec.id_pattern, columns, text)
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{path}: no column {', '.join(repr(c) for c in missing)} (its header: "
                        f"{', '.join(header[:30])}{' ...' if len(header) > 30 else ''}); the spec names it")
    at = [header.index(c) for c in columns]
    reader = csv.reader(text.splitlines(keepends=True)[1:])  # a quoted field keeps its newlines
    rows, short, start = [], [], 2
    for fields in reader:
        if fields and any(f.strip() for f in fields):
            if len(fields) != len(header):
                short.append(f"line {start}: {len(fields)} fields, the header has {len(header)}")
            else:
                rows.append([fields[i].strip() for i in at] + [start])
        start = reader.line_num + 2
    if short:
        raise offenders_error(path, "records whose field count differs from the header's", short)
    if not rows:
        raise UserError(f"{path}: no records after the header")
    frame = pd.DataFrame(rows, columns=columns + ["line"])
    odd = [f"line {n}: {i!r}" for n, i in zip(frame["line"], frame[columns[0]])
           if not re.fullmatch(spec.id_pattern, i)]
    if odd:
        raise offenders_error(path, f"ids that do not match id_pattern {spec.id_pattern!r}", odd)
    return frame


@dataclasses.dataclass
class Dataset:
    spec: Spec
    root: Path
    train: pd.DataFrame  # id, labels (tuple of tokens), caption?, line
    test: pd.DataFrame   # id, caption?, line
    has_images: bool
    _identity: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def images_key(self) -> str:
        """The images' identity (ids and content hashes), computed once: every file is read once per command."""
        self.require_images()
        if "images" not in self._identity:
            self._identity["images"] = identity.images_key(
                [("train", self.train["id"], self.image_paths(self.train)),
                 ("test", self.test["id"], self.image_paths(self.test, test=True))])
        return self._identity["images"]

    def fingerprint(self, kind: str) -> str:
        """What a model of `kind` (image | captions | image+captions: an image member that reads the captions too)
        learns from: ids, labels, test ids and its inputs."""
        if kind not in self._identity:
            parts = kind.split("+")
            inputs = ("".join("\n--captions--\n".join(f["caption"]) for f in (self.train, self.test))
                      if "captions" in parts else "") + (f"\n--images--{self.images_key}" if "image" in parts else "")
            self._identity[kind] = identity.fingerprint(self.train, self.test, inputs)
        return self._identity[kind]

    @property
    def image_root(self) -> Path:
        return self.root / self.spec.image_dir

    @property
    def test_image_root(self) -> Path:
        return self.root / self.spec.test_images

    def image_paths(self, frame: pd.DataFrame, test: bool = False) -> list[Path]:
        """The image files of `frame`'s ids: the train rows' (image_dir) or the test rows' (test_image_dir)."""
        return image_files(self.test_image_root if test else self.image_root, frame["id"], self.spec)

    def targets(self) -> np.ndarray:
        return encode(self.train["labels"], self.spec.tokens)

    def groups(self) -> np.ndarray | None:
        """Each train row's group (the spec's group_column: rows of one group stay in one fold), or None."""
        return self.train["group"].to_numpy() if "group" in self.train else None

    def require_images(self) -> None:
        if not self.has_images:
            raise UserError(f"{self.image_root}: no images; this stage needs them "
                            "(a captions-only data set works with caption models only)")


def encode(label_sets, tokens: list[str]) -> np.ndarray:
    """Multi-hot matrix, columns in spec token order."""
    index = {t: j for j, t in enumerate(tokens)}
    out = np.zeros((len(label_sets), len(tokens)), dtype=np.uint8)
    for i, labels in enumerate(label_sets):
        for t in labels:
            out[i, index[t]] = 1
    return out


def columns_of(spec: Spec, labelled: bool) -> list[str]:
    """The columns of train.csv (`labelled`) or test.csv that the spec reads, in the file's usual order."""
    labels = (spec.tokens if spec.label_format == "one_hot" else [spec.label_column]) if labelled else []
    cols = [spec.id_column, *labels] + ([spec.caption_column] if spec.caption_column else [])
    return cols + ([spec.group_column] if labelled and spec.group_column else [])


def tidy(frame: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    renames = {spec.id_column: "id", spec.label_column: "labels", spec.caption_column: "caption",
               spec.group_column: "group"}
    if spec.label_format == "one_hot":
        del renames[spec.label_column]
    return frame.rename(columns={k: v for k, v in renames.items() if k in frame})


def check_ids(frame: pd.DataFrame, path: Path) -> None:
    dup = frame[frame["id"].duplicated(keep=False)]
    if len(dup):
        raise offenders_error(path, "duplicate ids", [f"line {r.line}: {r.id}" for r in dup.itertuples()])
    empty = frame[frame["id"] == ""]
    if len(empty):
        raise offenders_error(path, "empty ids", [f"line {n}" for n in empty["line"]])


def parse_labels(frame: pd.DataFrame, spec: Spec, path: Path) -> pd.DataFrame:
    if spec.group_column:
        empty = [f"line {n} ({i})" for n, i, g in zip(frame["line"], frame["id"], frame["group"]) if not g]
        if empty:
            raise offenders_error(path, f"rows with an empty {spec.group_column} (group_column)", empty)
    if spec.label_format == "one_hot":
        return one_hot_labels(frame, spec, path)
    valid = set(spec.tokens)
    empty, unknown, parsed, beside = [], [], [], []
    for r in frame.itertuples():
        tokens = [t for t in r.labels.split(spec.label_separator.strip() or None) if t.strip()]
        tokens = [t.strip() for t in tokens]
        if spec.no_label is not None and spec.no_label in tokens:
            if len(tokens) > 1:
                beside.append(f"line {r.line} ({r.id}): {r.labels!r}")
            tokens = []
        elif not tokens:
            empty.append(f"line {r.line} ({r.id})")
        bad = [t for t in tokens if t not in valid]
        if bad:
            unknown.append(f"line {r.line} ({r.id}): {' '.join(repr(b) for b in bad)}")
        # Order in the file is arbitrary ("8 3 13"): keep spec order, drop repeats.
        parsed.append(tuple(t for t in spec.tokens if t in tokens))
    if beside:
        raise offenders_error(path, f"rows with {spec.no_label!r} (no_label: no label at all) beside labels", beside)
    if unknown:
        raise offenders_error(path, f"rows with unknown label tokens (valid: {' '.join(spec.tokens)})", unknown)
    if empty:
        raise offenders_error(path, "rows with an empty label cell" + (
            f" (a row without labels says {spec.no_label!r})" if spec.no_label else ""), empty)
    return frame.assign(labels=parsed)


def one_hot_labels(frame: pd.DataFrame, spec: Spec, path: Path) -> pd.DataFrame:
    """label_format one_hot: each label's column holds 0 or 1; a row's labels are the columns holding 1."""
    cells = frame[spec.tokens].to_numpy()
    bad = ~np.isin(cells, ["0", "1"])
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise offenders_error(path, "one-hot cells that are not 0 or 1", [
            f"line {frame['line'].iat[i]} ({frame['id'].iat[i]}): {spec.tokens[j]}={cells[i, j]!r}"
            for i, j in zip(rows, cols)])
    parsed = [tuple(t for t, v in zip(spec.tokens, row) if v == "1") for row in cells]
    return frame.drop(columns=spec.tokens).assign(labels=parsed)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def per_label_files(folder: Path, spec: Spec, suffix: str, which: str = "") -> dict[str, Path]:
    """token -> folder/<token><suffix>, one per label of the spec: a missing one, or one for a label the spec
    lacks, is named (label_files: "<token>.txt"; voc: "<token>_<set>.txt")."""
    files = {t: folder / f"{t}{suffix}" for t in spec.tokens}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise offenders_error(folder, f"label files{which} missing (one <token>{suffix} per label of the spec)",
                              missing)
    extra = sorted(p.name for p in folder.glob(f"*{suffix}") if p.name[:-len(suffix)] not in spec.labels)
    if extra:
        raise offenders_error(folder, f"files for labels the spec does not have (valid: {' '.join(spec.tokens)})",
                              extra)
    return files


def read_label_files(root: Path, spec: Spec, test_ids) -> pd.DataFrame:
    """Train rows from one <token>.txt per label listing the images that carry it (format: label_files).
    Train images are every image in the image folder that test.csv does not list; an image no file lists
    has no labels, which such data sets allow. Every offender is named by file and line."""
    folder, image_root = root / spec.labels_dir, root / spec.image_dir
    if not folder.is_dir():
        raise UserError(f"{folder}: label folder not found (the spec's format is label_files, labels_dir "
                        f"{spec.labels_dir!r})")
    if not image_root.is_dir():
        raise UserError(f"{image_root}: image folder not found; label_files data sets need their images")
    files = per_label_files(folder, spec, ".txt")
    test = set(test_ids)
    ids = sorted((p.name for p in image_root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in test),
                 key=lambda n: (len(n), n))  # 2.jpg before 10.jpg
    carried = {i: set() for i in ids}
    problems = {"listed more than once in the same file": [], "names of no train image (unknown, or not in "
                f"{image_root})": [], "test images (test.csv lists them: a label would leak)": []}
    dup, unknown, leak = problems.values()
    for token, path in files.items():
        first = {}
        for number, line in enumerate(file_lines(decode_text(path)), start=1):
            name = line.strip()
            if not name:
                continue
            image = spec.label_file_image.format(name)
            where = f"{path.name} line {number}: {name!r}"
            if image in first:
                dup.append(f"{where} (also line {first[image]})")
            elif image in test:
                leak.append(where)
            elif image not in carried:
                unknown.append(where)
            else:
                carried[image].add(token)
            first.setdefault(image, number)
    for what, found in problems.items():
        if found:
            raise offenders_error(folder, what, found)
    labels = [tuple(t for t in spec.tokens if t in carried[i]) for i in ids]
    return pd.DataFrame({"id": ids, "labels": labels, "line": 0})


VOC_VALUES = {"1": True, "-1": False, "0": None}  # None: "difficult", the spec's voc_difficult decides


def read_voc_set(folder: Path, spec: Spec, image_set: str) -> tuple[list[str], dict[str, set]]:
    """(ids in file order, id -> tokens) of one PASCAL VOC image set: one `<token>_<set>.txt` per label, each
    line `<id> <1|-1|0>`, every file listing the same ids. Offenders are named by file and line."""
    files = per_label_files(folder, spec, f"_{image_set}.txt", f" of the {image_set!r} set")
    order, carried, bad = None, {}, []
    for token, path in files.items():
        seen = {}
        for number, line in enumerate(file_lines(decode_text(path)), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path.name} line {number}: {line.strip()[:60]!r}"
            if len(fields) != 2 or fields[1] not in VOC_VALUES:
                bad.append(f"{where} (expected '<image id> <1|-1|0>')")
            elif fields[0] in seen:
                bad.append(f"{where} (id also on line {seen[fields[0]]})")
            else:
                seen[fields[0]] = number
                value = VOC_VALUES[fields[1]]
                if value or (value is None and spec.voc_difficult == "positive"):
                    carried.setdefault(fields[0], set()).add(token)
        if bad:
            raise offenders_error(folder, "malformed label lines", bad)
        if order is None:
            order = list(seen)
        elif set(seen) != set(order):
            first = files[spec.tokens[0]].name
            raise offenders_error(path, f"ids differ from {first} (every label file of a set lists the same "
                                        "images)", [f"missing {i}" for i in order if i not in seen] +
                                  [f"extra {i} (line {seen[i]})" for i in seen if i not in set(order)])
    if not order:
        raise UserError(f"{folder}: the {image_set!r} set lists no images")
    return order, carried


def voc_frame(spec: Spec, voc_ids, carried: dict | None = None) -> pd.DataFrame:
    """Rows of VOC ids, named by their image files; with `carried`, their labels in spec order."""
    frame = pd.DataFrame({"id": [spec.label_file_image.format(i) for i in voc_ids], "line": 0})
    if carried is not None:
        frame["labels"] = [tuple(t for t in spec.tokens if t in carried.get(i, ())) for i in voc_ids]
    return frame


def read_voc(root: Path, spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test rows of the PASCAL VOC layout (format: voc). Ids are image file names
    (`label_file_image`: "{}.jpg" for JPEGImages/000005.jpg), as in the other layouts."""
    folder = root / spec.labels_dir
    if not folder.is_dir():
        raise UserError(f"{folder}: label folder not found (the spec's format is voc, labels_dir {spec.labels_dir!r})")
    train_ids, carried = read_voc_set(folder, spec, spec.voc_train_set)
    test_ids, _ = read_voc_set(folder, spec, spec.voc_test_set)
    both = sorted(set(train_ids) & set(test_ids))
    if both:
        raise offenders_error(folder, f"images in both the {spec.voc_train_set!r} and {spec.voc_test_set!r} sets "
                                      "(a label would leak)", both)
    return voc_frame(spec, train_ids, carried), voc_frame(spec, test_ids)


def image_files(folder: Path, ids, spec: Spec) -> list:
    """The images of ids in `folder`, by the spec's `image_file` template: a path each, with channel files a
    tuple of the channels' paths, with channels in one file its Planes."""
    if spec.channel_files:
        return [tuple(folder / name for name in spec.image_name(i)) for i in ids]
    if spec.channels:
        return [Planes(folder / spec.image_name(i), len(spec.channels)) for i in ids]
    return [folder / spec.image_name(i) for i in ids]


def check_images(ds: Dataset) -> None:
    """Every id needs a readable image header; full decoding is checked again when caching."""
    check_image_files(ds.image_root, "train", ds.train["id"], ds.image_paths(ds.train))
    check_image_files(ds.test_image_root, ds.spec.test_csv, ds.test["id"], ds.image_paths(ds.test, test=True))


def check_image_files(folder: Path, part: str, ids, paths: list[Path], max_pixels: int | None = None) -> None:
    """Every row's image header readable (and within `max_pixels`), else one error listing every offender."""
    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(lambda p: header_problem(p, max_pixels), paths))
    bad = [f"{part} id {i}: {why}" for i, why in zip(ids, problems) if why]
    if bad:
        raise offenders_error(folder, "images missing or unreadable", bad)


# Specs whose data `make demo-data` generates: a fresh clone has none until then.
GENERATED = ("demo", "demo_label_files", "demo_voc")


def require_root(root: Path, spec: Spec) -> None:
    if root.is_dir():
        return
    if spec.name in GENERATED:
        raise UserError(f"{root}: no data yet; the {spec.name} competition is generated: run "
                        f"`make demo-data{'' if spec.name == 'demo' else f' COMP={spec.name}'}` first "
                        "(or `make demo`, which also trains and submits), or give COMP= and DATA= for your own")
    raise UserError(f"{root}: data folder not found; DATA= names the folder with the competition's files "
                    f"(the {spec.name} spec's default is {spec.data})")


def read_test_csv(root: Path, spec: Spec, columns: list[str]) -> pd.DataFrame:
    path = root / spec.test_csv
    test = tidy(read_columns(path, spec, columns), spec)
    check_ids(test, path)
    return test


def images_present(image_root: Path) -> bool:
    return image_root.is_dir() and any(image_root.iterdir())


def read_csv_layout(root: Path, spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test rows of train.csv/test.csv (format: csv), or of label files + test.csv (label_files)."""
    test_path = root / spec.test_csv
    test = read_test_csv(root, spec, columns_of(spec, False))
    if spec.format == "label_files":
        return read_label_files(root, spec, test["id"]), test
    train_path = root / spec.train_csv
    train = tidy(read_columns(train_path, spec, columns_of(spec, True)), spec)
    check_ids(train, train_path)
    both = sorted(set(train["id"]) & set(test["id"]))
    if both:
        raise offenders_error(test_path, "ids also in train", both)
    return parse_labels(train, spec, train_path), test


def load_test(spec: Spec, root: str | Path, captions: bool, image_root: Path | None = None,
              max_pixels: int | None = None) -> pd.DataFrame:
    """The rows to predict alone (id, caption when `captions`), read and checked as `load_dataset` reads them:
    what a model needs at inference, where no train.csv or labels exist. Images are checked when present; with
    `image_root` they are required there, each within `max_pixels`."""
    root = Path(root)
    require_root(root, spec)
    if spec.format == "voc":
        test = voc_frame(spec, read_voc_set(root / spec.labels_dir, spec, spec.voc_test_set)[0])
    else:
        path = root / spec.test_csv
        columns = columns_of(spec, False)
        if spec.caption_column and path.is_file():
            header = [h.strip() for h in next(csv.reader(file_lines(decode_text(path))[:1]), [])]
            if spec.caption_column not in header:
                if captions:
                    raise UserError(f"{path}: no {spec.caption_column} column, and the model reads captions (a "
                                    "captions member, or an image member with a caption input)")
                columns = columns[:1]
        test = read_test_csv(root, spec, columns)
    if image_root is not None:
        if not images_present(image_root):
            raise UserError(f"{image_root}: no image folder there, or it is empty; the model's image members need "
                            f"the test images (IMAGES=<folder> says where they are)")
        check_image_files(image_root, spec.test_csv, test["id"], image_files(image_root, test["id"], spec), max_pixels)
    elif images_present(root / spec.test_images):
        check_images(Dataset(spec, root, test.iloc[:0], test, True))
    return test.reset_index(drop=True)


def load_dataset(spec: Spec, root: str | Path | None = None, check: bool = True) -> Dataset:
    root = Path(root or spec.data)
    require_root(root, spec)
    train, test = read_voc(root, spec) if spec.format == "voc" else read_csv_layout(root, spec)
    has_images = images_present(root / spec.image_dir) or images_present(root / spec.test_images)
    ds = Dataset(spec, root, train.reset_index(drop=True), test.reset_index(drop=True), has_images)
    if check and has_images:
        check_images(ds)
    return ds
