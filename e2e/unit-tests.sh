#!/usr/bin/env bash
# The unit and service tests of every crate but the e2e one, in the release profile with
# the workspace's own crates at opt-level 0 (dependencies stay at release's opt-level 3,
# so their artifacts from `cargo build --release` are reused).
#
# Why: each test harness recompiles its crate with cfg(test); at opt-level 3 that was
# 15.6 min of a 45-min CI on 2 cores (the gateway's harness alone: 65 s at opt-level 3,
# 25 s at 1, 8 s at 0). The code under test is the same; the shipped binaries (and the
# e2e tests, which drive them) stay at opt-level 3. The overrides change the artifacts'
# hashes, so both builds live side by side in target/ — but the uplifted binaries in
# target/<triple>/release/ are whichever build ran last: e2e/test.sh runs this first and
# `cargo build --release --workspace --bins` after it.
#
# Arguments go to the test binaries (a filter, --test-threads); BERTH_UNIT_CARGO_ARGS
# adds cargo arguments instead of the workspace (e.g. `-p berth-swarm`; but -p resolves
# dependencies' features anew, which may rebuild some: a test-name filter is cheaper).
set -euo pipefail
cd "$(dirname "$0")/.."
overrides=()
for p in $(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
    overrides+=(--config "profile.release.package.\"$p\".opt-level=0")
done
# shellcheck disable=SC2086
if [ -n "${BERTH_UNIT_CARGO_ARGS:-}" ]; then
    scope=(${BERTH_UNIT_CARGO_ARGS})
else
    scope=(--workspace --exclude berth-e2e)
fi
# --tests: every unit and integration test, no doc-tests (the workspace has none; rustdoc
# would still expand each crate once more)
exec cargo test --release "${overrides[@]}" "${scope[@]}" --tests --no-fail-fast -- "$@"
