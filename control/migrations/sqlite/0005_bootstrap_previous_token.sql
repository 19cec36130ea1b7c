-- A provisioning attempt that finds no server arms a new bootstrap token, replacing the unused
-- one an earlier attempt armed. If that earlier attempt's server exists after all (its create
-- completed after the client gave up, and the provider's listing did not show it yet), the
-- new attempt's create meets a uniqueness conflict and adopts that server, which holds the
-- earlier token. So the token replaced stays good beside the new one until either is spent;
-- an operator's re-bootstrap clears it.
ALTER TABLE agent_bootstrap ADD COLUMN previous_token_hash TEXT;
