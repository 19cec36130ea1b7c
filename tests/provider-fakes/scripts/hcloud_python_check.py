"""Drives the Hetzner fake with Hetzner's official Python client (hcloud), unchanged, through the
calls control makes: firewall, volume, server with user_data/labels/firewalls/volumes, actions,
label-selector lists page by page, power changes, deletion.

CI runs it with Debian's python3-hcloud (tests/official_clients.rs); by hand, PyPI's too:
    python3 -m venv /tmp/hc && /tmp/hc/bin/pip install hcloud
    provider-fakes hetzner --listen 127.0.0.1:18088 &
    /tmp/hc/bin/python scripts/hcloud_python_check.py http://127.0.0.1:18088/v1 hetzner-fake-token
"""

import sys

from hcloud import Client
from hcloud.firewalls.domain import FirewallResource, FirewallRule
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.server_types.domain import ServerType


def main(url: str, token: str) -> None:
    client = Client(token=token, api_endpoint=url, poll_interval=0.05)
    labels = {"control.example/agent": "a1", "owner": "control"}

    # What control checks before it records a provisioning.
    assert client.server_types.get_by_name("cx22").name == "cx22"
    assert client.server_types.get_by_name("cx99") is None
    assert client.locations.get_by_name("fsn1").name == "fsn1"
    assert client.images.get_by_id(114690387).name == "debian-12"

    fw = client.firewalls.create(
        name="agent-a1",
        labels=labels,
        rules=[FirewallRule(direction="out", protocol="tcp", port="443", source_ips=[], destination_ips=["0.0.0.0/0", "::/0"])],
    ).firewall
    vol_resp = client.volumes.create(size=10, name="home-a1", location=Location(name="fsn1"), format="ext4", labels=labels)
    vol_resp.action.wait_until_finished()
    volume = vol_resp.volume

    created = client.servers.create(
        name="agent-a1",
        server_type=ServerType(name="cx22"),
        image=Image(name="debian-12"),
        location=Location(name="fsn1"),
        user_data="#cloud-config\n",
        labels=labels,
        firewalls=[fw],
        volumes=[volume],
    )
    created.action.wait_until_finished()
    for action in created.next_actions:
        action.wait_until_finished()
    server = client.servers.get_by_id(created.server.id)
    assert server.status == "running", server.status
    assert [v.id for v in server.volumes] == [volume.id]
    assert server.public_net.firewalls[0].firewall.id == fw.id

    for i in range(60):
        client.servers.create(name=f"extra-{i}", server_type=ServerType(name="cpx11"), image=Image(name="ubuntu-24.04"), labels={"owner": "control"})
    everything = client.servers.get_all(label_selector="owner=control")
    assert len(everything) == 61, len(everything)
    page = client.servers.get_list(label_selector="owner=control", page=2, per_page=50)
    assert len(page.servers) == 11 and page.meta.pagination.last_page == 2, page.meta.pagination
    assert client.servers.get_by_name("agent-a1").id == server.id

    server = server.update(labels={**labels, "state": "checked"})
    assert server.labels["state"] == "checked"
    fw = client.firewalls.update(fw, name="agent-a1-renamed")
    assert fw.name == "agent-a1-renamed"
    server.shutdown().wait_until_finished()
    server.power_off().wait_until_finished()
    assert client.servers.get_by_id(server.id).status == "off"
    server.power_on().wait_until_finished()
    client.firewalls.set_rules(fw, []) [0].wait_until_finished()
    client.firewalls.remove_from_resources(fw, [FirewallResource(type="server", server=server)])[0].wait_until_finished()
    client.volumes.detach(volume).wait_until_finished()
    server.delete().wait_until_finished()
    volume.delete()
    fw.delete()
    assert client.firewalls.get_all() == [] and client.volumes.get_all() == []
    print("hcloud-python against the fake: all calls passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
