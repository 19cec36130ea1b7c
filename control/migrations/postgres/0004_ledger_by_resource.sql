-- The ledger belongs to resources of any kind (kind + id), not to Agents alone, so Plain VMs
-- reuse tiling, attribution, conservation and survival unchanged. Every existing row is kept,
-- the existing ones being Agents'.

ALTER TABLE state_periods DROP CONSTRAINT state_periods_agent_id_fkey;
ALTER TABLE state_periods RENAME COLUMN agent_id TO resource_id;
ALTER TABLE state_periods ADD COLUMN resource_kind TEXT NOT NULL DEFAULT 'agent'
    CHECK (resource_kind IN ('agent', 'plain_vm'));
ALTER TABLE state_periods ALTER COLUMN resource_kind DROP DEFAULT;

DROP INDEX state_periods_one_open;
DROP INDEX state_periods_by_agent;
CREATE UNIQUE INDEX state_periods_one_open ON state_periods (resource_kind, resource_id)
    WHERE ended_at IS NULL;
CREATE INDEX state_periods_by_resource ON state_periods (resource_kind, resource_id, started_at);

-- Ledger invariant 4, held by the database too: a period is never deleted, and once closed it
-- never changes again.
CREATE FUNCTION state_periods_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'a closed state period never changes: UPDATE refused'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'state_periods are never deleted: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER state_periods_no_delete BEFORE DELETE ON state_periods
    FOR EACH ROW EXECUTE FUNCTION state_periods_refuse();

CREATE TRIGGER state_periods_no_truncate BEFORE TRUNCATE ON state_periods
    FOR EACH STATEMENT EXECUTE FUNCTION state_periods_refuse();

CREATE TRIGGER state_periods_closed_are_final BEFORE UPDATE ON state_periods
    FOR EACH ROW WHEN (OLD.ended_at IS NOT NULL) EXECUTE FUNCTION state_periods_refuse();

ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_resource_kind_check;
ALTER TABLE usage_daily ADD CONSTRAINT usage_daily_resource_kind_check
    CHECK (resource_kind IN ('agent', 'plain_vm'));
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey;
ALTER TABLE usage_daily ADD PRIMARY KEY (day, resource_kind, resource_id, account_id);
