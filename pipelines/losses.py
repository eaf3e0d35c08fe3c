"""Multi-label losses by name. Focal and ASL come from timm's AsymmetricLossMultiLabel."""
from __future__ import annotations

import numpy as np
import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import nn


class MeanASL(nn.Module):
    """timm's ASL returns a sum; divide by the element count so learning rates transfer from BCE."""

    def __init__(self, **kwargs):
        super().__init__()
        self.asl = AsymmetricLossMultiLabel(**kwargs)

    def forward(self, logits, targets):
        return self.asl(logits.float(), targets) / targets.numel()


def pos_weight(targets: np.ndarray) -> torch.Tensor:
    pos = targets.sum(0).astype(np.float64)
    return torch.tensor((len(targets) - pos) / np.maximum(pos, 1.0), dtype=torch.float32)


LOSSES = {
    "bce": lambda y: nn.BCEWithLogitsLoss(),
    "bce_pos_weight": lambda y: nn.BCEWithLogitsLoss(pos_weight=pos_weight(y)),
    "focal": lambda y: MeanASL(gamma_neg=2, gamma_pos=2, clip=0.0),
    "asl": lambda y: MeanASL(gamma_neg=4, gamma_pos=1, clip=0.05),
}


def build_loss(name: str, train_targets: np.ndarray) -> nn.Module:
    return LOSSES[name](train_targets)  # pipelines.config checked the name against this table (REGISTRIES)
