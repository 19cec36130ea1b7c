-- Control core schema (SQLite). Instants are integer milliseconds since the Unix epoch (UTC).
-- An applied migration is never edited: change the schema with a new file.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('operator', 'account')),
    account_id   TEXT REFERENCES accounts (id),
    label        TEXT,
    -- hex SHA-256 of the secret part; the secret itself is never stored
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    CHECK ((role = 'operator') = (account_id IS NULL))
);

CREATE TABLE images (
    id               TEXT PRIMARY KEY,
    version          TEXT NOT NULL UNIQUE,
    agent_version    TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    refs             TEXT NOT NULL,  -- JSON object: provider -> reference
    env              TEXT NOT NULL,  -- JSON object
    created_at       BIGINT NOT NULL
);

CREATE TABLE current_image (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    image_id   TEXT NOT NULL REFERENCES images (id),
    set_at     BIGINT NOT NULL
);

CREATE TABLE agents (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    name            TEXT NOT NULL,
    provider        TEXT NOT NULL,
    provider_id     TEXT,           -- the VM's id at the provider, once created
    image_id        TEXT NOT NULL REFERENCES images (id),
    image_ref       TEXT NOT NULL,  -- the provider reference pinned at provisioning
    env             TEXT NOT NULL,  -- JSON object pinned at provisioning
    state           TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    operation       TEXT CHECK (operation IN ('provision', 'start', 'stop', 'destroy')),
    last_error      TEXT,
    provisioned_at  BIGINT NOT NULL,
    destroyed_at    BIGINT,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX agents_by_account ON agents (account_id, id);

-- Ledger invariant 1: the periods of an Agent tile [provisioned_at, destroyed_at) with at most
-- one open period. Rows are never deleted (invariant 4).
CREATE TABLE state_periods (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents (id),
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE UNIQUE INDEX state_periods_one_open ON state_periods (agent_id) WHERE ended_at IS NULL;
CREATE INDEX state_periods_by_agent ON state_periods (agent_id, started_at);
CREATE INDEX state_periods_by_start ON state_periods (started_at);

CREATE TABLE usage_daily (
    day            TEXT NOT NULL,  -- YYYY-MM-DD, UTC
    resource_id    TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('agent')),
    running_s      BIGINT NOT NULL CHECK (running_s >= 0),
    paused_s       BIGINT NOT NULL CHECK (paused_s >= 0),
    PRIMARY KEY (day, resource_id, account_id)
);
CREATE INDEX usage_daily_by_account ON usage_daily (account_id, day);

-- One row: the last day whose usage is final, and the lock every rollup takes first.
CREATE TABLE usage_rollup (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    final_through TEXT,
    ran_at        BIGINT
);
INSERT INTO usage_rollup (singleton, final_through, ran_at) VALUES (1, NULL, NULL);

-- Ledger invariant 5: append-only and hash-chained.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_kind  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    account_id     TEXT NOT NULL,
    to_account_id  TEXT,
    request_id     TEXT,
    details        TEXT NOT NULL,
    prev_hash      TEXT NOT NULL UNIQUE,
    hash           TEXT NOT NULL UNIQUE
);
CREATE INDEX audit_events_by_resource ON audit_events (resource_id, seq);
CREATE INDEX audit_events_by_account ON audit_events (account_id, seq);
CREATE INDEX audit_events_by_to_account ON audit_events (to_account_id, seq);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- The end of the chain. Every append updates this row first, which serializes appenders.
CREATE TABLE audit_head (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL
);
INSERT INTO audit_head (singleton, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Durable provider work. At most one active job per Agent.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('provision', 'start', 'stop', 'destroy')),
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    run_after    BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    request_id   TEXT,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE UNIQUE INDEX jobs_one_active ON jobs (agent_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_due ON jobs (status, run_after);

-- Idempotency-Key records: the response of a completed request, replayed to retries.
CREATE TABLE idempotency_keys (
    principal      TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    claim_token    TEXT NOT NULL,  -- which request holds the claim; only it may complete it
    status         BIGINT,  -- NULL while the first request is in flight
    response_body  TEXT,
    locked_until   BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
