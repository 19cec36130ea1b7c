#!/usr/bin/env bash
# The heartbeat ingest benchmark against the release control (see src/main.rs and README.md).
#
#   bash control/bench/ingest.sh [--agents N] [--seconds S] [--connections C]
#                                [--backend sqlite|postgres|both] [--postgres-url URL]
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "building the release control and the benchmark..." >&2
cargo build -q --release -p control -p ingest-bench --bin control --bin ingest-bench
exec target/release/ingest-bench --control target/release/control "$@"
