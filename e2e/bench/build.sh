#!/usr/bin/env bash
# Issue 7 numbers: a 7-step Dockerfile (the getting-started shape: FROM, WORKDIR,
# COPY, RUN, EXPOSE, ENV, CMD) built with a warm cache (every step cached) and cold
# (`--no-cache`, the base image present), on berth and (when dockerd is installed)
# on Moby's classic builder, with the ratios.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need hyperfine
trap 'stop_berth; stop_moby' EXIT
export DOCKER_BUILDKIT=0 DOCKER_CLI_HINTS=false

img=$(benchbox_tar)
ctx=$BENCH_DIR/build-ctx
rm -rf "$ctx"; mkdir -p "$ctx"
printf 'Flask\nRedis\n' > "$ctx/requirements.txt"
printf 'import os\nprint("Hello {}!".format(os.getenv("NAME", "world")))\n' > "$ctx/app.py"
cat > "$ctx/Dockerfile" <<'EOF'
FROM benchbox
WORKDIR /app
COPY . /app
RUN cat requirements.txt > installed.txt
EXPOSE 80
ENV NAME World
CMD ["sh", "-c", "echo Hello $NAME"]
EOF

median() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['results'][0]['median'])" "$1"; }

bench_engine() { # name sock
  local name=$1 d="docker -H unix://$2"
  $d import -c 'ENV PATH=/bin' "$img" benchbox:latest >/dev/null
  (cd "$ctx" && $d build -q -t benchbuild . >/dev/null)
  (cd "$ctx" && hyperfine -N -w 3 -r 20 --export-json "$BENCH_DIR/build-warm-$name.json" "$d build -q -t benchbuild ." >/dev/null)
  WARM[$name]=$(median "$BENCH_DIR/build-warm-$name.json")
  (cd "$ctx" && hyperfine -N -w 2 -r 10 --export-json "$BENCH_DIR/build-cold-$name.json" "$d build -q --no-cache -t benchbuild ." >/dev/null)
  COLD[$name]=$(median "$BENCH_DIR/build-cold-$name.json")
  [ "$($d run --rm benchbuild)" = "Hello World" ] || { echo "$name: the built image does not greet"; exit 1; }
  printf '%-6s warm rebuild %6.1f ms | cold build (--no-cache) %6.1f ms\n' "$name" \
    "$(python3 -c "print(${WARM[$name]}*1000)")" "$(python3 -c "print(${COLD[$name]}*1000)")"
}

declare -A WARM COLD
start_berth
bench_engine berth "$BERTH_SOCK"
stop_berth
if start_moby; then
  bench_engine moby "$MOBY_SOCK"
  echo "ratios berth/moby: warm $(ratio "${WARM[berth]}" "${WARM[moby]}") (target <= 1.0), cold $(ratio "${COLD[berth]}" "${COLD[moby]}") (<= 0.5)"
else
  echo "(dockerd not installed: no Moby comparison)"
fi
