#!/usr/bin/env bash
# Issue 18 numbers: `service create --replicas 30` until 30/30 (three berth nodes, one
# berth node, Moby's single-node swarm), a worker node SIGKILLed until its tasks run on
# the other nodes (berth), and requests per second through the routing mesh (`-p
# 8080:80`, busybox httpd; one node paired with Moby, and three berth nodes), with the
# ratios. It runs the ignored e2e bench e2e/tests/swarm_bench.rs (its header says how):
# every engine in a network namespace of its own on an underlay bridge, Moby with its
# default networking (iptables, docker_gwbridge, ingress) inside its namespace, so no
# rule of it lands on the host and all it made goes with the namespace and its data root.
# Build the binaries first (cargo build --release --workspace --bins).
# MOBY=0: berth alone. BENCH_REPLICAS, BENCH_ROUNDS, BENCH_REQUESTS, BENCH_CLIENTS.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
export BENCH_MOBY=${MOBY:-1}
log=$BENCH_DIR/swarm.log
cd "$REPO"
rc=0
nice -n 10 cargo test --release -p berth-e2e --features bench --test swarm_bench -- --ignored --nocapture --test-threads=1 \
  > "$log" 2>&1 || rc=$?
grep -E '^(round|Moby|\(no Moby)' "$log" || true
echo
grep '^bench: ' "$log" | sed 's/^bench: //' || true
[ "$rc" = 0 ] || { echo "the bench failed (rc=$rc): $log"; tail -40 "$log"; }
exit "$rc"
