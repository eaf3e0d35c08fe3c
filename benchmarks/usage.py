"""Run one command and record what it cost: wall seconds, the peak memory of its whole process tree, split into
anonymous pages (what the processes allocated) and file-backed ones (memory-mapped caches: page cache the
kernel can drop), the largest single process's peak RSS, and the disk used under a folder afterwards.

    python benchmarks/usage.py --tsv FILE --step NAME [--disk DIR] -- COMMAND ...

Appends one row to FILE (the header first when the file is new): step, seconds, peak_anon_mb, peak_file_mb,
max_rss_mb, disk_mb. The tree is sampled from /proc every 0.5 s (Linux; elsewhere only max_rss_mb, from
getrusage, is filled). Exits with the command's status.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

COLUMNS = ("step", "seconds", "peak_anon_mb", "peak_file_mb", "max_rss_mb", "disk_mb")
MB = 2 ** 20


def tree(root: int) -> list[int]:
    """root and every process descending from it, from /proc/<pid>/stat's parent ids."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


def resident(pids: list[int]) -> tuple[int, int]:
    """(anonymous, file-backed + shared) resident bytes summed over `pids`."""
    anon = file = 0
    for pid in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        kb = {key: int(fields.get(key, "0 kB").split()[0]) * 1024 for key in ("RssAnon", "RssFile", "RssShmem")}
        anon += kb["RssAnon"]
        file += kb["RssFile"] + kb["RssShmem"]
    return anon, file


def disk_bytes(folder: Path) -> int:
    """Bytes of disk the files under `folder` take (allocated blocks, as du counts)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run(command: list[str]) -> tuple[int, float, int, int, int]:
    """(status, seconds, peak anonymous bytes, peak file-backed bytes, largest process's max RSS bytes)."""
    peaks, done = [0, 0], threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)

    def sample() -> None:
        while not done.is_set():
            anon, file = resident(tree(proc.pid))
            peaks[0], peaks[1] = max(peaks[0], anon), max(peaks[1], file)
            done.wait(0.5)
    sampler = threading.Thread(target=sample, daemon=True)
    if Path("/proc/self/status").exists():
        sampler.start()
    status = proc.wait()
    seconds = time.perf_counter() - t0
    done.set()
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    return status, seconds, peaks[0], peaks[1], max_rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", required=True, type=Path)
    ap.add_argument("--step", required=True)
    ap.add_argument("--disk", type=Path, default=None, help="a folder whose disk use is recorded after the step")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("no command given after --")
    status, seconds, anon, file, max_rss = run(command)
    disk = disk_bytes(a.disk) if a.disk else 0
    row = (a.step, f"{seconds:.1f}", f"{anon / MB:.0f}", f"{file / MB:.0f}", f"{max_rss / MB:.0f}", f"{disk / MB:.0f}")
    new = not a.tsv.exists()
    with a.tsv.open("a") as f:
        if new:
            f.write("\t".join(COLUMNS) + "\n")
        f.write("\t".join(row) + "\n")
    if status:
        print(f"{a.step}: exit status {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
