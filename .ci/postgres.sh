#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, postgres) are installed, for the
# PostgreSQL tests (luca_testkit::TempPostgres starts a throwaway server from them; no
# service is used). Installs them from the system packages when they are missing.
# Under CI those tests fail when the server cannot start, so this runs before them.
set -euo pipefail

find_initdb() {
    if command -v initdb >/dev/null 2>&1; then
        command -v initdb
        return 0
    fi
    local found
    found=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] && echo "$found"
}

if initdb=$(find_initdb); then
    echo "PostgreSQL: $("$(dirname "$(readlink -f "$initdb")")/postgres" --version) ($initdb)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is not installed and there is no apt-get here: install the PostgreSQL" \
         "server (initdb, postgres) with the system's package manager" >&2
    exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "PostgreSQL: not installed; installing it from the system packages"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    postgresql

if ! initdb=$(find_initdb); then
    echo "the postgresql package is installed but no initdb was found" >&2
    exit 1
fi
echo "PostgreSQL: $("$(dirname "$(readlink -f "$initdb")")/postgres" --version) ($initdb)"
