-- Vault keys: an account's OpenSSH public keys, given to Plain VMs at provisioning. A key is
-- stored as VMs receive it (algorithm, base64, comment; never authorized_keys options), with
-- its SHA256 fingerprint, unique per account. Deleting a key deletes its row only: the VMs
-- that received it record its fingerprint and keep it.
CREATE TABLE vault_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    name        TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    bits        BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    comment     TEXT,
    created_at  BIGINT NOT NULL,
    UNIQUE (account_id, fingerprint)
);
