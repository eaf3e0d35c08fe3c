#!/usr/bin/env bash
# Run one command inside a memory cgroup capped at GIB GiB, page cache included (what a machine with that much memory
# allows), after dropping the page cache so that memory-mapped caches are read back under the cap. Needs root and a
# writable cgroup (v1 memory controller or v2). Prints the cgroup's peak (allocations + page cache) and whether the
# cap was hit; the command's own exit status is this script's (137: killed by the cap).
#   benchmarks/memcap.sh 8 make train COMP=comp5329 DATA=... RUNS=... MODEL=... FOLDS=0 EPOCHS=1
set -euo pipefail
gib=${1:?usage: benchmarks/memcap.sh GIB COMMAND...}; shift
[ $# -gt 0 ] || { echo "usage: benchmarks/memcap.sh GIB COMMAND..." >&2; exit 2; }
own=$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)
if [ -n "$own" ] && [ -d "/sys/fs/cgroup/memory$own" ]; then          # cgroup v1
    cg="/sys/fs/cgroup/memory$own/memcap_$$"; limit=memory.limit_in_bytes; peak=memory.max_usage_in_bytes
else                                                                  # cgroup v2
    cg="/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)/memcap_$$"; limit=memory.max; peak=memory.peak
fi
mkdir "$cg" || { echo "error: cannot create a cgroup at $cg (root and a writable cgroup fs are needed)" >&2; exit 2; }
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo $((gib * 1024 * 1024 * 1024)) > "$cg/$limit"
sync; echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s)
rc=0; (echo $BASHPID > "$cg/cgroup.procs"; exec "$@") || rc=$?
# v1: failcnt and oom_kill of memory.oom_control; v2: memory.events. Reaching the cap while page cache is reclaimed
# is not a failure; an OOM kill is.
if [ -f "$cg/memory.failcnt" ]; then
    hits=$(cat "$cg/memory.failcnt"); kills=$(awk '/^oom_kill / {print $2}' "$cg/memory.oom_control")
else
    hits=$(awk '/^max / {print $2}' "$cg/memory.events"); kills=$(awk '/^oom_kill / {print $2}' "$cg/memory.events")
fi
echo "memcap: ${gib} GiB cap, $(( $(date +%s) - start )) s, exit $rc, cgroup peak $(( $(cat "$cg/$peak") / 1048576 )) MB" \
     "(allocations + page cache), times at the cap: $hits, OOM kills: ${kills:-unknown}"
exit $rc
