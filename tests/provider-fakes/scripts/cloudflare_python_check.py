"""Drives the Cloudflare fake with Cloudflare's official Python client (cloudflare), unchanged,
through the calls control makes: create a remotely managed tunnel, look it up by name among live
tunnels (paging), fetch its token, set its ingress, create the CNAME and look it up by name, then
delete the connections, the tunnel and the record; and the refusals a careful client meets (a name
conflict, 1022 while cloudflared is connected, a record on a taken host, a spent limit).

CI runs it from the virtualenv .ci/run makes (tests/official_clients.rs); by hand:
    python3 -m venv /tmp/cfpy && /tmp/cfpy/bin/pip install cloudflare
    provider-fakes cloudflare --listen 127.0.0.1:18089 --rate-limit 60 &
    /tmp/cfpy/bin/python scripts/cloudflare_python_check.py http://127.0.0.1:18089/client/v4 \\
        cloudflare-fake-token 0f1e2d3c4b5a69788796a5b4c3d2e1f0 9a8b7c6d5e4f30211203f4e5d6c7b8a9
The fake must be fresh and its limit at least 40 (the last step spends the rest of it).
"""

import base64
import json
import sys

import cloudflare
from cloudflare import Cloudflare


def main(url: str, token: str, account: str, zone: str) -> None:
    client = Cloudflare(api_token=token, base_url=url, max_retries=0)
    tunnels = client.zero_trust.tunnels.cloudflared

    created = tunnels.create(account_id=account, name="agent-py", config_src="cloudflare")
    assert created.status == "inactive" and created.deleted_at is None, created
    assert created.config_src == "cloudflare" and created.remote_config is True, created
    tid = created.id

    try:
        tunnels.create(account_id=account, name="agent-py", config_src="cloudflare")
        raise AssertionError("a second tunnel of the same name")
    except cloudflare.ConflictError as e:
        assert e.status_code == 409 and e.body["errors"][0]["code"] == 1013, e.body

    for i in range(3):
        tunnels.create(account_id=account, name=f"other-{i}", config_src="cloudflare")
    found = list(tunnels.list(account_id=account, name="agent-py", is_deleted=False))
    assert [t.id for t in found] == [tid], found
    every = list(tunnels.list(account_id=account, per_page=2))
    assert len(every) == 4, f"the paginator walks every page: {every}"

    got = tunnels.get(tid, account_id=account)
    assert got.name == "agent-py", got

    tok = tunnels.token.get(tid, account_id=account)
    assert isinstance(tok, str), tok
    assert json.loads(base64.b64decode(tok))["t"] == tid

    ingress = [
        {"hostname": "agent-py.agents.example.test", "service": "http://localhost:8080"},
        {"service": "http_status:404"},
    ]
    tunnels.configurations.update(tid, account_id=account, config={"ingress": ingress})
    conf = tunnels.configurations.get(tid, account_id=account)
    assert conf.config.ingress[0].hostname == "agent-py.agents.example.test", conf
    assert conf.version == 1, conf
    try:
        tunnels.configurations.update(tid, account_id=account, config={"ingress": ingress[:1]})
        raise AssertionError("ingress without a catch-all")
    except cloudflare.BadRequestError as e:
        assert e.status_code == 400, e

    records = client.dns.records
    rec = records.create(
        zone_id=zone,
        type="CNAME",
        name="agent-py.agents.example.test",
        content=f"{tid}.cfargotunnel.com",
        proxied=True,
        ttl=1,
    )
    assert rec.name == "agent-py.agents.example.test" and rec.proxied, rec
    try:
        records.create(zone_id=zone, type="CNAME", name="agent-py", content="x.cfargotunnel.com", proxied=True, ttl=1)
        raise AssertionError("a second record on the same host")
    except cloudflare.BadRequestError as e:
        assert e.body["errors"][0]["code"] == 81053, e.body
    by_name = list(records.list(zone_id=zone, name={"exact": "agent-py.agents.example.test"}, type="CNAME"))
    assert [r.id for r in by_name] == [rec.id], by_name
    by_plain_name = list(records.list(zone_id=zone, type="CNAME"))
    assert [r.id for r in by_plain_name] == [rec.id], by_plain_name

    # The delete path: connections, tunnel, record.
    tunnels.connections.delete(tid, account_id=account)
    deleted = tunnels.delete(tid, account_id=account)
    assert deleted.deleted_at is not None, deleted
    records.delete(rec.id, zone_id=zone)
    try:
        records.get(rec.id, zone_id=zone)
        raise AssertionError("a deleted record")
    except cloudflare.NotFoundError as e:
        assert e.body["errors"][0]["code"] == 81044, e.body

    try:
        Cloudflare(api_token="wrong", base_url=url, max_retries=0).zero_trust.tunnels.cloudflared.get(
            tid, account_id=account
        )
        raise AssertionError("a wrong token")
    except cloudflare.AuthenticationError as e:
        assert e.status_code == 401, e

    # Spend the rest of the limit: the client sees a RateLimitError with Retry-After.
    try:
        for _ in range(2000):
            tunnels.get(tid, account_id=account)
        raise AssertionError("no 429")
    except cloudflare.RateLimitError as e:
        assert e.response.headers.get("retry-after"), e.response.headers
        assert e.body["errors"][0]["code"] == 971, e.body

    print("cloudflare-python", cloudflare.__version__, "against the fake: every step as expected")


if __name__ == "__main__":
    main(*sys.argv[1:5])
