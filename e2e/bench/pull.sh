#!/usr/bin/env bash
# Issue 3 numbers: cold pull (image removed first) of a 6-layer image of real files
# (>= 100 MB compressed) from a loopback docker-registry, and a pull of an image already
# present, on berth and (when dockerd is installed) Moby, with the ratios.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need hyperfine
PORT=${BENCH_REG_PORT:-5055}
REG=127.0.0.1:$PORT
W=$BENCH_DIR/pull; mkdir -p "$W"
trap 'stop_berth; stop_moby; [ -n "${REG_PID:-}" ] && kill $REG_PID 2>/dev/null || true' EXIT

cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/regdata}}
http: {addr: $REG}
YML
docker-registry serve "$W/reg.yml" >/dev/null 2>&1 & REG_PID=$!
for i in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done

if [ ! -f "$W/built" ]; then
  rm -rf "$W/layout" "$W/bundle"
  umoci init --layout "$W/layout"; umoci new --image "$W/layout:big"
  n=0
  for src in /usr/lib/x86_64-linux-gnu /usr/bin /usr/share/doc /usr/share/locale /usr/libexec /usr/share/perl; do
    [ -d "$src" ] || continue
    umoci unpack --rootless --image "$W/layout:big" "$W/bundle" >/dev/null
    mkdir -p "$W/bundle/rootfs/layer$n"; cp -a "$src/." "$W/bundle/rootfs/layer$n/" 2>/dev/null || true
    umoci repack --image "$W/layout:big" "$W/bundle"; rm -rf "$W/bundle"; n=$((n+1))
  done
  skopeo copy --quiet --dest-tls-verify=false "oci:$W/layout:big" "docker://$REG/bench/big:latest"
  touch "$W/built"
fi
size=$(du -sb "$W/regdata/docker/registry/v2/blobs" | cut -f1)
echo "image: $REG/bench/big:latest, $((size/1000000)) MB in the registry"

pull_engine() { # name sock -> cold seconds, warm seconds
  local d="docker -H unix://$2"
  $d rmi -f "$REG/bench/big:latest" >/dev/null 2>&1 || true
  # both engines start from the same state: nothing of an earlier run still being
  # written back, and cold caches (with the caches an earlier unpack left, creating the
  # same files costs here up to 5x the system time, for either engine)
  sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
  local t0; t0=$(date +%s.%N)
  $d pull -q "$REG/bench/big:latest" >/dev/null
  COLD[$1]=$(python3 -c "import time,sys;print(time.time()-float(sys.argv[1]))" "$t0")
  hyperfine -N -w 2 -r 10 --export-json "$W/warm-$1.json" "$d pull -q $REG/bench/big:latest" >/dev/null
  WARM[$1]=$(python3 -c "import json;print(json.load(open('$W/warm-$1.json'))['results'][0]['median'])")
  printf '%-6s cold pull %6.2f s (%5.1f MB/s) | warm pull %5.1f ms\n' "$1" "${COLD[$1]}" \
    "$(python3 -c "print($size/1e6/${COLD[$1]})")" "$(python3 -c "print(${WARM[$1]}*1000)")"
}
declare -A COLD WARM
start_berth "{\"bridge\": \"bbench0\", \"insecure-registries\": [\"$REG\"]}"
pull_engine berth "$BERTH_SOCK"
stop_berth
if start_moby --insecure-registry "$REG"; then
  pull_engine moby "$MOBY_SOCK"
  echo "throughput berth/moby: $(ratio "${COLD[moby]}" "${COLD[berth]}")x (target >= 3)," \
    "warm pull time berth/moby: $(ratio "${WARM[berth]}" "${WARM[moby]}") (target <= 1)"
else
  echo "(dockerd not installed: no Moby comparison)"
fi
