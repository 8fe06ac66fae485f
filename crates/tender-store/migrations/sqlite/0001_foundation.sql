-- Tenants, operators, API tokens and the device registry.
-- Identifiers are UUIDs stored as 16-byte BLOBs (v7 ids sort by creation time);
-- times are milliseconds since the Unix epoch.

CREATE TABLE tenants (
    id          BLOB PRIMARY KEY NOT NULL,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE users (
    tenant_id   BLOB NOT NULL REFERENCES tenants(id),
    id          BLOB NOT NULL,
    username    TEXT NOT NULL,
    roles       TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, username)
) STRICT;

CREATE TABLE api_tokens (
    id            BLOB PRIMARY KEY NOT NULL,
    tenant_id     BLOB NOT NULL,
    user_id       BLOB NOT NULL,
    name          TEXT NOT NULL,
    secret_hash   BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    last_used_at  INTEGER,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users(tenant_id, id)
) STRICT;
CREATE INDEX api_tokens_user ON api_tokens(tenant_id, user_id);

CREATE TABLE devices (
    tenant_id         BLOB NOT NULL REFERENCES tenants(id),
    id                BLOB NOT NULL,
    name              TEXT NOT NULL,
    device_type       TEXT,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'preauthorized', 'accepted', 'rejected', 'decommissioned')),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    state_changed_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT;
-- A device id is unique across tenants, so that a certificate's subject names one device.
CREATE UNIQUE INDEX devices_id ON devices(id);
CREATE INDEX devices_tenant_state ON devices(tenant_id, state, id);
