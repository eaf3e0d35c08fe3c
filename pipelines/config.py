"""Per-model YAML defaults + `key=value` overrides; unknown keys fail naming the valid ones."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

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
    "head": "linear",           # linear | mlp
    "head_hidden": [1024],      # mlp widths
    "dropout": 0.0,
    "img_size": 224,
    "batch_size": 32,
    "epochs": 10,
    "optimizer": "adamw",       # any timm create_optimizer_v2 name: adamw, sgd, rmsprop, adadelta, ...
    "lr": 1.0e-3,
    "weight_decay": 0.01,
    "momentum": 0.9,
    "schedule": "cosine",       # cosine (timm, with warmup) | onecycle | none
    "warmup_epochs": 1,
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
    "amp": True,                # CUDA only: mixed precision
    "amp_dtype": "auto",        # auto (bf16 where supported, else fp16 + grad scaler) | bf16 | fp16
    "channels_last": True,      # NHWC memory: faster for convnets on CUDA and on CPU (measured ~1.3x)
    "compile": False,           # torch.compile the trained module (not yet measured end to end on a GPU)
    "data_path": "device",      # device (cache rows on the device, batched augmentation; faster on CUDA and,
                                # measured, on CPU) | loader (DataLoader + albumentations per image)
    "workers": -1,              # DataLoader workers (loader path); -1 = auto
    "folds": "all",             # all, or a comma list such as 0,2
    "fullfit": False,           # also train one model on all rows (for size budgets)
    "seed": 42,
    "max_train_batches": None,  # cap per epoch, for smoke tests and benchmarks
    # captions member
    "ngram_max": 2,
    "char_ngrams": False,
    "min_df": 2,
    "C": 4.0,
}


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


def resolve(model: str, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- configs/<model>.yaml (or a YAML path) <- overrides. Adds `name`."""
    configs = available_configs()
    path = Path(model) if model.endswith((".yaml", ".yml")) else configs.get(model)
    if path is None:
        raise UserError(f"unknown model {model!r}; valid: {', '.join(configs)} (or a path to a YAML)")
    from_file = yaml.safe_load(path.read_text()) or {}
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
    cfg = {**DEFAULTS, **from_file, **pairs, "name": path.stem}
    if isinstance(cfg["folds"], (tuple, list, int)):  # `folds=0,2` parses as a tuple
        cfg["folds"] = ",".join(map(str, cfg["folds"] if not isinstance(cfg["folds"], int) else [cfg["folds"]]))
    if cfg["train_from"] is not None and cfg["mode"] == "frozen":
        raise UserError("train_from and mode: frozen exclude each other")
    if cfg["kind"] not in ("image", "captions"):
        raise UserError(f"kind must be image or captions, not {cfg['kind']!r}")
    return cfg


def fold_list(cfg: dict, k: int) -> list[int]:
    if cfg["folds"] in ("all", None):
        return list(range(k))
    folds = [int(f) for f in str(cfg["folds"]).replace(" ", "").strip("()[]").split(",") if f != ""]
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise UserError(f"folds {bad} out of range for a {k}-fold file")
    return folds
