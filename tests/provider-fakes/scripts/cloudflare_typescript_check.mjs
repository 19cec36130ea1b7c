// Drives the Cloudflare fake with Cloudflare's official TypeScript client (npm `cloudflare`),
// unchanged, through the calls control makes and the refusals it meets.
//
// Run by hand (not in CI, it needs npm's `cloudflare`):
//     mkdir /tmp/cfts && cd /tmp/cfts && npm init -y && npm install cloudflare
//     provider-fakes cloudflare --listen 127.0.0.1:18090 &
//     cp scripts/cloudflare_typescript_check.mjs /tmp/cfts/check.mjs   # ESM resolves from there
//     node /tmp/cfts/check.mjs http://127.0.0.1:18090/client/v4 cloudflare-fake-token \
//         0f1e2d3c4b5a69788796a5b4c3d2e1f0 9a8b7c6d5e4f30211203f4e5d6c7b8a9
// The fake must be fresh.

import assert from "node:assert/strict";
import Cloudflare from "cloudflare";

const [url, token, account, zone] = process.argv.slice(2);
const client = new Cloudflare({ apiToken: token, baseURL: url, maxRetries: 0 });
const tunnels = client.zeroTrust.tunnels.cloudflared;

const created = await tunnels.create({ account_id: account, name: "agent-ts", config_src: "cloudflare" });
assert.equal(created.status, "inactive");
const tid = created.id;

await assert.rejects(
  tunnels.create({ account_id: account, name: "agent-ts", config_src: "cloudflare" }),
  (e) => e instanceof Cloudflare.ConflictError && e.errors[0].code === 1013,
);

for (let i = 0; i < 3; i++) {
  await tunnels.create({ account_id: account, name: `other-${i}`, config_src: "cloudflare" });
}
const found = [];
for await (const t of tunnels.list({ account_id: account, name: "agent-ts", is_deleted: false })) found.push(t.id);
assert.deepEqual(found, [tid]);
const every = [];
for await (const t of tunnels.list({ account_id: account, per_page: 2 })) every.push(t.id);
assert.equal(every.length, 4, "the paginator walks every page");

const tok = await tunnels.token.get(tid, { account_id: account });
assert.equal(typeof tok, "string");
assert.equal(JSON.parse(Buffer.from(tok, "base64").toString()).t, tid);

const ingress = [
  { hostname: "agent-ts.agents.example.test", service: "http://localhost:8080" },
  { service: "http_status:404" },
];
await tunnels.configurations.update(tid, { account_id: account, config: { ingress } });
const conf = await tunnels.configurations.get(tid, { account_id: account });
assert.equal(conf.config.ingress[0].hostname, "agent-ts.agents.example.test");
await assert.rejects(
  tunnels.configurations.update(tid, { account_id: account, config: { ingress: ingress.slice(0, 1) } }),
  (e) => e instanceof Cloudflare.BadRequestError,
);

const rec = await client.dns.records.create({
  zone_id: zone, type: "CNAME", name: "agent-ts.agents.example.test",
  content: `${tid}.cfargotunnel.com`, proxied: true, ttl: 1,
});
await assert.rejects(
  client.dns.records.create({ zone_id: zone, type: "CNAME", name: "agent-ts", content: "x.cfargotunnel.com", proxied: true, ttl: 1 }),
  (e) => e instanceof Cloudflare.BadRequestError && e.errors[0].code === 81053,
);
const byName = [];
for await (const r of client.dns.records.list({ zone_id: zone, name: { exact: "agent-ts.agents.example.test" }, type: "CNAME" })) byName.push(r.id);
assert.deepEqual(byName, [rec.id]);

await tunnels.connections.delete(tid, { account_id: account });
const deleted = await tunnels.delete(tid, { account_id: account });
assert.ok(deleted.deleted_at);
const gone = await client.dns.records.delete(rec.id, { zone_id: zone });
assert.equal(gone.id, rec.id);
await assert.rejects(
  client.dns.records.get(rec.id, { zone_id: zone }),
  (e) => e instanceof Cloudflare.NotFoundError && e.errors[0].code === 81044,
);
await assert.rejects(
  new Cloudflare({ apiToken: "wrong", baseURL: url, maxRetries: 0 }).zeroTrust.tunnels.cloudflared.get(tid, { account_id: account }),
  (e) => e instanceof Cloudflare.AuthenticationError,
);
console.log("cloudflare (TypeScript) against the fake: every step as expected");
