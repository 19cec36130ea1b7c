-- The audit chain can only grow at its end, and its head only follows it.
--
-- 1. An event may only extend the chain: its seq is the head's plus one and it links to the
--    head's hash.
-- 2. The database advances the head itself when an event is inserted, as the owner of these
--    functions (SECURITY DEFINER): a runtime role needs only INSERT and SELECT on the audit
--    tables (see README, "A runtime role for PostgreSQL").
-- 3. The head may only move forward, onto the newest event; it is never inserted, deleted or
--    truncated. Rewriting it to itself stays allowed (older releases lock it that way).
-- 4. Appenders lock the head through `audit_lock_head()`, also SECURITY DEFINER, since
--    `SELECT … FOR UPDATE` needs the UPDATE privilege.

CREATE FUNCTION audit_table_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE FUNCTION audit_events_only_extend() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_head WHERE singleton = 1;
    IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash THEN
        RAISE EXCEPTION 'audit_events is append-only: an event must extend the chain at its head (event %, head %); INSERT refused', NEW.seq, head_seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_events_only_extend BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_only_extend();

CREATE FUNCTION audit_events_advance_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE singleton = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_events_advance_head AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_advance_head();

CREATE FUNCTION audit_head_only_advances() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS NOT DISTINCT FROM OLD.seq AND NEW.hash IS NOT DISTINCT FROM OLD.hash THEN
        RETURN NEW;
    END IF;
    IF NEW.seq = OLD.seq + 1
       AND NEW.seq = (SELECT MAX(seq) FROM audit_events)
       AND NEW.hash IS NOT DISTINCT FROM (SELECT hash FROM audit_events WHERE seq = NEW.seq) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_head is append-only: it only advances to the newest event; UPDATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_head_only_advances BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_only_advances();

CREATE TRIGGER audit_head_no_insert_or_delete BEFORE INSERT OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_table_refuse();

CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_table_refuse();

CREATE FUNCTION audit_lock_head() RETURNS TABLE (seq BIGINT, hash TEXT)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT h.seq, h.hash FROM audit_head h WHERE h.singleton = 1 FOR UPDATE;
$$;

-- Signed checkpoints of the head (ed25519), published in the log and the API so that a copy
-- kept outside the database proves the events up to it are all still there.
CREATE TABLE audit_checkpoints (
    seq         BIGINT PRIMARY KEY,
    hash        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL
);

CREATE TRIGGER audit_checkpoints_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_table_refuse();

CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_table_refuse();
