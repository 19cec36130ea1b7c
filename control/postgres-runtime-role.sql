-- Privileges of `control_runtime`, the PostgreSQL role `control serve` runs as, so that a
-- stolen or misused runtime connection can add to the audit log but never rewrite it: on the
-- audit tables it may only SELECT and INSERT (the head advances through a trigger that runs as
-- the schema's owner). Everything else it reads and writes as control needs.
--
-- The schema's owner makes the role once and then runs this file after every
-- `control migrate` (it only grants and revokes, so running it again is harmless):
--
--   psql "$OWNER_URL" -c "CREATE ROLE control_runtime LOGIN PASSWORD '…'"
--   control --database "$OWNER_URL" migrate
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f control/postgres-runtime-role.sql
--
-- and the replicas are given `postgres://control_runtime:…@HOST/DB`.

GRANT USAGE ON SCHEMA public TO control_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO control_runtime;

-- The audit log: appended to and read, never changed.
REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON audit_events, audit_head, audit_checkpoints FROM control_runtime;
REVOKE INSERT ON audit_head FROM control_runtime;

-- The schema is the owner's: the runtime role reads which migrations ran, nothing more.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM control_runtime;
