"""The fold contract: what every fitter (image or captions) is given beyond its rows, and what it returns for
one fold, filled completely by it."""
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
    shared: list = dataclasses.field(default_factory=list)  # files or folders every fold's inference also needs
    backend: str = "none"   # torch.distributed backend under torchrun (nccl, gloo), "none" for one process
    inference: dict | None = None  # an image network's inference record (pipelines.inference), None for captions


@dataclasses.dataclass
class SoftTargets:
    """What a distilled student learns instead of the 0/1 labels (built by `distill`): a target for every
    train row, of which a fit uses its own rows, and optionally pseudo-labels for every test row, which
    join its training rows. Validation always scores against the true labels."""
    train: np.ndarray           # (train rows, labels) in [0, 1], train.csv order
    test: np.ndarray | None     # (test rows, labels) in [0, 1], test.csv order; None: no pseudo-labels
    test_rows: np.ndarray | None = None  # the test rows that join training (test.csv positions); None: all

    def joining(self) -> tuple[np.ndarray, np.ndarray]:
        """(test.csv positions, their targets) of the pseudo-labelled rows that join training."""
        rows = np.arange(len(self.test)) if self.test_rows is None else np.asarray(self.test_rows)
        return rows, self.test[rows]


def training_rows(train_idx: np.ndarray, y: np.ndarray, targets: SoftTargets | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, targets) a fit learns, rows numbered train rows first, then test rows (as the image cache and the
    caption embeddings hold them): its train rows with their labels, or with a student's soft targets and
    the pseudo-labelled test rows that join them."""
    if targets is None:
        return train_idx, y[train_idx]
    rows, fit_y = train_idx, targets.train[train_idx]
    if targets.test is not None:
        joining, soft = targets.joining()
        rows, fit_y = np.concatenate([train_idx, len(y) + joining]), np.concatenate([fit_y, soft])
    return rows, fit_y
