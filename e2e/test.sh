#!/usr/bin/env bash
# The test command (README): builds every binary, runs unit and service tests, then
# the e2e tests that drive the real docker CLI against nodes started by `berth up`.
# Needs root for the tests that use kernel features (they skip themselves otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
jobs=${BERTH_TEST_THREADS:-2}
echo "== build"
cargo build --release --workspace --bins
echo "== unit and service tests"
cargo test --release --workspace --exclude berth-e2e --no-fail-fast -- --test-threads="$jobs"
echo "== e2e tests (docker CLI against berth up)"
cargo test --release -p berth-e2e --no-fail-fast -- --test-threads="$jobs"
