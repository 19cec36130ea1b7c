-- Agents report in (PostgreSQL): bootstrap tokens, credentials, what control last saw of each vm-agent,
-- and the replicas that judge their health.

-- The single-use token an Agent's first boot exchanges for its credential (hash only).
CREATE TABLE agent_bootstrap (
    agent_id    TEXT PRIMARY KEY REFERENCES agents (id),
    token_hash  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- The long-lived credential a vm-agent heartbeats with (hash only).
CREATE TABLE agent_credentials (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX agent_credentials_by_agent ON agent_credentials (agent_id);

-- What control last saw of each Agent's vm-agent. Written behind (a few times an hour per
-- Agent) except on transitions, so nothing here may be indexed that every write changes:
-- only the key, and the custodian, which changes when an Agent moves to another replica.
CREATE TABLE agent_liveness (
    agent_id          TEXT PRIMARY KEY REFERENCES agents (id),
    custodian         TEXT NOT NULL,  -- the replica that receives its heartbeats and judges its health
    last_seen_at      BIGINT NOT NULL,
    boot_id           TEXT NOT NULL,
    sequence          BIGINT NOT NULL,
    agent_version     TEXT NOT NULL,
    tunnel_state      TEXT NOT NULL,
    slice_state       TEXT NOT NULL,
    report            TEXT NOT NULL,  -- the latest heartbeat, as JSON
    unhealthy_since   BIGINT
);
CREATE INDEX agent_liveness_by_custodian ON agent_liveness (custodian);

-- Every running control announces itself; one silent for too long is gone and its Agents are
-- judged by the others.
CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);

-- Work one replica at a time should do (the reconciler, judging a gone replica's Agents).
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);

-- Replicas follow lifecycle changes by polling this (it changes per operation, not per
-- heartbeat).
CREATE INDEX agents_by_update ON agents (updated_at);
