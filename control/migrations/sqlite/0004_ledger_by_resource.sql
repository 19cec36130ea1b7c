-- The ledger belongs to resources of any kind (kind + id), not to Agents alone, so Plain VMs
-- reuse tiling, attribution, conservation and survival unchanged. SQLite cannot drop a foreign
-- key or change a CHECK in place: both tables are rebuilt and every row kept, the existing ones
-- being Agents'. Nothing references either table.

CREATE TABLE state_periods_new (
    id             TEXT PRIMARY KEY,
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('agent', 'plain_vm')),
    resource_id    TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    state          TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);

INSERT INTO state_periods_new (id, resource_kind, resource_id, account_id, state, started_at,
                               ended_at)
SELECT id, 'agent', agent_id, account_id, state, started_at, ended_at
FROM state_periods;

DROP TABLE state_periods;
ALTER TABLE state_periods_new RENAME TO state_periods;

CREATE UNIQUE INDEX state_periods_one_open ON state_periods (resource_kind, resource_id)
    WHERE ended_at IS NULL;
CREATE INDEX state_periods_by_resource ON state_periods (resource_kind, resource_id, started_at);
CREATE INDEX state_periods_by_start ON state_periods (started_at);

-- Ledger invariant 4, held by the database too: a period is never deleted, and once closed it
-- never changes again.
CREATE TRIGGER state_periods_no_delete BEFORE DELETE ON state_periods
BEGIN
    SELECT RAISE(ABORT, 'state_periods are never deleted: DELETE refused');
END;

CREATE TRIGGER state_periods_closed_are_final BEFORE UPDATE ON state_periods
WHEN OLD.ended_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a closed state period never changes: UPDATE refused');
END;

CREATE TABLE usage_daily_new (
    day            TEXT NOT NULL,  -- YYYY-MM-DD, UTC
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('agent', 'plain_vm')),
    resource_id    TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    running_s      BIGINT NOT NULL CHECK (running_s >= 0),
    paused_s       BIGINT NOT NULL CHECK (paused_s >= 0),
    PRIMARY KEY (day, resource_kind, resource_id, account_id)
);

INSERT INTO usage_daily_new (day, resource_kind, resource_id, account_id, running_s, paused_s)
SELECT day, resource_kind, resource_id, account_id, running_s, paused_s
FROM usage_daily;

DROP TABLE usage_daily;
ALTER TABLE usage_daily_new RENAME TO usage_daily;

CREATE INDEX usage_daily_by_account ON usage_daily (account_id, day);
