#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine: installs what is missing, builds
# berth, starts a node in the background and runs `docker run hello-world` on it.
# Run as root (or with sudo). Stop the node with: kill $(cat /run/berth/up.pid)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building (release)"
cargo build --release --workspace --bins -q
BIN=$PWD/target/x86_64-unknown-linux-gnu/release
mkdir -p /run/berth
SOCK=/var/run/docker.sock
if [ -S "$SOCK" ] && curl -sf --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; then
  if ! curl -sf --unix-socket "$SOCK" http://localhost/version | grep -q '"Name":"berth"'; then
    echo "note: another engine owns $SOCK; berth will listen on /run/berth/docker.sock"
    SOCK=/run/berth/docker.sock
  fi
fi
if [ -f /run/berth/up.pid ] && kill -0 "$(cat /run/berth/up.pid)" 2>/dev/null; then
  echo "== a berth node is already running (pid $(cat /run/berth/up.pid))"
else
  echo "== starting a node (logs: /var/log/berth-up.log, services: /var/lib/berth/logs/)"
  : > /var/log/berth-up.log
  setsid "$BIN/berth" up -H "unix://$SOCK" >>/var/log/berth-up.log 2>&1 < /dev/null &
  echo $! > /run/berth/up.pid
  for i in $(seq 300); do grep -q ready /var/log/berth-up.log && break; sleep 0.1; done
  grep ready /var/log/berth-up.log || { cat /var/log/berth-up.log; exit 1; }
fi
export DOCKER_HOST=unix://$SOCK
echo "== docker run hello-world"
docker run --rm hello-world
echo
echo "berth is running. Use it with:  export DOCKER_HOST=unix://$SOCK"
echo "Status: $BIN/berth status      Stop: kill \$(cat /run/berth/up.pid)"
