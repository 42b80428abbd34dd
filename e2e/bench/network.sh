#!/usr/bin/env bash
# Issue 6 numbers: requests per second (wrk, 10 connections) to busybox httpd
# through a port published on 127.0.0.1 and to the container's address directly,
# and the time from `docker run -d -p ...` to the first HTTP answer, on berth and
# (when dockerd is installed) on Moby with its own docker0, iptables and
# docker-proxy. Moby is started first and kept running while berth is measured,
# so the run also shows berth beside an engine that owns docker0 and 172.17.0.0/16.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DUR=${BENCH_WRK_SECONDS:-10}
# berth's bridge and the published host ports (unique ones when others bench on the host)
BRIDGE=${BENCH_BRIDGE:-bbench0}
PORT=${BENCH_PORT:-18080}
FIRST_RUNS=${BENCH_FIRST_RUNS:-15}
trap 'stop_berth; stop_moby' EXIT
need wrk

img=$BENCH_DIR/netbox.tar
if [ ! -s "$img" ]; then
  r=$(mktemp -d); mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$r/www"
  cp "$(command -v busybox)" "$r/bin/busybox"
  for a in sh true sleep cat echo ls httpd; do ln -sf busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
  echo 'hello from netbox' > "$r/www/index.html"
  tar -C "$r" -cf "$img" .; rm -rf "$r"
fi

rps() { # url -> requests/s
  wrk -t2 -c10 -d"${DUR}s" "$1" | awk '/Requests\/sec/{print $2}'
}

first_answer() { # docker-cmd port -> median seconds from `run -d -p` to the first 200
  python3 - "$1" "$2" "$FIRST_RUNS" <<'PY'
import socket, statistics, subprocess, sys, time
d, port, n = sys.argv[1].split(), int(sys.argv[2]), int(sys.argv[3])
def answered():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n"); b = s.recv(64); s.close()
        return b.startswith(b"HTTP/1.") and b" 200 " in b[:16]
    except OSError:
        return False
ts = []
for i in range(n):
    t0 = time.monotonic()
    subprocess.run(d + ["run", "-d", "--name", f"first{i}", "-p", f"127.0.0.1:{port}:80", "netbox",
                        "httpd", "-f", "-p", "80", "-h", "/www"], check=True, stdout=subprocess.DEVNULL)
    while not answered():
        if time.monotonic() - t0 > 20: sys.exit("no answer in 20 s")
        time.sleep(0.002)
    ts.append(time.monotonic() - t0)
    subprocess.run(d + ["rm", "-f", f"first{i}"], check=True, stdout=subprocess.DEVNULL)
print(statistics.median(ts))
PY
}

bench_engine() { # name sock port
  local name=$1 d="docker -H unix://$2" port=$3
  $d import -c 'CMD ["httpd","-f","-p","80","-h","/www"]' "$img" netbox:latest >/dev/null
  $d run -d --name web -p "127.0.0.1:$port:80" netbox >/dev/null
  for i in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
  local ip; ip=$($d inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' web)
  PUB[$name]=$(rps "http://127.0.0.1:$port/")
  DIRECT[$name]=$(rps "http://$ip:80/")
  $d rm -f web >/dev/null
  FIRST[$name]=$(first_answer "$d" "$port")
  printf '%-6s published 127.0.0.1 %8.0f req/s | direct %s %8.0f req/s | run -d -p to first answer %6.1f ms\n' \
    "$name" "${PUB[$name]}" "$ip" "${DIRECT[$name]}" "$(python3 -c "print(${FIRST[$name]}*1000)")"
}

declare -A PUB DIRECT FIRST
moby=""
if MOBY_NET=1 start_moby; then moby=1; fi
start_berth "{\"bridge\": \"$BRIDGE\"}"
if [ -n "$moby" ]; then
  echo "berth beside Moby: docker0 $(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}'), berth's bridge $(ip -4 -o addr show "$BRIDGE" | awk '{print $4}')"
fi
bench_engine berth "$BERTH_SOCK" "$PORT"
stop_berth
if [ -n "$moby" ]; then
  bench_engine moby "$MOBY_SOCK" $((PORT + 1))
  echo "berth published / Moby docker-proxy: $(ratio "${PUB[berth]}" "${PUB[moby]}") (target >= 1.5);" \
    "berth published / direct: $(ratio "${PUB[berth]}" "${DIRECT[berth]}") (>= 0.9);" \
    "first answer berth/moby: $(ratio "${FIRST[berth]}" "${FIRST[moby]}") (<= 0.3)"
else
  echo "(dockerd not installed: no Moby comparison)"
  echo "berth published / direct: $(ratio "${PUB[berth]}" "${DIRECT[berth]}") (target >= 0.9)"
fi
