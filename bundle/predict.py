"""`make predict BUNDLE=<dir> DATA=<folder> [OUT=<csv>]`: a bundle's model on a test.csv and its images.

Reads only the bundle and the new data: no run folder, folds, OOF file or training loop. Images are decoded
and resized by the function training cached them with, networks built and loaded by the one model builder,
captions models loaded from their arrays; the blend, thresholds and min-labels rule are the submission's.
"""
from __future__ import annotations

import contextlib
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
from pipelines.model import forward_as_trained, inference_dtype, load_trained
from submissions.validate import validate_frame

BATCH = 64


@torch.no_grad()
def image_member(folder: Path, record: dict, test: pd.DataFrame, image_root: Path, n_labels: int,
                 device: torch.device) -> np.ndarray:
    """Mean over the member's fold models (or its refit) of sigmoid outputs, flip TTA as it was trained."""
    cfg = record["config"]
    nets = [load_trained(cfg, n_labels, folder / w) for w in record["weights"]]
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in nets[0][1:])
    nets = [n.to(device).to(memory_format=torch.channels_last) for n, _, _ in nets]
    dtype = inference_dtype(cfg, device)
    paths, out = [image_root / i for i in test["id"]], []
    show = sys.stderr.isatty()
    with ThreadPoolExecutor(4) as pool:
        for start in tqdm(range(0, len(paths), BATCH), desc=f"predict {record['name']}", disable=not show):
            batch = np.stack(list(pool.map(lambda p: load_resized(p, cfg["img_size"]), paths[start:start + BATCH])))
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            views = (x, torch.flip(x, dims=[3])) if cfg["tta"] else (x,)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with autocast:
                prob = sum(torch.sigmoid(forward_as_trained(net, cfg, v).float()) for net in nets for v in views)
            prob = prob / (len(nets) * len(views))
            out.append(prob.cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, n_labels))


def captions_member(folder: Path, record: dict, test: pd.DataFrame) -> np.ndarray:
    encoder = folder / record["shared"][0] if record["shared"] else None
    texts = test["caption"].to_numpy()
    return np.mean([CaptionModel.load(folder / w, encoder).predict(texts) for w in record["weights"]], axis=0)


def apply_blend(folder: Path, blend: dict, probs: list[np.ndarray]) -> np.ndarray:
    """The submission's blend of the members' probabilities (submissions.blend, from arrays)."""
    method = blend["method"]
    if method == "weighted_logit":
        return sigmoid(weighted_mean([logit(p) for p in probs], blend["weights"]))
    if method in ("mean", "weighted"):
        return weighted_mean(probs, blend["weights"])
    arrays = np.load(folder / "blend.npz")
    prob = sigmoid(stack_features(probs) @ arrays["coef"].T + arrays["intercept"])
    constant = ~np.isnan(arrays["constant"])
    prob[:, constant] = arrays["constant"][constant]
    return prob


def check_out(out: Path, bundle_sha: str) -> None:
    """Never overwrite another bundle's predictions (the sidecar beside a CSV names its bundle)."""
    side = out.with_suffix(".json")
    if out.exists() and (not side.is_file() or read_json(side).get("bundle_sha256") != bundle_sha):
        raise UserError(f"{out}: exists and holds predictions of another bundle (or of no bundle); "
                        "choose another OUT= or remove it")


def member_probs(folder: Path, record: dict, test: pd.DataFrame, data: Path, spec, device) -> np.ndarray:
    """One member's probabilities for the test rows, as `make predict` computes them."""
    if record["kind"] == "image":
        return image_member(folder, record, test, data / spec.image_dir, len(spec.tokens), device)
    return captions_member(folder, record, test)


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
    probs = []
    for record in bundle["members"]:
        probs.append(member_probs(folder, record, test, data, spec, device))
        log(f"predicted {record['name']} ({record['uses']})")
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
