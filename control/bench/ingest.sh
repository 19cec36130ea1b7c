#!/usr/bin/env bash
# The heartbeat ingest benchmark against the release control (see src/main.rs and README.md).
#
#   bash control/bench/ingest.sh [--agents N] [--rounds R] [--slice-ms MS] [--connections C]
#                                [--backend sqlite|postgres|both] [--postgres-url URL]
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
echo "building the release control and the benchmark..." >&2
# control runs local VMs from the vm-agent and stand-in cloudflared beside it, and builds them
# on its first start when they are missing, which the measuring must not wait for.
cargo build -q --release -p control -p ingest-bench -p vm-agent -p test-support \
    --bin control --bin ingest-bench --bin vm-agent --bin stand-in-cloudflared
exec "$target/release/ingest-bench" --control "$target/release/control" "$@"
