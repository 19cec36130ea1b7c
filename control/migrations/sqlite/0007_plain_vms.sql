-- Plain VMs: a server with public IPv4 and IPv6 and its own firewall, set up once by a one-shot
-- cloud-init, and no agent of ours. Their state periods, usage, jobs and audit events live in
-- the shared tables under resource_kind 'plain_vm'. provisioned_at is a timestamp on the VM,
-- not an audit event. Neither the one-time password nor its hash is ever stored here:
-- password_replica only names the replica that holds the hash in memory until the server is
-- made, so no other replica makes it without the password the caller was shown.
CREATE TABLE plain_vms (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts (id),
    name               TEXT NOT NULL,
    hostname           TEXT NOT NULL,
    provider           TEXT NOT NULL,
    server_type        TEXT NOT NULL,
    location           TEXT NOT NULL,
    image              TEXT NOT NULL,
    default_user       TEXT NOT NULL,
    -- JSON array of the Vault keys it was given: {"vault_key_id", "name", "fingerprint"}.
    -- Deleting a key from the Vault leaves this record (and the VM's authorized_keys) alone.
    ssh_keys           TEXT NOT NULL,
    one_time_password  BOOLEAN NOT NULL,
    password_replica   TEXT,
    server_id          TEXT,
    firewall_id        TEXT,
    ipv4               TEXT,
    ipv6               TEXT,
    state              TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    operation          TEXT CHECK (operation IN ('provision', 'start', 'stop', 'destroy')),
    last_error         TEXT,
    provisioned_at     BIGINT NOT NULL,
    destroyed_at       BIGINT,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX plain_vms_by_account ON plain_vms (account_id, id);
