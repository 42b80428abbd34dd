# Shared by the bench scripts: start a berth node and (when installed) a Moby
# reference engine, each on its own socket and data root, and clean both up.
BENCH_DIR=${BENCH_DIR:-/var/tmp/berth-bench}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BERTH_BIN_DIR:-$REPO/target/x86_64-unknown-linux-gnu/release}
BERTH_SOCK=$BENCH_DIR/berth.sock
MOBY_SOCK=$BENCH_DIR/moby.sock
mkdir -p "$BENCH_DIR"

# need TOOL...: stop with how to install what a bench script runs and this host lacks.
need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$t is not installed (apt-get install $t)"; exit 1; }
  done
}

start_berth() { # [daemon.json content]
  # a previous node's mounts (the network service's netns directory) go first
  grep -o " $BENCH_DIR/berth-root[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$BENCH_DIR/berth-root"; mkdir -p "$BENCH_DIR/berth-root"
  local cfg='{"bridge": "bbench0"}'
  [ -n "${1:-}" ] && cfg=$1
  echo "$cfg" > "$BENCH_DIR/berth-daemon.json"
  "$BIN/berth" up --root "$BENCH_DIR/berth-root" -H "unix://$BERTH_SOCK" --config "$BENCH_DIR/berth-daemon.json" \
    > "$BENCH_DIR/berth-up.log" 2>&1 &
  BERTH_PID=$!
  for i in $(seq 300); do grep -q ready "$BENCH_DIR/berth-up.log" && return 0; sleep 0.1; done
  echo "berth did not start"; cat "$BENCH_DIR/berth-up.log"; return 1
}

stop_berth() {
  [ -n "${BERTH_PID:-}" ] && kill "$BERTH_PID" 2>/dev/null && wait "$BERTH_PID" 2>/dev/null || true
}

# benchbox_tar: a busybox-static rootfs tarball (built once) for `docker import`;
# prints its path.
benchbox_tar() {
  local img=$BENCH_DIR/benchbox.tar
  if [ ! -s "$img" ]; then
    local r; r=$(mktemp -d); mkdir -p "$r/bin" "$r/tmp" "$r/etc"
    cp "$(command -v busybox)" "$r/bin/busybox"
    for a in sh true sleep cat echo ls; do ln -sf busybox "$r/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
    tar -C "$r" -cf "$img" .; rm -rf "$r"
  fi
  echo "$img"
}

# MOBY=0: berth alone (no reference engine is started).
have_moby() { [ "${MOBY:-1}" != 0 ] && command -v dockerd >/dev/null 2>&1; }

start_moby() { # [extra dockerd args]; MOBY_NET=1 keeps Moby's docker0, iptables and docker-proxy
  have_moby || return 1
  local net="--bridge none --iptables=false"
  if [ -n "${MOBY_NET:-}" ] && [ "$MOBY_NET" != 0 ]; then net=""; MOBY_NET_USED=1; fi
  rm -rf "$BENCH_DIR/moby-exec"; mkdir -p "$BENCH_DIR/moby-root"
  local mirror=""
  [ -n "${MOBY_MIRROR:-}" ] && mirror="--registry-mirror $MOBY_MIRROR --insecure-registry ${MOBY_MIRROR#http://}"
  dockerd --data-root "$BENCH_DIR/moby-root" --exec-root "$BENCH_DIR/moby-exec" -H "unix://$MOBY_SOCK" \
    --pidfile "$BENCH_DIR/moby.pid" $net $mirror "$@" > "$BENCH_DIR/moby.log" 2>&1 &
  MOBY_PID=$!
  for i in $(seq 300); do DOCKER_HOST=unix://$MOBY_SOCK docker version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "moby did not start"; tail "$BENCH_DIR/moby.log"; return 1
}

stop_moby() {
  [ -n "${MOBY_PID:-}" ] && kill "$MOBY_PID" 2>/dev/null && wait "$MOBY_PID" 2>/dev/null || true
  pkill -f "containerd --config $BENCH_DIR" 2>/dev/null || true
  # Moby leaves docker0 and its iptables rules and chains behind: take them away
  if [ -n "${MOBY_NET_USED:-}" ]; then
    local t r c
    for t in nat filter; do
      iptables -t "$t" -S 2>/dev/null | grep -E -- '-j DOCKER|docker0|docker_gwbridge' | grep '^-A' | sed 's/^-A/-D/' |
        while read -r r; do eval "iptables -t $t $r" 2>/dev/null || true; done
      for c in DOCKER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2 DOCKER-USER; do
        iptables -t "$t" -F "$c" 2>/dev/null || true
        iptables -t "$t" -X "$c" 2>/dev/null || true
      done
    done
    ip link del docker0 2>/dev/null || true
    ip link del docker_gwbridge 2>/dev/null || true
  fi
}

# tree_mem PID: "rss_kib pss_kib" summed over PID and its descendants.
tree_mem() {
  local pids="$1" all="$1" kids
  while [ -n "$pids" ]; do
    kids=$(for p in $pids; do cat /proc/$p/task/*/children 2>/dev/null || true; done | tr ' ' '\n' | { grep -v '^$' || true; } | tr '\n' ' ')
    all="$all $kids"; pids="$kids"
  done
  local rss=0 pss=0
  for p in $all; do
    [ -r /proc/$p/smaps_rollup ] || continue
    rss=$((rss + $(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup)))
    pss=$((pss + $(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)))
  done
  echo "$rss $pss"
}

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
