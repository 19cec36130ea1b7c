-- Jobs belong to a resource (kind + id), not to an Agent alone, and record the step they
-- reached and what each finished step produced (the provider ids later steps read), so a job
-- killed anywhere resumes at its step. SQLite cannot change a column in place: the table is
-- rebuilt and every row kept. Nothing references jobs, so dropping the old table is safe.

CREATE TABLE jobs_new (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('provision', 'start', 'stop', 'destroy')),
    resource_kind  TEXT NOT NULL CHECK (resource_kind IN ('agent', 'plain_vm')),
    resource_id    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts       BIGINT NOT NULL DEFAULT 0,
    run_after      BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until    BIGINT,
    last_error     TEXT,
    request_id     TEXT,
    created_at     BIGINT NOT NULL,
    finished_at    BIGINT,
    step           BIGINT NOT NULL DEFAULT 0 CHECK (step >= 0),
    outputs        TEXT NOT NULL DEFAULT '{}'  -- JSON object: step name -> what it produced
);

INSERT INTO jobs_new (id, kind, resource_kind, resource_id, status, attempts, run_after,
                      lease_owner, lease_until, last_error, request_id, created_at, finished_at)
SELECT id, kind, 'agent', agent_id, status, attempts, run_after, lease_owner, lease_until,
       last_error, request_id, created_at, finished_at
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE UNIQUE INDEX jobs_one_active ON jobs (resource_kind, resource_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX jobs_due ON jobs (status, run_after);
