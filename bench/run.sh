#!/usr/bin/env bash
# make bench: benchmark nbd-cow against anchor NBD servers. See bench/README.md.
#
# Compiles bench/ (tsconfig.bench.json: bench/bench.ts -> dist/bench/bench.js), raises the
# open-file limit for the scale run, runs it and, whatever happens, stops every server it
# started by PID (each PID is registered with its start time, so a recycled PID is never
# signalled).

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

for tool in node sha256sum du; do
  command -v "$tool" >/dev/null || { log "error: $tool not found"; exit 1; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { log "error: Node 20 or later is needed"; exit 1; }
[[ -f $ROOT/dist/bin/nbd-cow.js ]] || { log "error: $ROOT/dist/bin/nbd-cow.js missing; run 'make build' first"; exit 1; }
(cd "$ROOT" && npx tsc -p tsconfig.bench.json >&2) || { log "error: compiling bench/ (npx tsc -p tsconfig.bench.json) failed"; exit 1; }

# The scale run holds SCALE_CONNECTIONS sockets in the client and as many sockets plus
# overlay files in the server (both inherit this limit).
want=$(( ${SCALE_CONNECTIONS:-1000} * 3 + 1024 ))
soft=$(ulimit -Sn)
if [[ $soft != unlimited ]] && (( soft < want )); then
  hard=$(ulimit -Hn)
  if [[ $hard == unlimited ]] || (( hard >= want )); then
    ulimit -n "$want"
  else
    ulimit -n "$hard"
    log "warning: open-file limit is $hard (hard limit), the scale run wants $want"
  fi
fi

BENCH_PID_REGISTRY=$(mktemp -t nbd-cow-bench-pids.XXXXXX) || exit 1
export BENCH_PID_REGISTRY
NODE_PID=""

stop_leftovers() {
  local pid start now state i
  while read -r pid start; do
    [[ -n $pid ]] || continue
    read -r state now < <(awk '{ sub(/^.*\) /, ""); print $1, $20 }' "/proc/$pid/stat" 2>/dev/null) || continue
    [[ $now == "$start" ]] || continue # exited; the PID now belongs to someone else
    [[ $state != Z ]] || continue      # exited, not yet reaped by its parent
    log "stopping leftover server pid $pid"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
  done <"$BENCH_PID_REGISTRY"
  rm -f -- "$BENCH_PID_REGISTRY"
}

on_signal() {
  local sig=$1
  trap '' INT TERM HUP
  if [[ -n $NODE_PID ]]; then
    kill "-$sig" "$NODE_PID" 2>/dev/null
    wait "$NODE_PID" 2>/dev/null
  fi
  exit 130
}

trap stop_leftovers EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

node "$ROOT/dist/bench/bench.js" &
NODE_PID=$!
wait "$NODE_PID"
rc=$?
NODE_PID=""
exit "$rc"
