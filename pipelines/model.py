"""The one model builder and weight I/O: a timm backbone (num_classes=0) + a multi-label head, and its fp16
safetensors. Training, Grad-CAM and prediction all build and load networks here, so they cannot drift."""
from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from competition.artifacts import atomic_path
from competition.errors import UserError
from pipelines.weights import load_pretrained


def linear_head(in_features: int, num_classes: int, cfg: dict) -> nn.Module:
    return nn.Sequential(nn.Dropout(cfg["dropout"]), nn.Linear(in_features, num_classes))


def mlp_head(in_features: int, num_classes: int, cfg: dict) -> nn.Module:
    layers, width = [], in_features
    for hidden in cfg["head_hidden"]:
        layers += [nn.Dropout(cfg["dropout"]), nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*layers, nn.Dropout(cfg["dropout"]), nn.Linear(width, num_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}  # the names are pipelines.config's CHOICES["head"]


def build_head(in_features: int, num_classes: int, cfg: dict) -> nn.Module:
    return HEADS[cfg["head"]](in_features, num_classes, cfg)


class MultiLabelNet(nn.Module):
    def __init__(self, cfg: dict, num_classes: int):
        super().__init__()
        self.frozen = cfg["mode"] == "frozen"
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


@torch.no_grad()
def round_to_saved(model: nn.Module) -> None:
    """Round every float weight and buffer to what its fp16 file will hold (save_weights), from the start: a
    frozen trunk's cached features are then computed by exactly the weights a bundle ships, so `make predict`
    reproduces the run's probabilities instead of drifting by fp16's rounding through every layer."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.copy_(t.half().float())


def build_model(cfg: dict, num_classes: int) -> tuple[MultiLabelNet, str, tuple, tuple]:
    """Model, where its weights came from, and the normalisation mean/std of its pretraining."""
    model = MultiLabelNet(cfg, num_classes)
    source = load_pretrained(model.backbone, cfg["backbone"], cfg["pretrained"], cfg["pretrained_file"])
    round_to_saved(model)
    data_cfg = timm.data.resolve_data_config({}, model=model.backbone)
    return model, source, tuple(data_cfg["mean"]), tuple(data_cfg["std"])


class TopOfNet(nn.Module):
    """The stages from `start` on, plus the head; shares modules with `net`."""

    def __init__(self, net, start: int):
        super().__init__()
        bb = net.backbone
        needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
        if not all(hasattr(bb, n) for n in needed):
            raise UserError(f"train_from needs a timm EfficientNet-family backbone, not {type(bb).__name__}; "
                             "unset train_from for full fine-tuning")
        if not 0 < start < len(bb.blocks):
            raise UserError(f"train_from must be in 1..{len(bb.blocks) - 1} for this backbone")
        self.blocks = nn.Sequential(*bb.blocks[start:])
        self.conv_head, self.bn2, self.pool, self.head = bb.conv_head, bb.bn2, bb.global_pool, net.head

    def forward(self, x):
        return self.head(self.pool(self.bn2(self.conv_head(self.blocks(x)))))

    def trainable(self) -> nn.Module:
        return self


def trunk_modules(net, start: int) -> list[nn.Module]:
    """The frozen stages before `train_from`: what the trunk cache computes once and a bundle's members share."""
    bb = net.backbone
    return [bb.conv_stem, bb.bn1, *bb.blocks[:start]]


def trunk_digest(net, start: int, salt: str = ""):
    """sha1 of the trunk's weights (and `salt`): equal digests compute identical features."""
    digest = hashlib.sha1(salt.encode())
    for module in trunk_modules(net, start):
        for v in module.state_dict().values():
            digest.update(v.detach().cpu().numpy().tobytes())
    return digest


@torch.inference_mode()  # not just no_grad: oneDNN then runs bf16 here ~1.4x faster (batch 64, 288 px)
def trunk_forward(net, start: int, x):
    for module in trunk_modules(net, start):
        x = module(x)
    return x


def forward_as_trained(net: MultiLabelNet, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits as training computed its validation and test predictions: a trunk-cached model (train_from) runs
    its trunk, rounds the features to fp16 as the trunk cache stores them, then its top. Call under no_grad."""
    if cfg["train_from"] is None:
        return net(x)
    return TopOfNet(net, cfg["train_from"])(trunk_forward(net, cfg["train_from"], x).half().float())


def cpu_has_bf16() -> bool:
    """bf16 matrix units (AMX) or AVX512-BF16: there oneDNN runs bf16 convolutions natively."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# amp_dtype's names are pipelines.config's CHOICES, checked there before any work.
AMP_DTYPES = {"auto": lambda: torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
              "bf16": lambda: torch.bfloat16, "fp16": lambda: torch.float16}


def inference_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of predictions: on CUDA the config's amp_dtype (also training's; auto: bf16 where
    supported, else fp16), bf16 on a CPU with native bf16 (2.0x faster here, benchmarks/cpu_bf16.py), none
    otherwise or with amp off. Training's validation and test predictions and `make predict` use this rule."""
    if not cfg["amp"]:
        return None
    if device.type == "cuda":
        return AMP_DTYPES[cfg["amp_dtype"]]()
    return torch.bfloat16 if cpu_has_bf16() else None


def save_weights(model: nn.Module, path: Path) -> None:
    """fp16 safetensors: half the bytes, and loading it can run no code."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()}, strict=True)


def load_trained(cfg: dict, num_classes: int, weights: Path) -> tuple[MultiLabelNet, tuple, tuple]:
    """A trained network from its config and weight file, float32 and in eval mode, with the normalisation
    of its pretraining. No pretrained download or file: the saved weights replace them all."""
    net, _, mean, std = build_model({**cfg, "pretrained": "none"}, num_classes)
    load_weights(net, weights)
    return net.float().eval(), mean, std
