-- The audit chain can only grow at its end, and its head only follows it.
--
-- 1. An event may only extend the chain: its seq is the head's plus one, it links to the
--    head's hash, and no stored event has its id or hash. A BEFORE INSERT trigger runs before
--    SQLite resolves a conflict, so `INSERT OR REPLACE` (whose implicit delete fires no DELETE
--    trigger) can no longer swap an event out.
-- 2. The database advances the head itself, in the same statement as the insert.
-- 3. The head may only move forward, onto the newest event; it is never inserted or deleted.
--    Rewriting it to itself stays allowed: that is how an appender takes the write lock.

CREATE TRIGGER audit_events_only_extend BEFORE INSERT ON audit_events
WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE singleton = 1)
  OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head WHERE singleton = 1)
  OR EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id OR hash = NEW.hash OR seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: an event must extend the chain at its head; INSERT refused');
END;

CREATE TRIGGER audit_events_advance_head AFTER INSERT ON audit_events
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE singleton = 1;
END;

CREATE TRIGGER audit_head_only_advances BEFORE UPDATE ON audit_head
WHEN (NEW.seq IS NOT OLD.seq OR NEW.hash IS NOT OLD.hash)
 AND NOT (NEW.seq = OLD.seq + 1
          AND NEW.seq = (SELECT MAX(seq) FROM audit_events)
          AND NEW.hash IS (SELECT hash FROM audit_events WHERE seq = NEW.seq))
BEGIN
    SELECT RAISE(ABORT, 'audit_head is append-only: it only advances to the newest event; UPDATE refused');
END;

CREATE TRIGGER audit_head_no_insert BEFORE INSERT ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head is append-only: INSERT refused');
END;

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head is append-only: DELETE refused');
END;

-- Signed checkpoints of the head (ed25519), published in the log and the API so that a copy
-- kept outside the database proves the events up to it are all still there.
CREATE TABLE audit_checkpoints (
    seq         BIGINT PRIMARY KEY,
    hash        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: DELETE refused');
END;
