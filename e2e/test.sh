#!/usr/bin/env bash
# The test command (README): runs unit and service tests, builds every binary, then
# the e2e tests that drive the real docker CLI against nodes started by `berth up`.
# Needs root: the tests that use kernel features fail without it (see
# berth_test_support::require_root), so the script refuses to start instead.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "e2e/test.sh: needs root (mounts, namespaces, cgroups, nftables); run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
jobs=${BERTH_TEST_THREADS:-2}
echo "== unit and service tests"
# first: they build the workspace's crates at opt-level 0 (e2e/unit-tests.sh says why),
# and the release build below must be the last to place the binaries the e2e tests run
e2e/unit-tests.sh --test-threads="$jobs"
echo "== build"
cargo build --release --workspace --bins
echo "== e2e tests (docker CLI against berth up)"
# The fault soak runs 150 s here (15 kills: every target about twice) to keep CI under
# 45 min on 2 cores; the issue's 5 minutes: BERTH_SOAK_SECS=300 e2e/test.sh (or the soak
# test alone, as its header says).
export BERTH_SOAK_SECS=${BERTH_SOAK_SECS:-150}
# Bounded: a hang is a red run with its output, not a CI that never ends (each docker
# command of a test is also killed after BERTH_E2E_CMD_SECS, 300 s).
timeout -k 30 "${BERTH_E2E_TIMEOUT:-55m}" cargo test --release -p berth-e2e --no-fail-fast -- --test-threads="$jobs"
