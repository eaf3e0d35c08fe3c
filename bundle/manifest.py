"""manifest.json and SHA256SUMS: every file of a bundle, so a changed, missing, extra or foreign file is caught
before any prediction, and one digest pins the whole bundle.

SHA256SUMS is coreutils' format (`sha256sum -c SHA256SUMS` checks the bundle on any machine) and lists every file,
manifest.json included; the bundle's digest is the sha256 of SHA256SUMS itself (`sha256sum SHA256SUMS`), so one
hex string, checked before anything in the bundle is installed or run, pins every byte of it.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

from competition.artifacts import file_sha256, read_json, write_json, write_text
from competition.errors import UserError

FORMAT = 3  # 2: the manifest lists every file, SHA256SUMS pins it; 3: each image network carries its inference
#   record (pipelines/inference.py). `make predict` refuses another format by name
MANIFEST, SUMS = "manifest.json", "SHA256SUMS"
CODE_DIR = "wheel/"  # the project's code, installed by pip; every other file is read by `make predict`: model bytes
AGAIN = "export the bundle again (`make export`)"
SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


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


def model_bytes(files: dict) -> int:
    """What the size budget counts: every byte `make predict` reads (members, blend, bundle.json, spec.yaml)."""
    return sum(f["bytes"] for name, f in files.items() if not name.startswith(CODE_DIR))


def write_manifest(folder: Path, side: dict) -> dict:
    """sha256 and bytes of every file under `folder`, the model's MB, scores, versions; then SHA256SUMS."""
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    files = {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
             for name in names if name not in (MANIFEST, SUMS)}
    manifest = {"format": FORMAT, "files": files, "total_mb": round(model_bytes(files) / 2**20, 3),
                "all_files_mb": round(sum(f["bytes"] for f in files.values()) / 2**20, 3),
                "scores": {"oof": side["oof_score"], "nested": side["nested_score"], "metric": side["metric"]},
                "git_commit": git_commit(Path(__file__).resolve().parents[1]), "versions": versions()}
    write_json(folder / MANIFEST, manifest)
    sums = {**{name: f["sha256"] for name, f in files.items()}, MANIFEST: file_sha256(folder / MANIFEST)}
    write_text(folder / SUMS, "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items())))
    return manifest


def digest(folder: Path) -> str:
    """The bundle's digest: sha256 of its SHA256SUMS."""
    return file_sha256(Path(folder) / SUMS)


def read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        m = SUM_LINE.fullmatch(line)
        if not m:
            raise UserError(f"{path}: line {n} is not `<sha256>  <file>` ({line[:80]!r}); {AGAIN}")
        sums[m[2]] = m[1]
    return sums


def safe_name(folder: Path, name: str, where: Path) -> Path:
    """`name` as a file inside the bundle; a path that leaves it (absolute, `..`) is refused."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not pure.parts:
        raise UserError(f"{where}: names {name!r}, a path outside the bundle; {AGAIN}")
    return folder / pure


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    manifest = read_json(path, AGAIN)
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a bundle manifest (a JSON {type(manifest).__name__}); {AGAIN}")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{folder}: bundle format {manifest.get('format')!r}, this project reads format {FORMAT}: "
                        "export it again with this version, or install the wheel inside it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int)
            for f in files.values()):
        raise UserError(f"{path}: no `files` mapping of name -> {{sha256, bytes}}; {AGAIN}")
    return manifest


def verify(folder: Path, want_digest: str | None = None) -> dict:
    """The manifest, after checking the whole bundle: the digest (when given), SHA256SUMS against the manifest,
    every listed file's bytes, and no file that is not listed; else one UserError naming what is wrong."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder / MANIFEST}: not found; {folder} is not a bundle (`make export` writes one)")
    if not (folder / SUMS).is_file():
        read_manifest(folder)  # an older format says so first
        raise UserError(f"{folder / SUMS}: not found; {AGAIN}")
    have = digest(folder)
    if want_digest is not None and have != want_digest.strip().lower():
        raise UserError(f"{folder}: bundle digest {have}, not the {want_digest.strip()} you gave (DIGEST=): "
                        "this is another bundle, or it was changed")
    manifest, sums = read_manifest(folder), read_sums(folder / SUMS)
    listed = {name: f["sha256"] for name, f in manifest["files"].items()}
    if set(sums) != set(listed) | {MANIFEST} or any(sums[name] != sha for name, sha in listed.items()):
        raise UserError(f"{folder / SUMS}: does not match {MANIFEST}; {AGAIN}")
    root = folder.resolve()
    for name, sha in sums.items():
        p = safe_name(folder, name, folder / SUMS)
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            raise UserError(f"{p}: a link, or inside a linked folder; a bundle holds plain files: {AGAIN}")
        if not p.is_file():
            raise UserError(f"{p}: missing from the bundle ({SUMS} lists it); {AGAIN}")
        if (name in listed and p.stat().st_size != manifest["files"][name]["bytes"]) or file_sha256(p) != sha:
            raise UserError(f"{p}: changed since export (sha256 differs from {SUMS}); {AGAIN}")
    known = set(sums) | {SUMS}
    extra = sorted(name for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                     if p.is_file() or p.is_symlink()) if name not in known)
    if extra:
        raise UserError(f"{folder}: {len(extra)} files the bundle's manifest does not list ({', '.join(extra[:5])}); "
                        f"a bundle holds only what `make export` wrote: move them out, or {AGAIN}")
    return manifest
