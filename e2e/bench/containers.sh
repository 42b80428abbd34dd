#!/usr/bin/env bash
# Issue 5 numbers: `docker run --rm true`, `docker exec true`, 200 `docker run -d`
# one after another, memory per running container, and `docker ps` with 200
# running, on berth and (when dockerd is installed) on Moby, with the ratios.
# The image is the same busybox-static rootfs imported into both engines.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
N=${BENCH_CONTAINERS:-200}
trap 'stop_berth; stop_moby' EXIT

img=$(benchbox_tar)

median() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['results'][0]['median'])" "$1"; }

bench_engine() { # name sock
  local name=$1 sock=$2 d="docker -H unix://$2"
  $d import "$img" benchbox:latest >/dev/null
  hyperfine -N -w 3 -r 30 --export-json "$BENCH_DIR/run-$name.json" "$d run --rm benchbox true" >/dev/null
  RUN[$name]=$(median "$BENCH_DIR/run-$name.json")
  $d run -d --name bx benchbox sleep 100000 >/dev/null
  hyperfine -N -w 3 -r 30 --export-json "$BENCH_DIR/exec-$name.json" "$d exec bx true" >/dev/null
  EXEC[$name]=$(median "$BENCH_DIR/exec-$name.json")
  $d rm -f bx >/dev/null
  sleep 1
  read -r _ pss0 < <(tree_mem "$3")
  local t0; t0=$(date +%s.%N)
  for i in $(seq "$N"); do $d run -d benchbox sleep 100000 >/dev/null; done
  MANY[$name]=$(python3 -c "import time,sys;print(time.time()-float(sys.argv[1]))" "$t0")
  sleep 2
  read -r _ pss1 < <(tree_mem "$3")
  # the containers' own processes (one `sleep` each) are not the engine's cost
  local own; own=$(for p in $(pgrep -x sleep); do awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null; done | awk '{s+=$1} END {print s+0}')
  MEM[$name]=$(python3 -c "import sys;a,b,o,n=map(float,sys.argv[1:]);print(f'{(b-a-o)/n/1024:.2f}')" "$pss0" "$pss1" "$own" "$N")
  hyperfine -N -w 3 -r 20 --export-json "$BENCH_DIR/ps-$name.json" "$d ps" >/dev/null
  PS[$name]=$(median "$BENCH_DIR/ps-$name.json")
  $d rm -f $($d ps -aq) >/dev/null
  printf '%-6s run --rm true %6.1f ms | exec true %6.1f ms | %d x run -d %6.2f s (%.0f ms each) | %.2f MiB/container | ps (%d running) %5.1f ms\n' \
    "$name" "$(python3 -c "print(${RUN[$name]}*1000)")" "$(python3 -c "print(${EXEC[$name]}*1000)")" "$N" "${MANY[$name]}" \
    "$(python3 -c "print(${MANY[$name]}/$N*1000)")" "${MEM[$name]}" "$N" "$(python3 -c "print(${PS[$name]}*1000)")"
}

declare -A RUN EXEC MANY MEM PS
start_berth
bench_engine berth "$BERTH_SOCK" "$BERTH_PID"
stop_berth
if start_moby; then
  bench_engine moby "$MOBY_SOCK" "$MOBY_PID"
  # dockerd's containers are children of containerd (a separate tree): count its shims
  echo "ratios berth/moby: run $(ratio "${RUN[berth]}" "${RUN[moby]}") (target <= 0.25)," \
    "exec $(ratio "${EXEC[berth]}" "${EXEC[moby]}") (<= 0.5), run -d x$N $(ratio "${MANY[berth]}" "${MANY[moby]}") (<= 0.25)," \
    "ps $(ratio "${PS[berth]}" "${PS[moby]}") (<= 1.0)"
else
  echo "(dockerd not installed: no Moby comparison)"
fi
