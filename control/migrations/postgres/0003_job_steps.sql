-- Jobs belong to a resource (kind + id), not to an Agent alone, and record the step they
-- reached and what each finished step produced (the provider ids later steps read), so a job
-- killed anywhere resumes at its step. Every existing row is kept.

ALTER TABLE jobs DROP CONSTRAINT jobs_agent_id_fkey;
ALTER TABLE jobs RENAME COLUMN agent_id TO resource_id;
ALTER TABLE jobs ADD COLUMN resource_kind TEXT NOT NULL DEFAULT 'agent'
    CHECK (resource_kind IN ('agent', 'plain_vm'));
ALTER TABLE jobs ALTER COLUMN resource_kind DROP DEFAULT;
ALTER TABLE jobs ADD COLUMN step BIGINT NOT NULL DEFAULT 0 CHECK (step >= 0);
-- JSON object: step name -> what it produced.
ALTER TABLE jobs ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}';

DROP INDEX jobs_one_active;
CREATE UNIQUE INDEX jobs_one_active ON jobs (resource_kind, resource_id)
    WHERE status IN ('queued', 'running');
