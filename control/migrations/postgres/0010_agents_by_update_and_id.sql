-- Replicas follow lifecycle changes in pages ordered by (updated_at, id), each page starting
-- strictly after the last change read. With the index on updated_at alone, each page read
-- every row sharing its starting updated_at before the first one after it: when many Agents
-- change in the same millisecond (an import, a bulk stop, a fleet seeded at once), every
-- follow, every second, read them all again. On (updated_at, id), a page starts where the
-- last one ended.
CREATE INDEX agents_by_update_and_id ON agents (updated_at, id);
DROP INDEX agents_by_update;
