#!/usr/bin/env bash
# vm-agent's footprint, next to a floor measured in the same run.
#
# Runs vm-agent, as the platform image builds it (the `agent` profile), for DURATION seconds (default 60) against the stand-in control
# and the stand-in cloudflared, heartbeating every second. At the same time it runs the floor:
# `heartbeat_floor`, a minimal tokio + reqwest program that only posts the same heartbeat
# every second. It prints each one's peak RSS, CPU seconds per hour of runtime and stripped
# binary size, and the ratios.
#
# Goals (issue 3): vm-agent peak RSS <= 6 MiB, stripped binary <= 8 MiB, RSS <= 1.5x the floor.
#
#   bash vm-agent/bench/footprint.sh [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-60}

# Both programs are built with the `agent` profile the platform image uses (Cargo.toml).
echo "building vm-agent and the floor with the agent profile..." >&2
cargo build -q --profile agent -p vm-agent --bin vm-agent --example heartbeat_floor
cargo build -q --release -p test-support --bin stand-in-control --bin stand-in-cloudflared
agent_build=target/agent
release=target/release

work=$(mktemp -d)
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
pids=()
trap cleanup EXIT

strip -o "$work/vm-agent" "$agent_build/vm-agent"
strip -o "$work/heartbeat_floor" "$agent_build/examples/heartbeat_floor"

port_file="$work/control.out"
"$release/stand-in-control" --listen 127.0.0.1:0 --record "$work/control.jsonl" \
    --bootstrap agent-bootstrap-token --bootstrap floor-bootstrap-token --interval-s 1 >"$port_file" &
pids+=($!)
for _ in $(seq 1 100); do grep -q listening "$port_file" 2>/dev/null && break; sleep 0.1; done
control="http://$(awk '/listening on/ {print $3}' "$port_file")"

# The floor gets its credential the way the agent does, by spending a bootstrap token.
credential=$(curl -sS --fail "$control/api/agent/v1/register" -H 'Content-Type: application/json' \
    -d '{"agent_id":"agt_floor","bootstrap_token":"floor-bootstrap-token","boot_id":"x","agent_version":"floor","image_version":"floor"}' \
    | sed -E 's/.*"credential":"([^"]+)".*/\1/')

# A VM for the agent: slice, mount table, tokens, configuration.
mkdir -p "$work/vm/data/home-coder"
printf '22 1 252:1 / / rw - ext4 /dev/vda1 rw\n61 22 0:52 / %s rw - ext4 /dev/sdb rw\n' \
    "$work/vm/data/home-coder" >"$work/vm/mountinfo"
printf 'a-stand-in-tunnel-token' >"$work/vm/tunnel-token"
printf 'agent-bootstrap-token' >"$work/vm/bootstrap-token"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/vm/agent.toml" <<EOF
agent_id = "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ"
image_version = "bench"
control_url = "$control"
allow_insecure_control = true
bootstrap_token_file = "$work/vm/bootstrap-token"
credential_file = "$work/vm/credential"
status_socket = "$work/vm/status.sock"

[cloudflared]
binary = "$release/stand-in-cloudflared"
token_file = "$work/vm/tunnel-token"
metrics = "127.0.0.1:$metrics_port"

[slice]
path = "$work/vm/data/home-coder"
owner = "$(id -un)"
mountinfo = "$work/vm/mountinfo"

[heartbeat]
interval_s = 1
EOF

"$work/vm-agent" run --config "$work/vm/agent.toml" 2>"$work/agent.log" &
agent=$!
pids+=($agent)
"$work/heartbeat_floor" "$control" "$credential" &
floor=$!
pids+=($floor)

echo "measuring for ${duration}s..." >&2
sleep "$duration"

ticks=$(getconf CLK_TCK)
peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
agent_rss=$(peak_kib "$agent"); floor_rss=$(peak_kib "$floor")
agent_cpu=$(cpu_ticks "$agent"); floor_cpu=$(cpu_ticks "$floor")
agent_size=$(stat -c %s "$work/vm-agent"); floor_size=$(stat -c %s "$work/heartbeat_floor")
agent_beats=$(grep -c '"agent_version":"0.1.0"' "$work/control.jsonl" || true)
floor_beats=$(grep -c '"agent_version":"floor"' "$work/control.jsonl" || true)
if ! grep -q '"state":"ready"' "$work/control.jsonl"; then
    echo "warning: the agent never reported the tunnel ready; its log:" >&2
    cat "$work/agent.log" >&2
fi

awk -v d="$duration" -v t="$ticks" \
    -v ar="$agent_rss" -v fr="$floor_rss" -v ac="$agent_cpu" -v fc="$floor_cpu" \
    -v as="$agent_size" -v fs="$floor_size" -v ab="$agent_beats" -v fb="$floor_beats" 'BEGIN {
    printf "vm-agent footprint, %d s at a 1 s heartbeat (floor measured in the same run)\n\n", d
    printf "%-22s %12s %12s %8s\n", "", "vm-agent", "floor", "ratio"
    printf "%-22s %9.2f MiB %9.2f MiB %7.2fx\n", "peak RSS", ar/1024, fr/1024, ar/fr
    printf "%-22s %10.1f s %10.1f s %7.2fx\n", "CPU per hour", ac/t/d*3600, fc/t/d*3600, (fc > 0 ? ac/fc : 0)
    printf "%-22s %9.2f MiB %9.2f MiB %7.2fx\n", "stripped binary", as/1048576, fs/1048576, as/fs
    printf "%-22s %12d %12d\n", "heartbeats sent", ab, fb
    printf "\ngoals: peak RSS <= 6 MiB (%s), binary <= 8 MiB (%s), RSS <= 1.5x floor (%s)\n",
        (ar/1024 <= 6 ? "met" : "MISSED"), (as/1048576 <= 8 ? "met" : "MISSED"), (ar/fr <= 1.5 ? "met" : "MISSED")
}'
