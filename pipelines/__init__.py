"""Training: model configs, every fold of one model, and what a fold fit writes.

What the stages above call (distill trains its students with `train_model`, like `make train`)."""
from pipelines.config import EXECUTION_KEYS, resolve
from pipelines.run import train_model

__all__ = ["EXECUTION_KEYS", "resolve", "train_model"]
