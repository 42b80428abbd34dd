#!/usr/bin/env bash
# Issue 2 numbers: `docker version` through berth vs Moby, bus request/reply latency,
# and the memory of an idle node. Prints ratios against Moby when dockerd is installed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need hyperfine
trap 'stop_berth; stop_moby' EXIT
sync
start_berth
echo "== docker version (hyperfine, 50 runs)"
B=$(hyperfine -N -w 5 -r 50 --export-json "$BENCH_DIR/v-berth.json" "env DOCKER_HOST=unix://$BERTH_SOCK docker version" >/dev/null && python3 -c "import json;print(json.load(open('$BENCH_DIR/v-berth.json'))['results'][0]['median'])")
echo "berth: median $(python3 -c "print(f'{$B*1000:.1f}')") ms"
sleep 3
read rss pss < <(tree_mem "$BERTH_PID")
echo "== idle node memory (berth up + nats-server + 6 services + gateway): RSS $((rss/1024)) MiB, PSS $((pss/1024)) MiB (target: RSS < 60 MiB)"
if start_moby; then
  M=$(hyperfine -N -w 5 -r 50 --export-json "$BENCH_DIR/v-moby.json" "env DOCKER_HOST=unix://$MOBY_SOCK docker version" >/dev/null && python3 -c "import json;print(json.load(open('$BENCH_DIR/v-moby.json'))['results'][0]['median'])")
  echo "moby: median $(python3 -c "print(f'{$M*1000:.1f}')") ms   berth/moby = $(ratio "$B" "$M") (target <= 1.00)"
  sleep 3
  read mrss mpss < <(tree_mem "$MOBY_PID")
  echo "moby idle (dockerd + containerd): RSS $((mrss/1024)) MiB, PSS $((mpss/1024)) MiB"
else
  echo "(dockerd not installed: no Moby comparison)"
fi
echo "== bus request/reply latency"
(cd "$REPO" && cargo bench -q -p berth-bus --bench latency 2>/dev/null | grep -E "bus|target")
