"""The one model builder and weight I/O: a timm backbone (num_classes=0) + a multi-label head, and its fp16
safetensors. Training, Grad-CAM and prediction all build and load networks here, so they cannot drift."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from competition.artifacts import atomic_path
from competition.errors import UserError
from pipelines import text_encoder
from pipelines.weights import load_pretrained


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """What the builder makes a network from: the architecture, nothing about training. Built from a run's
    config at training and saved in each fit's inference record (pipelines.inference), so a trained network is
    rebuilt from its own record, never from today's defaults."""
    backbone: str
    mode: str                  # finetune | frozen (the backbone's BatchNorm stays ImageNet's)
    head: str
    head_hidden: tuple[int, ...]  # mlp widths
    head_dim: int
    head_heads: int
    head_groups: int           # attention: label queries (0: one per label)
    extra_stages: int
    dropout: float
    drop_path: float
    img_size: int              # the input size; fixed-size models (ViT) are built for it
    caption_input: str         # none | a sentence encoder (pipelines.text_encoder) whose embedding the head reads
    in_chans: int = 3          # input channels: the spec's channel files (HPA's 4), else RGB

    @classmethod
    def of(cls, cfg, in_chans: int = 3) -> NetSpec:
        """From an image model's config (pipelines.config.ImageConfig), whose fields share their names, and the
        competition's input channels."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.name != "in_chans"},
                   in_chans=in_chans)


def linear_head(in_features: int, num_classes: int, spec: NetSpec) -> nn.Module:
    return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(in_features, num_classes))


def mlp_head(in_features: int, num_classes: int, spec: NetSpec) -> nn.Module:
    layers, width = [], in_features
    for hidden in spec.head_hidden:
        layers += [nn.Dropout(spec.dropout), nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*layers, nn.Dropout(spec.dropout), nn.Linear(width, num_classes))


def tokens_of(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map or (B, N, C) ViT tokens -> (B, N, C)."""
    return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x


class QueryHead(nn.Module):
    """ML-Decoder's head (Ridnik et al., 2023) over the last feature map: one learned query per label attends to
    every position (cross-attention only: ML-Decoder drops the decoder's self-attention), a feed-forward layer,
    and a group fully-connected layer (each query's own linear map to its label's logit). Small objects need not
    win a global average: a label's query can look at the few positions that hold it.

    With a caption input (early fusion), the caption's sentence embedding is one more memory token beside the
    image positions, and shifts every label query (a layer initialised to zero: training starts from the image
    head): "a man riding" can steer the queries toward a two-wheeled shape. On comp5329-6k the fused member was
    the best single model, OOF micro-F1 0.8451 against 0.8150 for the same head without it, but did not lift the
    fully nested blend of the separate members (docs/recipes.md, round three)."""

    def __init__(self, in_features: int, num_classes: int, spec: NetSpec):
        super().__init__()
        d = spec.head_dim
        self.embed = nn.Sequential(nn.Linear(in_features, d), nn.ReLU(inplace=True))
        self.caption_memory = self.caption_shift = None
        if spec.caption_input != "none":
            width = text_encoder.WIDTHS[spec.caption_input]
            self.caption_memory = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(width, d), nn.ReLU())
            self.caption_shift = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(width, d))
            nn.init.zeros_(self.caption_shift[1].weight)
            nn.init.zeros_(self.caption_shift[1].bias)
        # ML-Decoder's group decoding: `groups` queries, each its own linear map to `per` labels' logits (one query
        # per label when groups is 0 or not below the labels: the original weights' shapes)
        groups = spec.head_groups if 0 < spec.head_groups < num_classes else num_classes
        self.num_classes, self.per = num_classes, -(-num_classes // groups)
        self.queries = nn.Parameter(torch.randn(groups, d) * 0.02)
        self.attend = nn.MultiheadAttention(d, spec.head_heads, dropout=spec.dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(inplace=True), nn.Dropout(spec.dropout),
                                 nn.Linear(2 * d, d))
        shape = (num_classes, d) if groups == num_classes else (groups, d, self.per)
        self.group_weight = nn.Parameter(torch.randn(shape) * d ** -0.5)
        self.group_bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor, captions: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.embed(tokens_of(x))
        q = self.queries.unsqueeze(0).expand(len(memory), -1, -1)
        if (captions is None) != (self.caption_memory is None):  # training's and every predictor's one check
            raise TypeError("this head reads the captions' embeddings (caption_input); none were given"
                            if captions is None else "this head has no caption input; captions were given")
        if self.caption_memory is not None:
            memory = torch.cat([memory, self.caption_memory(captions).to(memory.dtype)[:, None]], 1)
            q = q + self.caption_shift(captions).to(q.dtype)[:, None]
        q = self.norm1(q + self.attend(q, memory, memory, need_weights=False)[0])
        q = self.norm2(q + self.ffn(q))
        if self.group_weight.dim() == 2:
            return (q * self.group_weight).sum(-1) + self.group_bias
        logits = torch.einsum("bgd,gdk->bgk", q, self.group_weight).flatten(1)[:, :self.num_classes]
        return logits + self.group_bias


class PyramidHead(nn.Module):
    """Spatial pyramid pooling (He et al., 2014; for multi-label images J. A. Marais, Stellenbosch, 2017): the
    last feature map max-pooled over 1x1, 2x2 and 4x4 grids, concatenated, then a linear layer. Where an object
    lies survives the pooling, and a small one keeps its own cell."""

    GRIDS = (1, 2, 4)

    def __init__(self, in_features: int, num_classes: int, spec: NetSpec):
        super().__init__()
        self.fc = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(in_features * sum(g * g for g in self.GRIDS),
                                                                      num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise UserError("head: pyramid needs a convolutional feature map; use head: attention for a ViT")
        return self.fc(torch.cat([nn.functional.adaptive_max_pool2d(x, g).flatten(1) for g in self.GRIDS], 1))


# The one list of head names (pipelines.config.REGISTRIES checks `head` against it).
HEADS = {"linear": linear_head, "mlp": mlp_head, "attention": QueryHead, "pyramid": PyramidHead}
SPATIAL_HEADS = {"attention", "pyramid"}  # they take the unpooled feature map


def build_head(in_features: int, num_classes: int, spec: NetSpec) -> nn.Module:
    return HEADS[spec.head](in_features, num_classes, spec)


EFFICIENTNET_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


def stage_widths(bb, extra: int) -> list[int]:
    """Channels of the last `extra` block outputs (hypercolumns), for the EfficientNet family."""
    if not extra:
        return []
    if not all(hasattr(bb, n) for n in EFFICIENTNET_PARTS):
        raise UserError(f"extra_stages needs a timm EfficientNet-family backbone, not {type(bb).__name__}")
    if extra > len(bb.blocks) - 1:
        raise UserError(f"extra_stages must be at most {len(bb.blocks) - 1} for this backbone")
    probe = torch.zeros(1, bb.conv_stem.in_channels, 64, 64)
    widths, x = [], bb.bn1(bb.conv_stem(probe))
    with torch.no_grad():
        for block in bb.blocks:
            x = block(x)
            widths.append(x.shape[1])
    return widths[-extra:]


def tail_features(blocks, conv_head, bn2, pool, extra: int, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet from `blocks` on: the pooled last features, and with `extra` the average-pooled outputs of the
    last `extra` blocks beside them (hypercolumns; the first may be the input, a cached trunk's output)."""
    outputs = [x]
    for block in blocks:
        outputs.append(block(outputs[-1]))
    features = pool(bn2(conv_head(outputs[-1])))
    if not extra:
        return features
    return torch.cat([features, *(o.float().mean((2, 3)).to(features.dtype) for o in outputs[-extra:])], 1)


def size_args(backbone: str, img_size: int) -> dict:
    """timm's size argument for a model whose input size is fixed when it is built (ViT, EVA: patch grid and
    position embeddings); convnets take any size and no such argument."""
    try:
        pretrained = timm.models.get_pretrained_cfg(backbone)
    except (RuntimeError, ValueError, KeyError):  # a name timm has no pretrained config for
        pretrained = None
    return {"img_size": img_size} if getattr(pretrained, "fixed_input_size", False) else {}


class MultiLabelNet(nn.Module):
    def __init__(self, spec: NetSpec, num_classes: int):
        super().__init__()
        self.frozen = spec.mode == "frozen"
        self.extra = spec.extra_stages
        if self.extra and spec.head in SPATIAL_HEADS:
            raise UserError(f"extra_stages joins pooled features: use it with head linear or mlp, not {spec.head}")
        pool = "" if spec.head in SPATIAL_HEADS else "avg"
        extra = {"drop_path_rate": spec.drop_path} if spec.drop_path else {}  # not every timm model takes it
        extra |= size_args(spec.backbone, spec.img_size)
        self.backbone = timm.create_model(spec.backbone, pretrained=False, num_classes=0, global_pool=pool,
                                          in_chans=spec.in_chans, **extra)
        width = self.backbone.num_features + sum(stage_widths(self.backbone, self.extra))
        self.head = build_head(width, num_classes, spec)
        if self.frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # frozen features: BatchNorm statistics stay ImageNet's
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.extra:
            return self.backbone(x)
        bb = self.backbone
        return tail_features(bb.blocks, bb.conv_head, bb.bn2, bb.global_pool, self.extra, bb.bn1(bb.conv_stem(x)))

    def forward(self, x: torch.Tensor, *captions: torch.Tensor) -> torch.Tensor:
        """`captions`: the rows' sentence embeddings, for a head with a caption input (and only then)."""
        if self.frozen:
            with torch.no_grad():
                features = self.features(x)
        else:
            features = self.features(x)
        return self.head(features, *captions)

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


def build_model(cfg, num_classes: int, in_chans: int = 3) -> tuple[MultiLabelNet, str, tuple, tuple]:
    """A network to train from a run's config: model, where its weights came from, and the normalisation
    mean/std of its pretraining. With `in_chans` other than 3 the pretrained first layer is adapted as timm
    adapts it (pipelines.weights) and the RGB statistics follow the same channel order: channel k takes RGB
    channel k mod 3's (one channel: their mean); training then takes the spec's or measures each channel's own
    (FoldData.channel_stats) for the inference record."""
    spec = NetSpec.of(cfg, in_chans)
    model = MultiLabelNet(spec, num_classes)
    source = load_pretrained(model.backbone, spec.backbone, cfg.pretrained, cfg.pretrained_file,
                             size_args(spec.backbone, spec.img_size))
    round_to_saved(model)
    return model, source, *pretraining_stats(model.backbone, in_chans)


def pretraining_stats(backbone, in_chans: int) -> tuple[tuple, tuple]:
    """The normalisation (mean, std) of the backbone's pretraining, per input channel (`channel_stats`)."""
    timm_data = timm.data.resolve_data_config({}, model=backbone)
    mean, std = (channel_stats([float(v) for v in timm_data[k]], in_chans) for k in ("mean", "std"))
    return mean, std


def channel_stats(rgb: list[float], in_chans: int) -> tuple[float, ...]:
    """Per input channel, the RGB statistic its adapted filters came from (timm's adapt_input_conv repeats RGB)."""
    rgb = rgb[:3]
    if in_chans == 1:
        return (sum(rgb) / 3,)
    return tuple(rgb[k % 3] for k in range(in_chans))


class TopOfNet(nn.Module):
    """The stages from `start` on, plus the head; shares modules with `net`."""

    def __init__(self, net, start: int):
        super().__init__()
        bb = net.backbone
        if not all(hasattr(bb, n) for n in EFFICIENTNET_PARTS):
            raise UserError(f"train_from needs a timm EfficientNet-family backbone, not {type(bb).__name__}; "
                             "unset train_from for full fine-tuning")
        if not 0 < start < len(bb.blocks):
            raise UserError(f"train_from must be in 1..{len(bb.blocks) - 1} for this backbone")
        self.blocks = nn.Sequential(*bb.blocks[start:])
        self.conv_head, self.bn2, self.pool, self.head = bb.conv_head, bb.bn2, bb.global_pool, net.head
        self.extra = net.extra
        if self.extra > len(self.blocks) + 1:
            raise UserError(f"extra_stages {self.extra} reaches into the cached trunk: at most "
                            f"{len(self.blocks) + 1} with train_from {start}")

    def forward(self, x, *captions):
        return self.head(tail_features(self.blocks, self.conv_head, self.bn2, self.pool, self.extra, x), *captions)

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


def cpu_has_bf16() -> bool:
    """bf16 matrix units (AMX) or AVX512-BF16: there oneDNN runs bf16 convolutions natively."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# The one list of amp_dtype names (pipelines.config.REGISTRIES), checked before any work.
AMP_DTYPES = {"auto": lambda: torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
              "bf16": lambda: torch.bfloat16, "fp16": lambda: torch.float16}


def inference_dtype(amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of predictions: on CUDA amp_dtype (also training's; auto: bf16 where supported, else
    fp16), bf16 on a CPU with native bf16 (2.0x faster here, benchmarks/cpu_bf16.py), none otherwise or with
    amp off. Training's predictions and every reader of an inference record use this rule."""
    if not amp:
        return None
    if device.type == "cuda":
        return AMP_DTYPES[amp_dtype]()
    return torch.bfloat16 if cpu_has_bf16() else None


def save_weights(model: nn.Module, path: Path) -> None:
    """fp16 safetensors: half the bytes, and loading it can run no code."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model: nn.Module, path: Path) -> None:
    """A saved state into `model`, strictly: a file of another network (other tensor names or shapes) is a
    ValueError saying what differs, not a KeyError on the first name."""
    state = load_file(str(path))
    ref = model.state_dict()
    missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    shapes = [k for k in set(ref) & set(state) if tuple(ref[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        raise ValueError(f"tensors of another network: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} "
                         f"unexpected (e.g. {extra[:2]}), {len(shapes)} of another shape (e.g. {sorted(shapes)[:2]})")
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()}, strict=True)
