"""manifest.json: what a bundle holds, so a changed, missing or foreign file is caught before any prediction."""
from __future__ import annotations

import subprocess
from pathlib import Path

from competition.artifacts import file_sha256, read_json, write_json
from competition.errors import UserError

FORMAT = 1  # bundle.json's layout; `make predict` refuses another
MODEL_DIRS = ("members/", "blend.npz")  # what the budget counts: the model's own bytes


def git_commit(root: Path) -> str:
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import numpy
    import timm
    import torch
    return {"torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__}


def write_manifest(folder: Path, side: dict) -> dict:
    """sha256 and bytes of every file under `folder`, the model's MB (members and blend), scores, versions."""
    files = {str(p.relative_to(folder)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    model_bytes = sum(f["bytes"] for name, f in files.items() if name.startswith(MODEL_DIRS))
    manifest = {"format": FORMAT, "files": files, "total_mb": round(model_bytes / 2**20, 3),
                "all_files_mb": round(sum(f["bytes"] for f in files.values()) / 2**20, 3),
                "scores": {"oof": side["oof_score"], "nested": side["nested_score"], "metric": side["metric"]},
                "git_commit": git_commit(Path(__file__).resolve().parents[1]), "versions": versions()}
    write_json(folder / "manifest.json", manifest)
    return manifest


def verify(folder: Path) -> dict:
    """The manifest, after checking that every file it lists is there with its bytes; else one UserError
    naming the file. Files it does not list (a notebook's own) are ignored."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; {folder} is not a bundle (`make export` writes one)")
    manifest = read_json(path, "export the bundle again")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{folder}: bundle format {manifest.get('format')!r}, this project reads format {FORMAT}: "
                        "export it again with this version, or install the wheel inside it")
    for name, want in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise UserError(f"{p}: missing from the bundle (manifest.json lists it); export the bundle again")
        if p.stat().st_size != want["bytes"] or file_sha256(p) != want["sha256"]:
            raise UserError(f"{p}: changed since export (sha256 differs from manifest.json); export the bundle again")
    return manifest
