-- Device identity: public keys, enrollment tokens, issued certificates.

ALTER TABLE tenants ADD COLUMN enrollment_open INTEGER NOT NULL DEFAULT 1;

-- SHA-256 (hex) of the device's public key (SubjectPublicKeyInfo).
ALTER TABLE devices ADD COLUMN key_fingerprint TEXT;
CREATE UNIQUE INDEX devices_key ON devices(tenant_id, key_fingerprint);

CREATE TABLE enrollment_tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    tenant_id    BLOB NOT NULL REFERENCES tenants(id),
    name         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    max_uses     INTEGER,
    uses         INTEGER NOT NULL DEFAULT 0,
    revoked_at   INTEGER,
    device_type  TEXT
) STRICT;
CREATE INDEX enrollment_tokens_tenant ON enrollment_tokens(tenant_id, id);

CREATE TABLE device_certificates (
    serial           TEXT PRIMARY KEY NOT NULL,
    tenant_id        BLOB NOT NULL,
    device_id        BLOB NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    not_before       INTEGER NOT NULL,
    not_after        INTEGER NOT NULL,
    issued_at        INTEGER NOT NULL,
    revoked_at       INTEGER,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
CREATE INDEX device_certificates_device ON device_certificates(tenant_id, device_id);
