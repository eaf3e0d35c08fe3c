"""`make predict BUNDLE=<dir> DATA=<folder> [OUT=<csv>] [IMAGES=<folder>] [DIGEST=<hex>]`: a bundle's model on a
test.csv and its images.

Reads only the bundle and the new data: no run folder, folds, OOF file or training loop. Images are decoded
and resized by the function training cached them with, networks built and loaded by the one model builder,
captions models loaded from their arrays; the blend, thresholds and min-labels rule are the submission's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from tqdm import tqdm

from bundle.manifest import AGAIN, MANIFEST, safe_name, verify
from bundle.record import BundleRecord, MemberRecord
from competition import errors, load_spec
from competition.artifacts import atomic_path, exclusive_lock, read_json, remove_temporaries, write_json
from competition.errors import UserError
from competition.formats import as_stored, submission_frame
from competition.images import MAX_PIXELS, load_resized, source_files, source_name
from competition.reader import image_files, load_test
from competition.records import field_problems
from pipelines import text_encoder
from pipelines.captions import CaptionModel
from pipelines.inference import Network, available_runtime, load_network, predict_images
from submissions.blend_file import apply_saved, load_stacker, require_reader
from submissions.validate import validate_frame

BATCH = 64
PROGRESS_S = 30  # seconds between progress lines where stderr is no terminal (a notebook's log)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Where the new data differs from the spec the bundle carries, and what the bundle must be."""
    images: Path | None = None     # the test images' folder (default: the spec's test images under DATA)
    digest: str | None = None      # the bundle's digest, as `make export` printed it: any other bundle is refused
    max_pixels: int = MAX_PIXELS   # an image over this many pixels is refused before it is decoded


def loading(path: Path, what: str):
    """A library's error loading a bundle file (edited by hand and re-hashed: another format, another network's
    tensors, object arrays) as one UserError naming the file."""
    return errors.loading(path, f"cannot be loaded as {what}", AGAIN, (SafetensorError,))


def load_nets(folder: Path, members: tuple[MemberRecord, ...], device: torch.device) -> list[tuple[int, Network]]:
    """(member index, network) for every weight file of the image members, each built from its inference record;
    networks whose frozen trunks are identical share one runner."""
    nets, runners = [], {}
    for i, m in enumerate(members):
        if m.kind != "image":
            continue
        for w, record in zip(m.weights, m.inference, strict=True):
            with loading(folder / w, f"the weights of {record.net.backbone}"):
                nets.append((i, load_network(record, folder / w, device, runners)))
    return nets


def batch_probs(nets: list[tuple[int, Network]], decoded: dict, device,
                captions: dict | None = None) -> dict[int, torch.Tensor]:
    """member index -> (its networks, rows, labels): each network's `predict_images` (pipelines.inference:
    training's own rules) on one batch decoded at every input size; normalised views and a shared trunk's features
    computed once. `captions`: member index -> the batch's caption embeddings, for the members that read them."""
    memo: dict = {}
    out: dict[int, list] = {}
    for member, n in nets:
        out.setdefault(member, []).append(predict_images(n, decoded[n.record.net.img_size], device, memo,
                                                         (captions or {}).get(member)))
    return {member: torch.stack(probs) for member, probs in out.items()}


def caption_inputs(folder: Path, members: tuple[MemberRecord, ...], nets: list[tuple[int, Network]],
                   test: pd.DataFrame) -> dict[int, np.ndarray]:
    """member index -> its test captions' sentence embeddings, for the image members with a caption input, by the
    encoder each ships (shared/): an encoder embeds the captions once, however many members read it."""
    by_encoder, out = {}, {}
    for i in sorted({i for i, n in nets if n.record.net.caption_input != "none"}):
        encoder = folder / members[i].shared[0]  # its one encoder (BundleRecord checks it names one)
        if encoder not in by_encoder:
            with loading(encoder, "a sentence encoder"):
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
            shown = source_files(paths[r])[0].parent / source_name(paths[r])
            raise UserError(f"{shown}: cannot decode the image of {at} ({type(e).__name__}: {e})") from None
    return decode


def progress(total: int, desc: str):
    """A bar on a terminal; elsewhere (a notebook's log) a line every PROGRESS_S seconds."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=0.1 if tty else PROGRESS_S, ascii=not tty)


def image_members(nets: list[tuple[int, Network]], captions: dict[int, np.ndarray], test: pd.DataFrame,
                  paths: list[Path], n_labels: int, device: torch.device, where: str = "test.csv",
                  max_pixels: int = MAX_PIXELS) -> dict[int, np.ndarray]:
    """member index -> its mean over its networks (fold models or refit) and TTA views, in one pass over the
    images: each decoded once per input size, each shared trunk computed once. Each network's probabilities are
    rounded as training stored its test probabilities (`as_stored`), then averaged as `make submit` averages
    those files: a probability submission's cells come out the same, not one rounding apart."""
    if not nets:
        return {}
    sizes = sorted({n.record.net.img_size for _, n in nets})
    decode_row = decoder(paths, test, where, max_pixels)
    out = {i: [] for i, _ in nets}
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
            batch = {m: torch.from_numpy(e[rows]) for m, e in captions.items()}
            for i, prob in batch_probs(nets, decoded, device, batch).items():
                out[i].append(prob.cpu().numpy().astype(np.float64))
            bar.update(min(BATCH, len(test) - starts[b]))
    return {i: as_stored(np.concatenate(o, axis=1)).mean(0) if o else np.zeros((0, n_labels)) for i, o in out.items()}


def captions_models(folder: Path, member: MemberRecord) -> list[CaptionModel]:
    """A captions member's fold models (or refit), each finding the member's shared sentence encoder if any."""
    encoder = folder / member.shared[0] if member.shared else None
    models = []
    for w in member.weights:
        with loading(folder / w, "a captions model"):
            models.append(CaptionModel.load(folder / w, encoder))
    return models


def captions_probs(models: list[CaptionModel], texts) -> np.ndarray:
    """The mean of the models' probabilities (each rounded as training stored it, `as_stored`). A sentence encoder
    is shared by the member's fold models: the captions are embedded once, not once per fold."""
    x = None if models[0].vecs else models[0].features(texts)
    return np.mean([as_stored(m.predict(texts, x=x)) for m in models], axis=0)


def sidecar(out: Path) -> Path:
    """The record beside a predictions CSV. OUT must end in .csv, so `<OUT>.json` can never be another OUT."""
    return out.with_name(out.name + ".json")


@dataclasses.dataclass(frozen=True)
class PredictionRecord:
    """What `make predict` writes beside its CSV: which bundle (by digest) made it, from which data."""
    bundle: str
    bundle_digest: str
    data: str
    images: str
    rows: int
    csv_sha256: str
    device: str

    @classmethod
    def from_json(cls, data, where: Path) -> PredictionRecord:
        problems = field_problems(cls, data) if isinstance(data, dict) else [f"a JSON {type(data).__name__}"]
        if problems:
            raise UserError(f"{where}: exists and is not the record `make predict` writes beside its CSV "
                            f"({'; '.join(problems)[:200]}); remove it, or choose another OUT=")
        return cls(**data)


def check_output(out: Path, folder: Path) -> Path:
    """Where the predictions go, checked before any work: a .csv outside the bundle, writable, and its record's
    place free or holding a predictions record."""
    out = Path(out).absolute()
    if out.suffix.lower() != ".csv":
        raise UserError(f"OUT={out}: predictions are a .csv file (its record is written beside it as {out.name}.json)")
    if out.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"OUT={out}: inside the bundle {folder}; a bundle holds only what `make export` wrote "
                        "(and is read-only on Kaggle): write the predictions elsewhere, e.g. OUT=submission.csv")
    for path in (out, sidecar(out)):
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: exists and is not a file (a folder?); choose another OUT= or move it")
    if sidecar(out).exists():
        PredictionRecord.from_json(read_json(sidecar(out), "remove it, or choose another OUT="), sidecar(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise UserError(f"OUT={out}: cannot be written there ({e}); OUT= names a writable place, e.g. the working "
                        "folder") from None
    return out


def check_owner(out: Path, bundle_digest: str) -> None:
    """An existing OUT is replaced only by the bundle that wrote it (its record names the bundle's digest)."""
    side = sidecar(out)
    owner = PredictionRecord.from_json(read_json(side), side).bundle_digest if side.is_file() else None
    if out.exists() and owner != bundle_digest:
        raise UserError(f"{out}: exists and holds predictions of another bundle (or of no bundle); "
                        "choose another OUT= or remove it")


@contextlib.contextmanager
def output_lock(out: Path):
    """One `make predict` at a time per OUT (two bundles writing one new OUT would each exit 0, one replacing the
    other); under the lock, temporaries a killed earlier run left beside OUT are removed."""
    key = hashlib.sha1(str(out).encode()).hexdigest()[:16]
    with exclusive_lock(Path(tempfile.gettempdir()) / f"multilabel-predict-{key}.lock", wait=False) as held:
        if not held:
            raise UserError(f"{out}: another `make predict` is writing it now; wait for it, or choose another OUT=")
        remove_temporaries(out.parent, out.name)
        remove_temporaries(out.parent, sidecar(out).name)
        yield


def read_bundle(folder: Path, manifest: dict) -> BundleRecord:
    """bundle.json as a typed record, every file it names listed in the manifest."""
    path = folder / "bundle.json"
    if "bundle.json" not in manifest["files"]:
        raise UserError(f"{path}: not listed in {MANIFEST}; export the bundle again (`make export`)")
    record = BundleRecord.from_json(read_json(path, "export the bundle again (`make export`)"), str(path))
    for name in record.names():
        safe_name(folder, name, path)
        if name not in manifest["files"] and not any(f.startswith(name.rstrip("/") + "/") for f in manifest["files"]):
            raise UserError(f"{path}: names {name}, which the bundle does not hold; export the bundle again")
    return record


def read_record(folder: Path) -> BundleRecord:
    """A bundle's record without verifying its files (benchmarks of a bundle this machine exported)."""
    path = Path(folder) / "bundle.json"
    return BundleRecord.from_json(read_json(path), str(path))


def check_dependencies(record: BundleRecord, device: torch.device, log) -> None:
    """What the members and the blend need, before any of them runs."""
    require_reader(Path(record.blend.file) if record.blend.file else None)
    onnx = any(r.trunk_runtime == "onnx" for m in record.members for r in m.inference)
    if onnx and available_runtime("onnx", device) != "onnx":  # the rule load_network follows
        why = "on CUDA" if device.type != "cpu" else "onnxruntime and onnx are not both installed"
        log(f"note: trunk features were computed by ONNX Runtime in training; they run eager here ({why}): "
            "probabilities differ from the run's by float rounding (pip install onnxruntime onnx for the same)")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """Every model a bundle predicts with, loaded (and so checked) before any image is decoded; sentence encoders
    load (text_encoder.load checks them) when the captions are embedded, which is before the image pass too."""
    nets: list                     # (member index, Network) of the image members
    captions: dict                 # member index -> its CaptionModels
    stacker: object                # the blend's second level (blend_file.load_stacker), or None


def load_models(folder: Path, record: BundleRecord, device: torch.device) -> Loaded:
    nets = load_nets(folder, record.members, device)
    captions = {i: captions_models(folder, m) for i, m in enumerate(record.members) if m.kind == "captions"}
    n_labels = len(record.tokens)
    stacker = (load_stacker(folder / record.blend.file, n_labels, n_labels * len(record.members))
               if record.blend.file else None)
    return Loaded(nets, captions, stacker)


def member_probs(folder: Path, record: BundleRecord, test: pd.DataFrame, paths: list[Path], device,
                 max_pixels: int = MAX_PIXELS, models: Loaded | None = None,
                 where: str = "test.csv") -> list[np.ndarray]:
    """The members' probabilities for the test rows, as `make predict` computes them: captions members first, then
    the image members together in one pass over the images."""
    models = models or load_models(folder, record, device)
    texts = test["caption"].to_numpy() if "caption" in test else None
    by_member = {i: captions_probs(ms, texts) for i, ms in models.captions.items()}
    by_member |= image_members(models.nets, caption_inputs(folder, record.members, models.nets, test), test,
                               paths, len(record.tokens), device, where, max_pixels)
    return [by_member[i] for i in range(len(record.members))]


def predict_bundle(folder: Path, data: Path, out: Path | None = None, options: PredictOptions = PredictOptions(),
                   log=print) -> Path:
    """Predict `data`'s test rows with the bundle in `folder`; the validated submission's path (default
    submission.csv in the working folder). The bundle is verified and read from a private copy made from the
    bytes that were hashed; errors name the bundle's own files."""
    folder, data = Path(folder), Path(data)
    out = check_output(Path(out) if out else Path("submission.csv"), folder)
    with output_lock(out), tempfile.TemporaryDirectory(prefix="bundle-") as private:
        try:
            return predict_verified(folder, data, out, options, log, Path(private))
        except UserError as e:
            raise UserError(str(e).replace(str(Path(private)), str(folder))) from None


def predict_verified(folder: Path, data: Path, out: Path, options: PredictOptions, log, private: Path) -> Path:
    verified = verify(folder, options.digest, copy_to=private)
    root = verified.root
    record = read_bundle(root, verified.manifest)
    spec = load_spec(str(root / "spec.yaml"))
    if list(record.tokens) != spec.tokens:
        raise UserError(f"{folder}: bundle.json's label tokens differ from its spec.yaml's; export the bundle again")
    if record.metric != spec.metric:
        raise UserError(f"{folder}: bundle.json's metric {record.metric} differs from its spec.yaml's {spec.metric}; "
                        "export the bundle again")
    check_owner(out, verified.digest)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_dependencies(record, device, log)
    models = load_models(root, record, device)
    image_root = Path(options.images) if options.images else data / spec.test_images
    captions = any(m.reads_captions for m in record.members)
    images = any(m.kind == "image" for m in record.members)
    test = load_test(spec, data, captions, image_root if images else None, options.max_pixels)
    probs = member_probs(root, record, test, image_files(image_root, test["id"], spec), device, options.max_pixels,
                         models, spec.test_csv)
    log("predicted " + ", ".join(f"{m.name} ({m.uses})" for m in record.members))
    prob = apply_saved(record.blend.method, record.blend.weights, models.stacker, probs)
    frame = submission_frame(spec, test["id"], prob, record.thresholds)
    validate_frame(frame, spec, list(test["id"]), where=str(out))
    text = frame.to_csv(index=False)
    # The record first: a kill before the CSV's rename leaves a record naming this bundle, so the next run
    # replaces the CSV instead of refusing it as another bundle's.
    write_json(sidecar(out), dataclasses.asdict(PredictionRecord(
        str(folder.absolute()), verified.digest, str(data.absolute()), str(image_root.absolute()), len(frame),
        hashlib.sha256(text.encode()).hexdigest(), str(device))))
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    log(f"predictions: {out} ({len(frame)} rows, {record.blend.method} of "
        f"{'+'.join(m.name for m in record.members)}); record beside it: {sidecar(out).name}")
    return out
