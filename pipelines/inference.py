"""How one trained image network predicts: its inference record, and the one step every consumer runs it by.

A fit writes its record once, in its done.json (`inference`), from the run's resolved config and what training
knew: the pretraining's mean/std, the runtime that computed its cached trunk features. Training's validation and
test predictions, the trunk cache, Grad-CAM, the benchmarks and `make predict` read the record and call the
functions below, so each rule (the mirror view, the fp16 rounding of trunk features, the autocast dtype, the
normalisation, the input size) is written once. Nothing is filled in from today's defaults: a record of another
format is refused by name, and a network is rebuilt from the record alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from competition.errors import UserError
from competition.formats import FitRecord
from competition.records import field_problems
from pipelines.model import MultiLabelNet, NetSpec, TopOfNet, inference_dtype, load_weights, trunk_digest
from pipelines.preprocess import DeviceNormalize
from pipelines.runtime import resolve_runtime, trunk_runner

RECORD_FORMAT = 4
# A record of an older format, as the next one reads it: format 1 predates caption inputs (none had one), format 2
# grouped label queries (one query per label), format 3 input channels (RGB).
UPGRADES = {1: lambda data: {**data, "net": {**data["net"], "caption_input": "none"}, "format": 2},
            2: lambda data: {**data, "net": {**data["net"], "head_groups": 0}, "format": 3},
            3: lambda data: {**data, "net": {**data["net"], "in_chans": 3}, "format": 4}}
FEATURE_DTYPE = torch.float16  # what the trunk cache stores features as; every reader rounds to it too


@dataclasses.dataclass(frozen=True)
class InferenceRecord:
    """Everything one trained network needs to predict as training did, and nothing it does not."""
    net: NetSpec                  # what the one model builder makes
    num_classes: int
    train_from: int | None        # stages before it: a frozen trunk whose output training cached
    mean: tuple[float, ...]       # the pretraining's normalisation (DeviceNormalize)
    std: tuple[float, ...]
    tta: bool                     # the mirror image's probabilities averaged in
    amp: bool                     # autocast policy (model.inference_dtype resolves it on the machine)
    amp_dtype: str
    trunk_runtime: str | None     # eager | onnx: what computed the trunk features; None without a trunk
    feature_dtype: str | None     # "float16": trunk features as the cache stores them; None without a trunk
    format: int = RECORD_FORMAT

    @classmethod
    def of(cls, cfg, num_classes: int, mean, std, device: torch.device) -> InferenceRecord:
        """A fit's record, from its resolved config, on the device it trains on."""
        trunk = cfg.train_from is not None
        return cls(NetSpec.of(cfg, len(mean)), num_classes, cfg.train_from, tuple(mean), tuple(std), cfg.tta,
                   cfg.amp, cfg.amp_dtype, resolve_runtime(cfg.trunk_runtime, device) if trunk else None,
                   str(FEATURE_DTYPE).removeprefix("torch.") if trunk else None)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data, where: str) -> InferenceRecord:
        """The record as a fit or a bundle stored it; one of another format or shape is one error naming it."""
        got = data.get("format") if isinstance(data, dict) else None
        while got in UPGRADES and isinstance(data.get("net"), dict):
            data = UPGRADES[got](data)
            got = data["format"]
        if got != RECORD_FORMAT:
            raise UserError(f"{where}: inference record of format {got!r}, not {RECORD_FORMAT}"
                            f"{' (no record: trained before inference records)' if data is None else ''}; "
                            "train the model again (make train ... FORCE=1), then make submit and make export")
        problems = field_problems(cls, data)
        if isinstance(data.get("net"), dict):
            problems += [f"net.{p}" for p in field_problems(NetSpec, data["net"])]
        if not problems and min(data["num_classes"], data["net"]["img_size"]) < 1:
            problems.append("num_classes and net.img_size must be positive")
        if not problems and not len(data["mean"]) == len(data["std"]) == data["net"]["in_chans"] >= 1:
            problems.append(f"{len(data['mean'])} means and {len(data['std'])} stds for {data['net']['in_chans']} "
                            "input channels")
        if problems:
            raise UserError(f"{where}: malformed inference record ({'; '.join(problems)}); train the model again")
        net = NetSpec(**{**data["net"], "head_hidden": tuple(data["net"]["head_hidden"])})
        return cls(**{**data, "net": net, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def dtype(self, device: torch.device) -> torch.dtype | None:
        return inference_dtype(self.amp, self.amp_dtype, device)

    def normalizer(self, device: torch.device, channels_last: bool = True) -> DeviceNormalize:
        return DeviceNormalize(self.mean, self.std, device, channels_last)


def fit_record(fit: FitRecord, where: str) -> InferenceRecord:
    """The inference record of a fit, from its done.json."""
    return InferenceRecord.from_json(fit.inference, where)


def mirror(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[3])


def views(x, tta: bool) -> tuple:
    """The input and, with TTA, its mirror image. A trunk cache's (B, 2, C, H, W) batch holds both already. An
    input with captions, (images, embeddings), gives (view, embeddings) pairs: a mirror keeps its caption."""
    if isinstance(x, tuple):
        return tuple((v, *x[1:]) for v in views(x[0], tta))
    both = (x[:, 0], x[:, 1]) if x.dim() == 5 else (x, mirror(x))
    return both if tta else both[:1]


def call(module: nn.Module, x) -> torch.Tensor:
    """`module` on one input: a tensor, or (images, caption embeddings) for a network with a caption input."""
    return module(*x) if isinstance(x, tuple) else module(x)


def round_features(features: torch.Tensor) -> torch.Tensor:
    """Trunk features as the cache stores them (FEATURE_DTYPE), back in float32 for the top."""
    return features.to(FEATURE_DTYPE).float()


def mean_sigmoid(module: nn.Module, inputs, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """The sigmoid of `module` averaged over its views, under autocast to `dtype` when given."""
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        total = sum(torch.sigmoid(call(module, x).float()) for x in inputs)
    return total / len(inputs)


@dataclasses.dataclass(frozen=True)
class Network:
    """One trained network, ready to predict as its record says: the whole net, or its top on the frozen trunk
    run in the record's runtime (one runner per trunk key: networks whose trunks are identical share it)."""
    record: InferenceRecord
    net: MultiLabelNet
    top: nn.Module | None
    trunk: Callable | None        # normalised images -> trunk output (pipelines.runtime.trunk_runner)
    trunk_key: str | None
    dtype: torch.dtype | None


def available_runtime(trained: str, device: torch.device) -> str:
    """The runtime a trunk's features were computed with, where this machine has it (else eager: `make predict`
    says so once, before any work)."""
    return "eager" if trained == "onnx" and resolve_runtime("auto", device) != "onnx" else trained


def load_network(record: InferenceRecord, weights: Path, device: torch.device, runners: dict | None = None) -> Network:
    """A trained network from its record and weight file, float32, eval mode, channels_last, on `device`."""
    net = MultiLabelNet(record.net, record.num_classes)
    load_weights(net, weights)
    net = net.float().eval().to(device).to(memory_format=torch.channels_last)
    dtype, start = record.dtype(device), record.train_from
    if start is None:
        return Network(record, net, None, None, None, dtype)
    runtime = available_runtime(record.trunk_runtime, device)
    key = trunk_digest(net, start, repr((record.net.img_size, record.mean, record.std, start, str(dtype),
                                         runtime))).hexdigest()
    runners = {} if runners is None else runners
    if key not in runners:
        runners[key] = trunk_runner(net, start, record.net.img_size, device, dtype, runtime)
    return Network(record, net, TopOfNet(net, start), runners[key], key, dtype)


@torch.no_grad()
def predict_images(n: Network, images, device: torch.device, memo: dict | None = None,
                   captions: torch.Tensor | None = None) -> torch.Tensor:
    """One network's probabilities for a batch of decoded images (uint8 NHWC at its record's input size):
    normalised, its views, the trunk's features rounded as the cache stores them and its top (or the whole net),
    the sigmoid averaged over the views. `memo` shares the normalised views and trunk features between the
    networks of one batch that compute them identically (same size and normalisation; same trunk key).
    `captions`: the batch's sentence embeddings by the record's caption encoder, for a network that reads them."""
    memo = {} if memo is None else memo
    r = n.record
    if (r.net.caption_input != "none") != (captions is not None):
        raise ValueError(f"caption_input {r.net.caption_input}: captions {'missing' if captions is None else 'given'}")
    key = ("views", r.net.img_size, r.mean, r.std, r.tta)
    if key not in memo:
        memo[key] = views(r.normalizer(device)(torch.as_tensor(np.asarray(images))), r.tta)
    inputs = memo[key]
    if n.top is None:
        return mean_sigmoid(n.net, with_captions(inputs, captions, device), device, n.dtype)
    features = []
    for v, x in enumerate(inputs):
        if (n.trunk_key, v) not in memo:
            memo[n.trunk_key, v] = round_features(n.trunk(x))
        features.append(memo[n.trunk_key, v])
    return mean_sigmoid(n.top, with_captions(features, captions, device), device, n.dtype)


def with_captions(inputs, captions: torch.Tensor | None, device: torch.device) -> tuple:
    """Each view with the batch's caption embeddings beside it (a mirror keeps its caption)."""
    if captions is None:
        return tuple(inputs)
    captions = torch.as_tensor(captions, dtype=torch.float32).to(device)
    return tuple((x, captions) for x in inputs)
