"""One YAML file per competition: files, columns, ordered label tokens, metric and budgets."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from competition.artifacts import read_csv, read_yaml
from competition.errors import UserError
from competition.metrics import OBJECTIVES, SUBMISSIONS, objective

SPEC_DIR = Path(__file__).resolve().parent
FORMATS = ("csv", "label_files", "voc")
LABEL_FORMATS = ("tokens", "one_hot")
VOC_DIFFICULT = ("positive", "ignore")


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    data: str
    labels: dict  # token -> human name, in probability-column order (from labels_file where the spec names one)
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    image_dir: str = "data"
    test_image_dir: str | None = None  # the test images' folder where it is not image_dir (Kaggle's test_images/)
    image_file: str = "{}"          # the image file of an id: "{}.jpg" for ids without an extension (Planet);
                                    # with channels, "{}_{channel}.png": one grayscale file per channel (HPA)
    channels: tuple | None = None   # an image's channels, in the network's input order ([red, green, blue,
                                    # yellow]): a file each by image_file's {channel}, or all in its one file
                                    # (a 4-band TIFF: Planet's [blue, green, red, nir]); None: RGB
    channel_mean: tuple | None = None  # with channels: each channel's mean and standard deviation in [0, 1], in
    channel_std: tuple | None = None   # their order (`make eda` measures them); None: measured when training
    id_column: str = "ImageID"
    id_pattern: str = r'[^,"\s]+'
    label_column: str = "Labels"
    submission_label_column: str | None = None  # the submission's label column, where it is not label_column
                                                # (HPA: Target in train.csv, Predicted in the submission)
    label_separator: str = " "
    label_format: str = "tokens"    # tokens: label_column holds a row's tokens | one_hot: one 0/1 column per
                                    # label, named by its token (posters, Plant Pathology 2020, RANZCR)
    no_label: str | None = None     # tokens: the cell that means no label at all (ChestX-ray14's "No Finding")
    group_column: str | None = None  # rows sharing its value (a patient) stay in one fold
    caption_column: str | None = None
    format: str = "csv"             # csv: labels in train.csv | label_files: one <token>.txt per label
                                    # | voc: PASCAL VOC's ImageSets/Main/<token>_<set>.txt
    labels_dir: str = "labels"      # label_files: the folder of <token>.txt files (image names, one per line);
                                    # voc: the folder of <token>_<set>.txt files (ImageSets/Main)
    label_file_image: str = "{}"    # the image file a listed name means ("im{}.jpg": 7 -> im7.jpg; voc: "{}.jpg")
    voc_train_set: str = "trainval"  # voc: <token>_trainval.txt label the train images
    voc_test_set: str = "test"      # voc: <token>_test.txt list the images to predict
    voc_difficult: str = "positive"  # voc: a 0 ("difficult") counts as a positive, or is ignored (no label)
    metric: str = "micro_f1"
    submission: str | None = None   # labels: a cell of label tokens per image | probabilities: a column per label
                                    # (id_column, then the tokens); default: what the metric scores
    label_weights: dict | None = None  # probability metrics: token -> the weight of its column in the mean
    min_labels_per_image: int = 1
    labels_file: str | None = None  # the label table as a CSV in the data folder instead of `labels` (iMet's 1,103
                                    # labels.csv): first column the tokens, second (if any) their names
    budget: dict = dataclasses.field(default_factory=lambda: {"model_mb": None, "gpu_hours": None})
    source: str = ""

    @property
    def tokens(self) -> list[str]:
        return list(self.labels)

    @property
    def names(self) -> list[str]:
        return list(self.labels.values())

    @property
    def probabilities(self) -> bool:
        """The submission is a probability column per label (no thresholds): what the metric scores."""
        return objective(self.metric).probabilities

    def column_weights(self):
        """The metric's per-label column weights in token order, or None: equal."""
        return None if self.label_weights is None else [float(self.label_weights[t]) for t in self.tokens]

    @property
    def test_images(self) -> str:
        """The test images' folder, relative to the data folder."""
        return self.test_image_dir or self.image_dir

    def image_name(self, image_id: str):
        """The file name of an image id (`image_file`), or with channel files the tuple of its channels' files."""
        if self.channel_files:
            return tuple(self.image_file.format(image_id, channel=c) for c in self.channels)
        return self.image_file.format(image_id)

    @property
    def channel_stats(self) -> tuple[tuple, tuple] | None:
        """(mean, std) of each channel where the spec gives them, else None (training measures them)."""
        return (self.channel_mean, self.channel_std) if self.channel_mean else None

    @property
    def channel_files(self) -> bool:
        """Each channel is its own file (image_file names a {channel})."""
        return bool(self.channels) and "{channel}" in self.image_file

    @property
    def submission_column(self) -> str:
        """A labels submission's label column."""
        return self.submission_label_column or self.label_column

    @property
    def in_chans(self) -> int:
        """The network's input channels: one per channel file, or RGB's three."""
        return len(self.channels) if self.channels else 3

    def inlined_yaml(self) -> str:
        """The spec's YAML as a bundle ships it: its own text, or with labels_file replaced by the labels it read
        (a bundle holds no data folder)."""
        import yaml
        text = Path(self.source).read_text()
        if self.labels_file is None:
            return text
        raw = yaml.safe_load(text)
        raw.pop("labels_file")
        raw["labels"] = dict(self.labels)
        return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def read_label_table(path: Path) -> dict[str, str]:
    """labels_file: token -> name from a CSV with a header (iMet's `attribute_id,attribute_name`)."""
    table = read_csv(path, "the spec's labels_file names it, in the data folder", dtype=str, keep_default_na=False)
    if table.empty:
        raise UserError(f"{path}: the label table has no rows")
    tokens = table.iloc[:, 0].str.strip()
    names = table.iloc[:, 1].str.strip() if table.shape[1] > 1 else tokens
    empty = [f"line {i + 2}" for i in range(len(tokens)) if not tokens.iloc[i]]
    if empty:
        raise UserError(f"{path}: empty label id at {', '.join(empty[:5])}")
    dup = tokens[tokens.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        lines = [str(i + 2) for i in np.flatnonzero((tokens == first).to_numpy())]
        raise UserError(f"{path}: label id {first!r} on lines {', '.join(lines)} ({dup.nunique()} ids listed twice "
                        "or more): one row per label")
    return dict(zip(tokens, names))


def check_layout(raw: dict, path: Path) -> None:
    """The keys that describe the files: each known, and only where its format has it."""
    if raw.get("format", "csv") not in FORMATS:
        raise UserError(f"{path}: format {raw['format']!r}; valid: {', '.join(FORMATS)}")
    if raw.get("format") in ("label_files", "voc") and raw.get("caption_column"):
        raise UserError(f"{path}: format {raw['format']} has no train captions; set caption_column: null")
    if raw.get("label_format", "tokens") not in LABEL_FORMATS:
        raise UserError(f"{path}: label_format {raw['label_format']!r}; valid: {', '.join(LABEL_FORMATS)}")
    if raw.get("format", "csv") != "csv" and (raw.get("label_format", "tokens") != "tokens" or
                                              raw.get("group_column") or raw.get("no_label")):
        raise UserError(f"{path}: label_format, group_column and no_label describe a train.csv (format: csv)")
    if raw.get("no_label") is not None and (raw.get("label_format") == "one_hot" or
                                            str(raw["no_label"]) in raw["labels"]):
        raise UserError(f"{path}: no_label {raw['no_label']!r} is the tokens format's cell for no label, not a "
                        "label token (a one-hot row without labels is all zeros)")
    separator = raw.get("label_separator", " ")
    spaced = [t for t in raw["labels"] if not t or separator.strip() and separator.strip() in t or
              any(c.isspace() for c in t)]
    # A probability submission names each label by a column (RANZCR's 'ETT - Abnormal'), one-hot labels too.
    in_cells = raw.get("submission") != "probabilities" or raw.get("label_format", "tokens") == "tokens"
    if in_cells and spaced:
        raise UserError(f"{path}: label tokens {spaced[:5]} hold whitespace or the label_separator {separator!r} (or "
                        "are empty): a submission's label cell could not be split back into them (name the "
                        "labels with tokens such as ETT_Abnormal, and their names as you like)")
    if raw.get("voc_difficult", "positive") not in VOC_DIFFICULT:
        raise UserError(f"{path}: voc_difficult {raw['voc_difficult']!r}; valid: {', '.join(VOC_DIFFICULT)}")
    if raw.get("image_file", "{}").count("{}") != 1 or not isinstance(raw.get("image_file", "{}"), str):
        raise UserError(f"{path}: image_file {raw['image_file']!r} needs one {{}} for the image id (e.g. '{{}}.jpg')")
    check_channels(raw, path)
    if raw.get("format") in ("label_files", "voc") and (raw.get("image_file", "{}") != "{}" or
                                                        raw.get("test_image_dir")):
        raise UserError(f"{path}: format {raw['format']} names its images by label_file_image in one image_dir; "
                        "image_file and test_image_dir are for the csv format")
    if "{}" not in raw.get("label_file_image", "{}"):
        raise UserError(f"{path}: label_file_image {raw['label_file_image']!r} needs a {{}} for the listed name")


def check_channels(raw: dict, path: Path) -> None:
    """channels: distinct names, a file each by image_file's {channel} or all in one file; a csv format key."""
    channels, template = raw.get("channels"), str(raw.get("image_file", "{}"))
    if channels is None:
        if "{channel}" in template:
            raise UserError(f"{path}: image_file {template!r} names a {{channel}}, and the spec lists no channels")
        check_channel_stats(raw, path)
        return
    names = [str(c) for c in channels] if isinstance(channels, list) else []
    if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise UserError(f"{path}: channels {channels!r}: a list of distinct names (e.g. [red, green, blue, yellow])")
    if raw.get("format", "csv") != "csv":
        raise UserError(f"{path}: channels are read by the csv format's image_file (a file per channel by "
                        "'{}_{channel}.png', or all in one file by '{}.tif')")
    raw["channels"] = tuple(names)
    check_channel_stats(raw, path)


def check_channel_stats(raw: dict, path: Path) -> None:
    """channel_mean and channel_std: both or neither, a number in [0, 1] per channel (a std above 0)."""
    given = [k for k in ("channel_mean", "channel_std") if raw.get(k) is not None]
    if not given:
        return
    if not raw.get("channels") or len(given) == 1:
        raise UserError(f"{path}: {' and '.join(given)}: channel_mean and channel_std go together, with channels")
    for key in given:
        values = raw[key]
        ok = isinstance(values, list) and len(values) == len(raw["channels"]) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
        if not ok or (key == "channel_std" and min(values) <= 0):
            raise UserError(f"{path}: {key} {values!r}: one number in [0, 1] per channel "
                            f"({', '.join(raw['channels'])}), as `make eda` prints them")
        raw[key] = tuple(float(v) for v in values)


def available_specs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPEC_DIR.glob("*.yaml"))}


def spec_path(name_or_path: str) -> Path:
    """competition/<name>.yaml for a name, or the user's own YAML for a path."""
    path = Path(name_or_path)
    if path.suffix:
        return path
    specs = available_specs()
    if name_or_path not in specs:
        raise UserError(f"unknown competition {name_or_path!r}; valid: {', '.join(specs)} (or a path to a spec YAML)")
    return specs[name_or_path]


def load_spec(name_or_path: str, data: str | Path | None = None) -> Spec:
    """A spec by name (competition/<name>.yaml) or by path to a user's own YAML; a labels_file is read from `data`
    (default: the spec's data folder)."""
    path = spec_path(name_or_path)
    raw = read_yaml(path, "competition spec")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a spec is a mapping of keys (name, data, labels, ...), not {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(Spec)} - {"source"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; valid: {sorted(fields)}")
    if raw.get("labels_file") is not None:
        if "labels" in raw:
            raise UserError(f"{path}: labels and labels_file both name the labels; keep one")
        raw["labels"] = read_label_table(Path(data or raw.get("data", ".")) / str(raw["labels_file"]))
    missing = sorted({"name", "data", "labels"} - set(raw))
    if missing:
        raise UserError(f"{path}: missing keys {missing}")
    if not isinstance(raw["labels"], dict) or not raw["labels"]:
        raise UserError(f"{path}: labels must map each label token to its name")
    # YAML may read label tokens as ints; tokens are strings so tag-word labels need no new code.
    raw["labels"] = {str(k): str(v) for k, v in raw["labels"].items()}
    budget = {"model_mb": None, "gpu_hours": None}
    budget.update(raw.get("budget") or {})
    raw["budget"] = budget
    check_scoring(raw, path)
    check_layout(raw, path)
    min_labels = raw.get("min_labels_per_image", 1)
    if not isinstance(min_labels, int) or isinstance(min_labels, bool) or min_labels < 0:
        raise UserError(f"{path}: min_labels_per_image {min_labels!r}; expected an integer >= 0")
    bad_budget = {k: v for k, v in budget.items() if v is not None and (
        isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0)}
    if bad_budget:
        raise UserError(f"{path}: budget {bad_budget}; expected numbers >= 0 (or null: no limit)")
    return Spec(**raw, source=str(path))


def check_scoring(raw: dict, path: Path) -> None:
    """The metric, the submission it scores (filled in where the spec leaves it out) and its column weights."""
    try:
        scored = objective(raw.setdefault("metric", "micro_f1")).scores
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    submission = raw.setdefault("submission", scored)
    if submission not in SUBMISSIONS:
        raise UserError(f"{path}: submission {submission!r}; valid: {', '.join(SUBMISSIONS)}")
    if submission != scored:
        raise UserError(f"{path}: metric {raw['metric']} scores {scored}, and the spec submits {submission}: "
                        f"set submission: {scored}, or a metric of {submission} "
                        f"({', '.join(o.name for o in OBJECTIVES.values() if o.scores == submission)})")
    weights = raw.get("label_weights")
    if weights is None:
        return
    if submission != "probabilities":
        raise UserError(f"{path}: label_weights weigh the label columns of a probability metric; {raw['metric']} "
                        "scores decisions")
    weights = {str(k): v for k, v in weights.items()} if isinstance(weights, dict) else weights
    bad = ([] if isinstance(weights, dict) else [f"{weights!r} (expected token: weight)"]) or \
        [f"{t}: missing" for t in raw["labels"] if t not in weights] + \
        [f"{t}: not a label token" for t in weights if t not in raw["labels"]] + \
        [f"{t}: {w!r}" for t, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or
         not w >= 0]
    if bad or not sum(weights.values()) > 0:
        raise UserError(f"{path}: label_weights {'; '.join(bad[:5]) or 'all 0'}: one weight >= 0 per label token")
    raw["label_weights"] = weights
