"""Training: model configs, every fold of one model, and what a fold fit writes.

What the stages above call (distill trains its students with `train_model`, like `make train`). Loaded on
first use, so importing one module of the package (the model builder, for prediction) loads no training."""
__all__ = ["EXECUTION_KEYS", "resolve", "train_model"]


def __getattr__(name):
    if name == "train_model":
        from pipelines.run import train_model
        return train_model
    if name in ("EXECUTION_KEYS", "resolve"):
        from pipelines import config
        return getattr(config, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
