#!/usr/bin/env bash
# The provider call-budget benchmark (see calls/src/main.rs and README.md).
#
#   bash control/bench/calls.sh [--agents N] [--fleets 1000,10000] [--budget 3600]
#                               [--fraction 0.25] [--every-secs 60]
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "building the benchmark (release)..." >&2
cargo build -q --release -p calls-bench
exec target/release/calls-bench "$@"
