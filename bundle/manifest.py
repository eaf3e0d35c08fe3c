"""manifest.json and SHA256SUMS: every file of a bundle, so a changed, missing, extra or foreign file is caught
before any prediction, and one digest pins the whole bundle.

SHA256SUMS is coreutils' format (`sha256sum -c SHA256SUMS` checks the bundle on any machine) and lists every file,
manifest.json included; the bundle's digest is the sha256 of SHA256SUMS itself (`sha256sum SHA256SUMS`), so one
hex string, checked before anything in the bundle is installed or run, pins every byte of it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
from pathlib import Path, PurePosixPath

from competition.artifacts import file_sha256, write_json, write_text
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


def write_manifest(folder: Path, scores: dict) -> dict:
    """sha256 and bytes of every file under `folder`, the model's MB, scores, versions; then SHA256SUMS."""
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    files = {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
             for name in names if name not in (MANIFEST, SUMS)}
    manifest = {"format": FORMAT, "files": files, "total_mb": round(model_bytes(files) / 2**20, 3),
                "all_files_mb": round(sum(f["bytes"] for f in files.values()) / 2**20, 3),
                "scores": scores,
                "git_commit": git_commit(Path(__file__).resolve().parents[1]), "versions": versions()}
    write_json(folder / MANIFEST, manifest)
    sums = {**{name: f["sha256"] for name, f in files.items()}, MANIFEST: file_sha256(folder / MANIFEST)}
    write_text(folder / SUMS, "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items())))
    return manifest


def digest(folder: Path) -> str:
    """The bundle's digest: sha256 of its SHA256SUMS."""
    return file_sha256(Path(folder) / SUMS)


def read_sums(path: Path, text: str) -> dict[str, str]:
    """SHA256SUMS as `sha256sum -c` reads it; a file listed twice is refused (coreutils checks every line, so a
    second line with another hash fails there while a dict would keep only the last)."""
    sums, first = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        m = SUM_LINE.fullmatch(line)
        if not m:
            raise UserError(f"{path}: line {n} is not `<sha256>  <file>` ({line[:80]!r}); {AGAIN}")
        if m[2] in sums:
            raise UserError(f"{path}: line {n} lists {m[2]} again (first on line {first[m[2]]}); {AGAIN}")
        sums[m[2]], first[m[2]] = m[1], n
    return sums


def safe_name(folder: Path, name: str, where: Path) -> Path:
    """`name` as a file inside the bundle; a path that leaves it (absolute, `..`) is refused."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not pure.parts:
        raise UserError(f"{where}: names {name!r}, a path outside the bundle; {AGAIN}")
    return folder / pure


def parse_manifest(folder: Path, raw: bytes) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {AGAIN}") from None
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


@dataclasses.dataclass(frozen=True)
class Verified:
    """A checked bundle: its manifest, its digest, and where its model files are read from (with `copy_to`, a
    private copy written from the very bytes that were hashed, so what is loaded is what was verified)."""
    manifest: dict
    digest: str
    root: Path


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {AGAIN}") from None
    except (IsADirectoryError, PermissionError) as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); {AGAIN}") from None


def verify(folder: Path, want_digest: str | None = None, copy_to: Path | None = None) -> Verified:
    """Check the whole bundle: the digest (when given), SHA256SUMS against the manifest, every listed file's
    bytes, and no file that is not listed; else one UserError naming what is wrong. Each file is read once: its
    hash and (with `copy_to`) the private copy that `make predict` loads come from the same bytes, so a file
    replaced during a run cannot change the output."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder / MANIFEST}: not found; {folder} is not a bundle (`make export` writes one)")
    if not (folder / SUMS).is_file():
        parse_manifest(folder, read_file(folder / MANIFEST))  # an older format says so first
        raise UserError(f"{folder / SUMS}: not found; {AGAIN}")
    sums_raw = read_file(folder / SUMS)
    have = hashlib.sha256(sums_raw).hexdigest()
    if want_digest is not None and have != want_digest.strip().lower():
        raise UserError(f"{folder}: bundle digest {have}, not the {want_digest.strip()} you gave (DIGEST=): "
                        "this is another bundle, or it was changed")
    sums = read_sums(folder / SUMS, sums_raw.decode(errors="replace"))
    manifest_raw = read_file(folder / MANIFEST)
    manifest = parse_manifest(folder, manifest_raw)
    listed = {name: f["sha256"] for name, f in manifest["files"].items()}
    if (set(sums) != set(listed) | {MANIFEST} or any(sums[name] != sha for name, sha in listed.items())
            or hashlib.sha256(manifest_raw).hexdigest() != sums[MANIFEST]):
        raise UserError(f"{folder / SUMS}: does not match {MANIFEST}; {AGAIN}")
    root = folder.resolve()
    for name, sha in sums.items():
        p = safe_name(folder, name, folder / SUMS)
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            raise UserError(f"{p}: a link, or inside a linked folder; a bundle holds plain files: {AGAIN}")
        if not p.is_file():
            raise UserError(f"{p}: missing from the bundle ({SUMS} lists it); {AGAIN}")
        raw = manifest_raw if name == MANIFEST else read_file(p)
        if (name in listed and len(raw) != manifest["files"][name]["bytes"]) or hashlib.sha256(raw).hexdigest() != sha:
            raise UserError(f"{p}: changed since export (sha256 differs from {SUMS}); {AGAIN}")
        if copy_to is not None and not name.startswith(CODE_DIR):  # the wheel is for pip, never loaded here
            (Path(copy_to) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(copy_to) / name).write_bytes(raw)
    known = set(sums) | {SUMS}
    extra = sorted(name for name in (p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                     if p.is_file() or p.is_symlink()) if name not in known)
    if extra:
        raise UserError(f"{folder}: {len(extra)} files the bundle's manifest does not list ({', '.join(extra[:5])}); "
                        f"a bundle holds only what `make export` wrote: move them out, or {AGAIN}")
    return Verified(manifest, have, Path(copy_to) if copy_to is not None else folder)
