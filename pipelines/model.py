"""A thin wrapper: timm backbone (num_classes=0) + a multi-label head."""
from __future__ import annotations

import timm
import torch
from torch import nn

from competition.errors import UserError
from pipelines.weights import load_pretrained


def build_head(in_features: int, num_classes: int, cfg: dict) -> nn.Module:
    if cfg["head"] == "linear":
        return nn.Sequential(nn.Dropout(cfg["dropout"]), nn.Linear(in_features, num_classes))
    if cfg["head"] == "mlp":
        layers, width = [], in_features
        for hidden in cfg["head_hidden"]:
            layers += [nn.Dropout(cfg["dropout"]), nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        return nn.Sequential(*layers, nn.Dropout(cfg["dropout"]), nn.Linear(width, num_classes))
    raise UserError(f"unknown head {cfg['head']!r}; valid: linear, mlp")


class MultiLabelNet(nn.Module):
    def __init__(self, cfg: dict, num_classes: int):
        super().__init__()
        self.frozen = cfg["mode"] == "frozen"
        if cfg["mode"] not in ("finetune", "frozen"):
            raise UserError(f"unknown mode {cfg['mode']!r}; valid: finetune, frozen")
        self.backbone = timm.create_model(cfg["backbone"], pretrained=False, num_classes=0)
        self.head = build_head(self.backbone.num_features, num_classes, cfg)
        if self.frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # frozen features: BatchNorm statistics stay ImageNet's
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                features = self.backbone(x)
        else:
            features = self.backbone(x)
        return self.head(features)

    def trainable(self) -> nn.Module:
        return self.head if self.frozen else self

    def group_matcher(self, coarse: bool = False):
        """timm's layer grouping of the backbone, with the head after its last group: what timm's
        `layer_decay` scales each parameter's learning rate by."""
        from timm.models import group_parameters
        ordinal = group_parameters(self.backbone, self.backbone.group_matcher(coarse), reverse=True)
        ordinal = {f"backbone.{name}": layer for name, layer in ordinal.items()}
        top = max(ordinal.values()) + 1
        return lambda name: ordinal.get(name, top)


def build_model(cfg: dict, num_classes: int) -> tuple[MultiLabelNet, str, tuple, tuple]:
    """Model, where its weights came from, and the normalisation mean/std of its pretraining."""
    model = MultiLabelNet(cfg, num_classes)
    source = load_pretrained(model.backbone, cfg["backbone"], cfg["pretrained"], cfg["pretrained_file"])
    data_cfg = timm.data.resolve_data_config({}, model=model.backbone)
    return model, source, tuple(data_cfg["mean"]), tuple(data_cfg["std"])
