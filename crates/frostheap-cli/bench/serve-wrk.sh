#!/usr/bin/env bash
# Benchmarks `frostheap serve` with wrk, a load generator nobody on this
# project wrote: throughput below capacity against plain hyper (ratio per
# round, median and range), and peak RSS at 10x overload against the
# budget. Installs wrk from Debian's packages if it is missing, builds the
# release binaries, and runs `frostheap-load --wrk` (loopback only,
# bounded: about a minute with the defaults).
#
#   crates/frostheap-cli/bench/serve-wrk.sh [--rounds N] [--secs S]
set -euo pipefail
cd "$(dirname "$0")/../../.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "serve-wrk: installing wrk (Debian package)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk
fi

cargo build --release -p frostheap-cli --bins
exec "${CARGO_TARGET_DIR:-target}/release/frostheap-load" --wrk "$@"
