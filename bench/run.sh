#!/usr/bin/env bash
# The Db write-path benchmark: builds the sqlx baseline (its own package, workspace and
# lockfile: sqlx cannot share a build with rusqlite 0.40) and luca-bench in release, then
# runs luca-bench, which runs every cell (the sqlx ones through the baseline program) and
# prints one table. Arguments go to luca-bench (try --help). Exit status 1: a target missed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The baseline keeps its own target directory, even when CARGO_TARGET_DIR is set: its
# dependency tree (another libsqlite3-sys) has nothing to share with the workspace's.
sqlx_dir=bench/sqlx-baseline
sqlx_args=(--sqlx-bin "$sqlx_dir/target/release/sqlx-baseline")
echo "== building the sqlx baseline ($sqlx_dir) ==" >&2
if ! cargo build --release --locked --manifest-path "$sqlx_dir/Cargo.toml" \
    --target-dir "$sqlx_dir/target" >&2; then
    echo "!! the sqlx baseline did not build: the table will have no sqlx rows" >&2
    sqlx_args=(--no-sqlx)
fi

echo "== building and running luca-bench ==" >&2
cargo build --release -p luca-bench >&2
exec cargo run --quiet --release -p luca-bench -- "${sqlx_args[@]}" "$@"
