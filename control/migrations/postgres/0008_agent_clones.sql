-- Cloning: a clone names the Agent its /data/home-coder was copied from (cloned_from, kept
-- forever), and the source names the clone being made of it (cloning_to) until that clone's
-- job ends. cloning_to is on the source's own row so that start, stop, destroy and another
-- clone, which compare-and-set that row, see it under the row's lock.

ALTER TABLE agents ADD COLUMN cloned_from TEXT REFERENCES agents (id);
ALTER TABLE agents ADD COLUMN cloning_to TEXT REFERENCES agents (id);
