"""One YAML file per competition: files, columns, ordered label tokens, metric and budgets."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from competition.errors import UserError
from competition.metrics import objective

SPEC_DIR = Path(__file__).resolve().parent
FORMATS = ("csv", "label_files")


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    data: str
    labels: dict  # token -> human name, in probability-column order
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    image_dir: str = "data"
    id_column: str = "ImageID"
    id_pattern: str = r'[^,"\s]+'
    label_column: str = "Labels"
    label_separator: str = " "
    caption_column: str | None = None
    format: str = "csv"             # csv: labels in train.csv | label_files: one <token>.txt per label
    labels_dir: str = "labels"      # label_files: the folder of <token>.txt files (image names, one per line)
    label_file_image: str = "{}"    # label_files: the image file a listed name means ("im{}.jpg": 7 -> im7.jpg)
    metric: str = "micro_f1"
    min_labels_per_image: int = 1
    budget: dict = dataclasses.field(default_factory=lambda: {"model_mb": None, "gpu_hours": None})
    source: str = ""

    @property
    def tokens(self) -> list[str]:
        return list(self.labels)

    @property
    def names(self) -> list[str]:
        return list(self.labels.values())


def available_specs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SPEC_DIR.glob("*.yaml"))}


def load_spec(name_or_path: str) -> Spec:
    """A spec by name (competition/<name>.yaml) or by path to a user's own YAML."""
    path = Path(name_or_path)
    if not path.suffix:
        specs = available_specs()
        if name_or_path not in specs:
            raise UserError(f"unknown competition {name_or_path!r}; valid: {', '.join(specs)} "
                           "(or a path to a spec YAML)")
        path = specs[name_or_path]
    raw = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(Spec)} - {"source"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; valid: {sorted(fields)}")
    missing = sorted({"name", "data", "labels"} - set(raw))
    if missing:
        raise UserError(f"{path}: missing keys {missing}")
    # YAML may read label tokens as ints; tokens are strings so tag-word labels need no new code.
    raw["labels"] = {str(k): str(v) for k, v in raw["labels"].items()}
    budget = {"model_mb": None, "gpu_hours": None}
    budget.update(raw.get("budget") or {})
    raw["budget"] = budget
    if raw.get("format", "csv") not in FORMATS:
        raise UserError(f"{path}: format {raw['format']!r}; valid: {', '.join(FORMATS)}")
    if raw.get("format") == "label_files" and raw.get("caption_column"):
        raise UserError(f"{path}: format label_files has no train captions; set caption_column: null")
    if "{}" not in raw.get("label_file_image", "{}"):
        raise UserError(f"{path}: label_file_image {raw['label_file_image']!r} needs a {{}} for the listed name")
    if "metric" in raw:
        try:
            objective(raw["metric"])
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return Spec(**raw, source=str(path))
