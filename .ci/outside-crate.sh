#!/usr/bin/env bash
# A crate outside this workspace, depending on luca-core and luca-testkit by path, runs the
# contention test shown in luca-testkit's README: the test file is the README's example,
# taken from the README text by luca-testkit's tests/outside_crate.rs (so the two cannot
# drift). The crate shares this workspace's target directory, so only what its own feature
# set changes is rebuilt; its dependencies resolve offline from this workspace's Cargo.lock.
# Run after the workspace's tests (from .ci/run, or by hand: bash .ci/outside-crate.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/luca-outside-crate.XXXXXX")
trap 'rm -rf "$work"' EXIT
crate="$work/downstream"

# Checks the example (a test file under 15 lines using only the two crates) and writes it,
# with a Cargo.toml of path dependencies, into $crate.
LUCA_OUTSIDE_CRATE_DIR="$crate" cargo test --locked -p luca-testkit --test outside_crate

for f in Cargo.toml Cargo.lock tests/contention.rs; do
    [ -f "$crate/$f" ] || { echo "outside crate: $crate/$f was not written" >&2; exit 1; }
done
echo "--- $crate/tests/contention.rs (from luca-testkit/README.md):"
cat "$crate/tests/contention.rs"

# --offline: every dependency is already in the local registry cache (the workspace built
# them); the copied Cargo.lock is pruned to this crate's graph, so not --locked.
(cd "$crate" && CARGO_TARGET_DIR="$target" cargo test --offline)
