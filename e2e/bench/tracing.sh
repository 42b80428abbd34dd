#!/usr/bin/env bash
# Issue 8 number: what tracing costs on `docker run --rm benchbox true`. Two berth
# nodes run side by side, one exporting every span over OTLP/HTTP to a local
# receiver (OTEL_EXPORTER_OTLP_ENDPOINT), one without an exporter; the runs are
# interleaved (off, on, off, on, ...) so both see the same machine, and the medians
# are compared.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${BENCH_RUNS:-40}
img=$(benchbox_tar)

# the receiver: accepts OTLP/HTTP exports, counts the requests
python3 - > "$BENCH_DIR/otlp-port" 2> "$BENCH_DIR/otlp.log" <<'PY' &
import http.server, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    n = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        H.n += 1
        sys.stderr.write(f"exports {H.n}\n"); sys.stderr.flush()
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
RECV=$!
PIDS=()
trap 'kill $RECV ${PIDS[@]} 2>/dev/null; wait 2>/dev/null || true' EXIT
for i in $(seq 50); do [ -s "$BENCH_DIR/otlp-port" ] && break; sleep 0.1; done
port=$(cat "$BENCH_DIR/otlp-port")

start_node() { # name [env...]
  local name=$1; shift
  local d=$BENCH_DIR/trace-$name
  grep -o " $d/root[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$d"; mkdir -p "$d/root"
  echo "{\"bridge\": \"btr$name\"}" > "$d/daemon.json"
  env "$@" "$BIN/berth" up --root "$d/root" -H "unix://$d/docker.sock" --config "$d/daemon.json" > "$d/up.log" 2>&1 &
  PIDS+=($!)
  for i in $(seq 300); do grep -q ready "$d/up.log" && break; sleep 0.1; done
  docker -H "unix://$d/docker.sock" import "$img" benchbox:latest >/dev/null
}
start_node off
start_node on OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port"

python3 - "$BENCH_DIR" "$RUNS" <<'PY'
import statistics, subprocess, sys, time
d, n = sys.argv[1], int(sys.argv[2])
def run(name):
    t = time.monotonic()
    subprocess.run(["docker", "-H", f"unix://{d}/trace-{name}/docker.sock", "run", "--rm", "benchbox", "true"], check=True)
    return time.monotonic() - t
for _ in range(3): run("off"); run("on")
off, on = [], []
for i in range(n):
    # alternate which goes first, so neither always follows the other
    if i % 2: off.append(run("off")); on.append(run("on"))
    else: on.append(run("on")); off.append(run("off"))
mo, mn = statistics.median(off), statistics.median(on)
print(f"docker run --rm true: tracing off {mo*1000:.1f} ms, on (exporting) {mn*1000:.1f} ms, overhead {(mn/mo-1)*100:+.1f}% (target <= 5%)")
PY
sleep 2
echo "the receiver got $(tail -1 "$BENCH_DIR/otlp.log" | awk '{print $2}') OTLP export requests"
