-- Tenants, operators, API tokens and the device registry.
-- Times are milliseconds since the Unix epoch (the same representation as on SQLite, so both
-- adapters share their SQL and round-trip identical values).

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    tenant_id   UUID NOT NULL REFERENCES tenants(id),
    id          UUID NOT NULL,
    username    TEXT NOT NULL,
    roles       TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, username)
);

CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL,
    user_id       UUID NOT NULL,
    name          TEXT NOT NULL,
    secret_hash   BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users(tenant_id, id)
);
CREATE INDEX api_tokens_user ON api_tokens(tenant_id, user_id);

CREATE TABLE devices (
    tenant_id         UUID NOT NULL REFERENCES tenants(id),
    id                UUID NOT NULL,
    name              TEXT NOT NULL,
    device_type       TEXT,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'preauthorized', 'accepted', 'rejected', 'decommissioned')),
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    state_changed_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- A device id is unique across tenants, so that a certificate's subject names one device.
CREATE UNIQUE INDEX devices_id ON devices(id);
CREATE INDEX devices_tenant_state ON devices(tenant_id, state, id);
