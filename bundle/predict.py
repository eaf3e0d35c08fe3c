"""`make predict BUNDLE=<dir> DATA=<folder> [OUT=<csv>] [IMAGES=<folder>] [DIGEST=<hex>]`: a bundle's model on a
test.csv and its images.

Reads only the bundle and the new data: no run folder, folds, OOF file or training loop. Images are decoded
and resized by the function training cached them with, networks built and loaded by the one model builder,
captions models loaded from their arrays; the blend, thresholds and min-labels rule are the submission's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from bundle.manifest import MANIFEST, digest, safe_name, verify
from competition import load_spec
from competition.artifacts import atomic_path, read_json, write_json
from competition.errors import UserError
from competition.formats import submission_frame
from competition.images import MAX_PIXELS, load_resized
from competition.reader import load_test
from pipelines import text_encoder
from pipelines.captions import CaptionModel
from pipelines.inference import InferenceRecord, Network, available_runtime, load_network, predict_images
from submissions.blend_file import apply_saved, require_reader
from submissions.validate import validate_frame

BATCH = 64
PROGRESS_S = 30  # seconds between progress lines where stderr is no terminal (a notebook's log)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Where the new data differs from the spec the bundle carries, and what the bundle must be."""
    images: Path | None = None     # the test images' folder (default: the spec's image_dir under DATA)
    digest: str | None = None      # the bundle's digest, as `make export` printed it: any other bundle is refused
    max_pixels: int = MAX_PIXELS   # an image over this many pixels is refused before it is decoded


def load_nets(folder: Path, records: list[dict], n_labels: int, device: torch.device) -> list[tuple[int, Network]]:
    """(member index, network) for every weight file of the image members, each built from its inference record;
    networks whose frozen trunks are identical share one runner."""
    nets, runners = [], {}
    for i, record in enumerate(records):
        for w, inference in zip(record["weights"], record["inference"], strict=True):
            rec = InferenceRecord.from_json(inference, f"{folder / 'bundle.json'}: {w}")
            if rec.num_classes != n_labels:
                raise UserError(f"{folder / 'bundle.json'}: {w} predicts {rec.num_classes} labels, the bundle has "
                                f"{n_labels}; export the bundle again")
            nets.append((i, load_network(rec, folder / w, device, runners)))
    return nets


def batch_probs(nets: list[tuple[int, Network]], decoded: dict, n_members: int, device,
                captions: dict | None = None) -> list[torch.Tensor]:
    """Each member's mean over its networks of `predict_images` (pipelines.inference: training's own rules) on
    one batch decoded at every input size; normalised views and a shared trunk's features computed once.
    `captions`: member index -> the batch's caption embeddings, for the members that read them."""
    memo: dict = {}
    sums, counts = [0.0] * n_members, [0] * n_members
    for member, n in nets:
        sums[member] = sums[member] + predict_images(n, decoded[n.record.net.img_size], device, memo,
                                                     (captions or {}).get(member))
        counts[member] += 1
    return [total / count for total, count in zip(sums, counts)]


def caption_inputs(folder: Path, records: list[dict], nets: list[tuple[int, Network]],
                   test: pd.DataFrame) -> dict[int, np.ndarray]:
    """member index -> its test captions' sentence embeddings, for the image members with a caption input, by the
    encoder each ships (shared/): an encoder embeds the captions once, however many members read it."""
    by_encoder, out = {}, {}
    for i in sorted({i for i, n in nets if n.record.net.caption_input != "none"}):
        if len(records[i]["shared"]) != 1:
            raise UserError(f"{folder / 'bundle.json'}: {records[i]['name']} reads captions but names "
                            f"{len(records[i]['shared'])} shared parts, not its one encoder; export the bundle again")
        encoder = folder / records[i]["shared"][0]
        if encoder not in by_encoder:
            by_encoder[encoder] = text_encoder.encode(encoder, test["caption"].to_numpy())
        out[i] = by_encoder[encoder]
    return out


def decoder(paths: list[Path], test: pd.DataFrame, where: str, max_pixels: int):
    """load_resized for row `r`; an image that cannot be decoded (truncated, over the pixel limit) is one error
    naming its file and row."""
    def decode(r: int, size: int) -> np.ndarray:
        try:
            return load_resized(paths[r], size, max_pixels)
        except Exception as e:  # PIL raises several types for a broken file
            line = int(test["line"].iloc[r]) if "line" in test else 0
            at = f"{where} line {line}" if line else f"{where} row {r + 1}"
            raise UserError(f"{paths[r]}: cannot decode the image of {at} ({type(e).__name__}: {e})") from None
    return decode


def progress(total: int, desc: str):
    """A bar on a terminal; elsewhere (a notebook's log) a line every PROGRESS_S seconds."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=0.1 if tty else PROGRESS_S, ascii=not tty)


def image_members(folder: Path, records: list[dict], test: pd.DataFrame, image_root: Path, n_labels: int,
                  device: torch.device, where: str = "test.csv", max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """Each image member's mean over its networks (fold models or refit) and TTA views, in one pass over the
    images: each decoded once per input size, each shared trunk computed once."""
    if not records:
        return []
    nets = load_nets(folder, records, n_labels, device)
    captions = caption_inputs(folder, records, nets, test)
    sizes = sorted({n.record.net.img_size for _, n in nets})
    decode_row = decoder([image_root / i for i in test["id"]], test, where, max_pixels)
    out = [[] for _ in records]
    def decode(start: int) -> dict:
        rows = range(start, min(start + BATCH, len(test)))
        return {s: np.stack(list(pool.map(lambda r, s=s: decode_row(r, s), rows))) for s in sizes}
    starts = list(range(0, len(test), BATCH))
    with ThreadPoolExecutor(4) as pool, ThreadPoolExecutor(1) as ahead, progress(len(test), "predict images") as bar:
        # The next batch decodes while this one runs (JPEG decoding and ONNX Runtime both release the GIL).
        pending = ahead.submit(decode, starts[0]) if starts else None
        for b in range(len(starts)):
            decoded = pending.result()
            if b + 1 < len(starts):
                pending = ahead.submit(decode, starts[b + 1])
            rows = slice(starts[b], starts[b] + BATCH)
            for i, prob in enumerate(batch_probs(nets, decoded, len(records), device,
                                                 {m: torch.from_numpy(e[rows]) for m, e in captions.items()})):
                out[i].append(prob.cpu().numpy().astype(np.float64))
            bar.update(min(BATCH, len(test) - starts[b]))
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


def sidecar(out: Path) -> Path:
    """The record beside a predictions CSV. OUT must end in .csv, so `<OUT>.json` can never be another OUT."""
    return out.with_name(out.name + ".json")


def plan_output(out: Path, folder: Path, bundle_digest: str) -> Path:
    """Where the predictions go, checked before any work: a .csv outside the bundle, writable, and not another
    bundle's predictions (the sidecar beside a CSV names its bundle)."""
    out = Path(out).absolute()
    if out.suffix.lower() != ".csv":
        raise UserError(f"OUT={out}: predictions are a .csv file (its record is written beside it as {out.name}.json)")
    if out.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"OUT={out}: inside the bundle {folder}; a bundle holds only what `make export` wrote "
                        "(and is read-only on Kaggle): write the predictions elsewhere, e.g. OUT=submission.csv")
    side = sidecar(out)
    if out.exists() and (not side.is_file() or read_json(side, "remove it").get("bundle_digest") != bundle_digest):
        raise UserError(f"{out}: exists and holds predictions of another bundle (or of no bundle); "
                        "choose another OUT= or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise UserError(f"OUT={out}: cannot be written there ({e}); OUT= names a writable place, e.g. the working "
                        "folder") from None
    return out


def read_bundle(folder: Path, manifest: dict) -> dict:
    """bundle.json, checked: its format, and every file it names listed in the manifest."""
    path = folder / "bundle.json"
    if "bundle.json" not in manifest["files"]:
        raise UserError(f"{path}: not listed in {MANIFEST}; export the bundle again (`make export`)")
    bundle = read_json(path, "export the bundle again (`make export`)")
    if not isinstance(bundle, dict) or bundle.get("format") != manifest["format"]:
        raise UserError(f"{path}: format {bundle.get('format') if isinstance(bundle, dict) else None!r}, not "
                        f"{manifest['format']}; export the bundle again (`make export`)")
    absent = [k for k in ("members", "blend", "thresholds", "tokens") if k not in bundle]
    try:
        absent += [f"{m['name']}'s inference records" for m in bundle["members"]
                   if m["kind"] == "image" and len(m.get("inference", [])) != len(m["weights"])]
        named = [n for m in bundle["members"] for n in (*m["weights"], *m["shared"])]
        named += [bundle["blend"]["file"]] if bundle["blend"].get("file") else []
    except (KeyError, TypeError, AttributeError) as e:
        absent.append(f"{type(e).__name__}: {e}")
    if absent:
        raise UserError(f"{path}: malformed (no {', '.join(map(str, absent))}); export the bundle again")
    for name in named:
        safe_name(folder, name, path)
        if name not in manifest["files"] and not any(f.startswith(name.rstrip("/") + "/") for f in manifest["files"]):
            raise UserError(f"{path}: names {name}, which the bundle does not hold; export the bundle again")
    return bundle


def reads_captions(folder: Path, member: dict) -> bool:
    """A captions member, or an image member whose networks have a caption input (by their inference records, read
    as `load_nets` reads them)."""
    return member["kind"] == "captions" or any(
        InferenceRecord.from_json(r, f"{folder / 'bundle.json'}: {w}").net.caption_input != "none"
        for w, r in zip(member["weights"], member.get("inference", [])))


def check_dependencies(folder: Path, bundle: dict, device: torch.device, log) -> None:
    """What the members and the blend need, before any of them runs."""
    file = bundle["blend"].get("file")
    require_reader(folder / file if file else None)
    onnx = any(r.get("trunk_runtime") == "onnx" for m in bundle["members"] if m["kind"] == "image"
               for r in m["inference"] if isinstance(r, dict))
    if onnx and available_runtime("onnx", device) != "onnx":  # the rule load_network follows
        why = "on CUDA" if device.type != "cpu" else "onnxruntime and onnx are not both installed"
        log(f"note: trunk features were computed by ONNX Runtime in training; they run eager here ({why}): "
            "probabilities differ from the run's by float rounding (pip install onnxruntime onnx for the same)")


def member_probs(folder: Path, records: list[dict], test: pd.DataFrame, image_root: Path, spec, device,
                 max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """The members' probabilities for the test rows, as `make predict` computes them (image members together)."""
    images = [r for r in records if r["kind"] == "image"]
    by_image = dict(zip((r["name"] for r in images),
                        image_members(folder, images, test, image_root, len(spec.tokens), device, spec.test_csv,
                                      max_pixels)))
    return [by_image[r["name"]] if r["kind"] == "image" else captions_member(folder, r, test) for r in records]


def predict_bundle(folder: Path, data: Path, out: Path | None = None, options: PredictOptions = PredictOptions(),
                   log=print) -> Path:
    """Predict `data`'s test rows with the bundle in `folder`; the validated submission's path (default
    submission.csv in the working folder)."""
    folder, data = Path(folder), Path(data)
    manifest = verify(folder, options.digest)
    bundle, bundle_digest = read_bundle(folder, manifest), digest(folder)
    spec = load_spec(str(folder / "spec.yaml"))
    if bundle["tokens"] != spec.tokens:
        raise UserError(f"{folder}: bundle.json's label tokens differ from its spec.yaml's; export the bundle again")
    out = plan_output(Path(out) if out else Path("submission.csv"), folder, bundle_digest)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_dependencies(folder, bundle, device, log)
    kinds = {m["kind"] for m in bundle["members"]}
    image_root = Path(options.images) if options.images else data / spec.image_dir
    captions = any(reads_captions(folder, m) for m in bundle["members"])
    test = load_test(spec, data, captions, image_root if "image" in kinds else None, options.max_pixels)
    probs = member_probs(folder, bundle["members"], test, image_root, spec, device, options.max_pixels)
    log("predicted " + ", ".join(f"{r['name']} ({r['uses']})" for r in bundle["members"]))
    blend, file = bundle["blend"], bundle["blend"].get("file")
    prob = apply_saved(blend["method"], blend["weights"], folder / file if file else None, probs)
    frame = submission_frame(spec, test["id"], prob, bundle["thresholds"])
    validate_frame(frame, spec, list(test["id"]), where=str(out))
    text = frame.to_csv(index=False)
    # The record first: a kill before the CSV's rename leaves a record naming this bundle, so the next run
    # replaces the CSV instead of refusing it as another bundle's.
    write_json(sidecar(out), {"bundle": str(folder.absolute()), "bundle_digest": bundle_digest,
                              "data": str(data.absolute()), "images": str(image_root.absolute()), "rows": len(frame),
                              "csv_sha256": hashlib.sha256(text.encode()).hexdigest(), "device": str(device)})
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    log(f"predictions: {out} ({len(frame)} rows, {bundle['blend']['method']} of "
        f"{'+'.join(m['name'] for m in bundle['members'])}); record beside it: {sidecar(out).name}")
    return out
