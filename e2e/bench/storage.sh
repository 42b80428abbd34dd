#!/usr/bin/env bash
# Issue 4 numbers: layer apply throughput vs Moby's `docker load` unpack, and the p50
# of preparing + mounting a container's read-write layer on overlay2
# (`cargo bench -p berth-storage`, with a Moby reference engine when installed).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
trap 'stop_moby' EXIT
if start_moby; then export MOBY_HOST=unix://$MOBY_SOCK; fi
cd "$REPO" && cargo bench -q -p berth-storage --bench storage
