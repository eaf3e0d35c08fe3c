"""The fold contract: what every fitter (image or captions) returns for one fold, filled completely by it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class FitResult:
    val_prob: np.ndarray    # (val rows, labels), in the order of the rows given
    test_prob: np.ndarray   # (test rows, labels)
    best_epoch: int
    history: list           # one dict per epoch (empty for models without epochs)
    weights: Path           # the file inference needs
    source: str             # where the starting weights came from
    params: int
    device: str = "cpu"
    gpu_hours: float = 0.0
