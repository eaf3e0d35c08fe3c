"""`make predict BUNDLE=<dir> DATA=<folder> [OUT=<csv>]`: a bundle's model on a test.csv and its images.

Reads only the bundle and the new data: no run folder, folds, OOF file or training loop. Images are decoded
and resized by the function training cached them with, networks built and loaded by the one model builder,
captions models loaded from their arrays; the blend, thresholds and min-labels rule are the submission's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from bundle.manifest import verify
from competition import load_spec
from competition.artifacts import atomic_path, file_sha256, read_json, write_json
from competition.errors import UserError
from competition.images import load_resized
from competition.metrics import decide
from competition.probs import logit, sigmoid, stack_features, weighted_mean
from competition.reader import load_test
from pipelines.captions import CaptionModel
from pipelines.model import TopOfNet, inference_dtype, load_trained, trunk_digest
from pipelines.preprocess import DeviceNormalize
from pipelines.runtime import resolve_runtime, trunk_runner
from submissions.validate import validate_frame

BATCH = 64


@dataclasses.dataclass(frozen=True)
class ImageNet:
    """One network of an image member, ready to run: its top alone when its trunk is a shared frozen one."""
    member: int                # index of its member among the bundle's image members
    cfg: dict
    net: torch.nn.Module
    top: torch.nn.Module | None  # the stages after train_from and the head; None: the whole net runs
    view_key: tuple            # input size, normalisation, TTA: networks with equal keys see the same tensors
    trunk_key: str | None      # equal keys: identical frozen trunks in one runtime, computed once per image and view
    trunk_run: object          # normalised images -> trunk output (pipelines.runtime.trunk_runner), shared by key
    dtype: torch.dtype | None


def predict_runtime(trained: str, device: torch.device, log) -> str:
    """The runtime a trunk's features were computed with in training, where this machine has it."""
    if trained == "onnx" and resolve_runtime("auto", device) != "onnx":
        log("note: this member's trunk features were computed by ONNX Runtime in training; it runs eager here "
            "(no onnxruntime, or CUDA): probabilities differ from the run's by float rounding")
        return "eager"
    return trained


def load_nets(folder: Path, records: list[dict], n_labels: int, device: torch.device,
              log=print) -> list[ImageNet]:
    nets, runners = [], {}
    for i, record in enumerate(records):
        cfg, start = record["config"], record["config"]["train_from"]
        dtype = inference_dtype(cfg, device)
        for w, trained in zip(record["weights"], record.get("trunk_runtimes", ["eager"] * len(record["weights"]))):
            net, mean, std = load_trained(cfg, n_labels, folder / w)
            net = net.to(device).to(memory_format=torch.channels_last)
            view_key = (cfg["img_size"], tuple(mean), tuple(std), bool(cfg["tta"]))
            key = run = None
            if start is not None:
                runtime = predict_runtime(trained, device, log)
                key = trunk_digest(net, start, repr((view_key, start, str(dtype), runtime))).hexdigest()
                if key not in runners:
                    runners[key] = trunk_runner(net, start, cfg["img_size"], device, dtype, runtime)
                run = runners[key]
            nets.append(ImageNet(i, cfg, net, None if start is None else TopOfNet(net, start), view_key, key, run,
                                 dtype))
    return nets


def views_of(batch: np.ndarray, key: tuple, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The normalised channels_last input and, with TTA, its mirror image: as training predicted."""
    _, mean, std, tta = key
    x = DeviceNormalize(mean, std, device, channels_last=True)(torch.from_numpy(batch))  # training's own step
    return (x, torch.flip(x, dims=[3])) if tta else (x,)


@torch.no_grad()
def batch_probs(nets: list[ImageNet], views: dict, n_members: int, device: torch.device) -> list[torch.Tensor]:
    """Each member's sum of its networks' sigmoid outputs over their views; a shared trunk runs once per view."""
    features: dict = {}
    sums: list = [0.0] * n_members
    for n in nets:
        autocast = torch.autocast(device.type, dtype=n.dtype) if n.dtype else contextlib.nullcontext()
        with autocast:
            for v, x in enumerate(views[n.view_key]):
                if n.top is None:
                    logits = n.net(x)
                else:
                    if (n.trunk_key, v) not in features:  # rounded to fp16, as the trunk cache stores it
                        features[n.trunk_key, v] = n.trunk_run(x).half().float()
                    logits = n.top(features[n.trunk_key, v])
                sums[n.member] = sums[n.member] + torch.sigmoid(logits.float())
    return sums


def image_members(folder: Path, records: list[dict], test: pd.DataFrame, image_root: Path, n_labels: int,
                  device: torch.device) -> list[np.ndarray]:
    """Each image member's mean over its networks (fold models or refit) and TTA views, in one pass over the
    images: each decoded once per input size, each shared trunk computed once."""
    nets = load_nets(folder, records, n_labels, device)
    counts = [sum(2 if n.view_key[3] else 1 for n in nets if n.member == i) for i in range(len(records))]
    sizes = sorted({n.view_key[0] for n in nets})
    paths, out = [image_root / i for i in test["id"]], [[] for _ in records]
    def decode(start: int) -> dict:
        chunk = paths[start:start + BATCH]
        return {s: np.stack(list(pool.map(lambda p, s=s: load_resized(p, s), chunk))) for s in sizes}
    starts = list(range(0, len(paths), BATCH))
    with ThreadPoolExecutor(4) as pool, ThreadPoolExecutor(1) as ahead:
        # The next batch decodes while this one runs (JPEG decoding and ONNX Runtime both release the GIL).
        pending = ahead.submit(decode, starts[0]) if starts else None
        for i in tqdm(range(len(starts)), desc="predict images", disable=not sys.stderr.isatty()):
            decoded = pending.result()
            if i + 1 < len(starts):
                pending = ahead.submit(decode, starts[i + 1])
            views = {key: views_of(decoded[key[0]], key, device) for key in {n.view_key for n in nets}}
            for i, total in enumerate(batch_probs(nets, views, len(records), device)):
                out[i].append((total / counts[i]).cpu().numpy().astype(np.float64))
    return [np.concatenate(o) if o else np.zeros((0, n_labels)) for o in out]


def captions_models(folder: Path, record: dict) -> list[CaptionModel]:
    """A captions member's fold models (or refit), each finding the member's shared sentence encoder if any."""
    encoder = folder / record["shared"][0] if record["shared"] else None
    return [CaptionModel.load(folder / w, encoder) for w in record["weights"]]


def captions_probs(models: list[CaptionModel], texts) -> np.ndarray:
    """The mean of the models' probabilities. A sentence encoder is shared by the member's fold models: the
    captions are embedded once, not once per fold."""
    x = None if models[0].vecs else models[0].features(texts)
    return np.mean([m.predict(texts, x=x) for m in models], axis=0)


def captions_member(folder: Path, record: dict, test: pd.DataFrame) -> np.ndarray:
    return captions_probs(captions_models(folder, record), test["caption"].to_numpy())


# What blend.skops may build beyond skops' default-trusted scikit-learn and numpy types: the trees of
# HistGradientBoostingClassifier and the optimizer an MLPClassifier keeps. Anything else in the file is refused.
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]


def stacker_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """A stacked blend's final learner on the stacked features `x` (submissions.blend's PerLabel/MultiOutputMLP
    predict, from the bundle's files): per-label LR arrays (npz), or trees / an MLP (skops)."""
    if path.suffix == ".npz":
        arrays = np.load(path)
        prob, constant = sigmoid(x @ arrays["coef"].T + arrays["intercept"]), arrays["constant"]
    else:
        import skops.io
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
        if untrusted:
            raise UserError(f"{path}: holds types this project does not build ({', '.join(untrusted)}); "
                            "export the bundle again with this project's `make export`")
        state = skops.io.load(path, trusted=SKOPS_TRUSTED)
        prob = (state["net"].predict_proba(x) if "net" in state else
                np.stack([np.zeros(len(x)) if m is None else m.predict_proba(x)[:, 1] for m in state["models"]],
                         axis=1))
        constant = state["constant"]
    prob[:, ~np.isnan(constant)] = constant[~np.isnan(constant)]
    return prob


def apply_blend(folder: Path, blend: dict, probs: list[np.ndarray]) -> np.ndarray:
    """The submission's blend of the members' probabilities (submissions.blend, from arrays)."""
    method = blend["method"]
    if method == "weighted_logit":
        return sigmoid(weighted_mean([logit(p) for p in probs], blend["weights"]))
    if method in ("mean", "weighted"):
        return weighted_mean(probs, blend["weights"])
    return stacker_probs(folder / blend.get("file", "blend.npz"), stack_features(probs))


def check_out(out: Path, bundle_sha: str) -> None:
    """Never overwrite another bundle's predictions (the sidecar beside a CSV names its bundle)."""
    side = out.with_suffix(".json")
    if out.exists() and (not side.is_file() or read_json(side).get("bundle_sha256") != bundle_sha):
        raise UserError(f"{out}: exists and holds predictions of another bundle (or of no bundle); "
                        "choose another OUT= or remove it")


def member_probs(folder: Path, records: list[dict], test: pd.DataFrame, data: Path, spec, device) -> list[np.ndarray]:
    """The members' probabilities for the test rows, as `make predict` computes them (image members together)."""
    images = [r for r in records if r["kind"] == "image"]
    by_image = dict(zip((r["name"] for r in images),
                        image_members(folder, images, test, data / spec.image_dir, len(spec.tokens), device)))
    return [by_image[r["name"]] if r["kind"] == "image" else captions_member(folder, r, test) for r in records]


def predict_bundle(folder: Path, data: Path, out: Path | None = None, log=print) -> Path:
    """Predict `data`'s test rows with the bundle in `folder`; the validated submission's path."""
    folder, data = Path(folder), Path(data)
    verify(folder)
    bundle = json.loads((folder / "bundle.json").read_text())
    spec = load_spec(str(folder / "spec.yaml"))
    out = Path(out) if out else folder / "predictions" / f"{data.resolve().name}.csv"
    bundle_sha = file_sha256(folder / "manifest.json")
    check_out(out, bundle_sha)
    captions = any(m["kind"] == "captions" for m in bundle["members"])
    test = load_test(spec, data, captions)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probs = member_probs(folder, bundle["members"], test, data, spec, device)
    log("predicted " + ", ".join(f"{r['name']} ({r['uses']})" for r in bundle["members"]))
    prob = apply_blend(folder, bundle["blend"], probs)
    pred = decide(prob, np.asarray(bundle["thresholds"]), bundle["min_labels"])
    frame = pd.DataFrame({spec.id_column: list(test["id"]),
                          spec.label_column: [spec.label_separator.join(t for t, p in zip(spec.tokens, row) if p)
                                              for row in pred]})
    validate_frame(frame, spec, list(test["id"]), where=str(out))
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    write_json(out.with_suffix(".json"), {"bundle": str(folder), "bundle_sha256": bundle_sha,
                                          "data": str(data), "rows": len(frame), "device": str(device)})
    log(f"predictions: {out} ({len(frame)} rows, {bundle['blend']['method']} of "
        f"{'+'.join(m['name'] for m in bundle['members'])})")
    return out
