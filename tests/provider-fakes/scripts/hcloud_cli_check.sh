#!/usr/bin/env bash
# Drives the Hetzner fake with Hetzner's official CLI (`hcloud`, built on hcloud-go), unchanged,
# through the calls control makes: the catalogue checks (server type, location, image), a
# firewall with no rule, an ext4 volume, a server with user data, labels, the firewall and the
# volume; lookups by label selector; shutdown, power off and on; deletion of all three.
#
# Usage: hcloud_cli_check.sh BASE_URL TOKEN   (e.g. http://127.0.0.1:18088/v1 hetzner-fake-token)
# CI runs it with Debian's hcloud-cli from tests/official_clients.rs.
set -euo pipefail
export HCLOUD_ENDPOINT=$1 HCLOUD_TOKEN=$2
unset HCLOUD_CONTEXT HCLOUD_CONFIG
export HCLOUD_CONFIG=/dev/null
fail() { echo "hcloud-cli check: $*" >&2; exit 1; }

[ "$(hcloud server-type describe cx22 -o format='{{.Name}}')" = cx22 ] || fail "server type"
hcloud server-type describe cx99 >/dev/null 2>&1 && fail "an unknown server type was found"
[ "$(hcloud location describe fsn1 -o format='{{.Name}}')" = fsn1 ] || fail "location"
[ "$(hcloud image describe 114690387 -o format='{{.Name}}')" = debian-12 ] || fail "image"

labels=(--label control/kind=agent --label control/id=agt_cli)
hcloud firewall create --name agt-cli "${labels[@]}" >/dev/null
hcloud volume create --name agt-cli-slice --size 10 --location fsn1 --format ext4 "${labels[@]}" >/dev/null
user_data=$(mktemp)
trap 'rm -f "$user_data"' EXIT
printf '#cloud-config\n{"write_files": []}\n' >"$user_data"
hcloud server create --name agt-cli --type cx22 --image 114690387 --location fsn1 \
    --user-data-from-file "$user_data" "${labels[@]}" \
    --firewall agt-cli --volume agt-cli-slice >/dev/null

found=$(hcloud server list -l control/id=agt_cli -o noheader -o columns=name)
[ "$found" = agt-cli ] || fail "lookup by label selector found '$found'"
[ "$(hcloud server list -l control/id=nobody -o noheader | wc -l)" = 0 ] || fail "selector"
[ "$(hcloud server describe agt-cli -o format='{{.Status}}')" = running ] || fail "not running"
[ "$(hcloud firewall describe agt-cli -o format='{{len .Rules}}')" = 0 ] || fail "rules"
server_id=$(hcloud server describe agt-cli -o format='{{.ID}}')
[ "$(hcloud volume describe agt-cli-slice -o format='{{.Server.ID}}')" = "$server_id" ] || fail "attached"

hcloud server shutdown agt-cli >/dev/null
hcloud server poweroff agt-cli >/dev/null
[ "$(hcloud server describe agt-cli -o format='{{.Status}}')" = off ] || fail "not off"
hcloud server poweron agt-cli >/dev/null
[ "$(hcloud server describe agt-cli -o format='{{.Status}}')" = running ] || fail "not on"

hcloud server delete agt-cli >/dev/null
# The volume and firewall are released once the server's deletion has finished.
for _ in $(seq 1 100); do
    [ "$(hcloud server list -o noheader | wc -l)" = 0 ] && break
    sleep 0.1
done
hcloud volume delete agt-cli-slice >/dev/null
hcloud firewall delete agt-cli >/dev/null
for kind in server volume firewall; do
    [ "$(hcloud "$kind" list -o noheader | wc -l)" = 0 ] || fail "a $kind is left"
done
HCLOUD_TOKEN=wrong hcloud server list >/dev/null 2>&1 && fail "a wrong token was accepted"
echo "hcloud-cli against the fake: all calls passed"
