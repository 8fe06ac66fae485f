-- Device identity: public keys, enrollment tokens, issued certificates.

ALTER TABLE tenants ADD COLUMN enrollment_open BOOLEAN NOT NULL DEFAULT TRUE;

-- SHA-256 (hex) of the device's public key (SubjectPublicKeyInfo).
ALTER TABLE devices ADD COLUMN key_fingerprint TEXT;
CREATE UNIQUE INDEX devices_key ON devices(tenant_id, key_fingerprint);

CREATE TABLE enrollment_tokens (
    id           UUID PRIMARY KEY,
    tenant_id    UUID NOT NULL REFERENCES tenants(id),
    name         TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    max_uses     BIGINT,
    uses         BIGINT NOT NULL DEFAULT 0,
    revoked_at   BIGINT,
    device_type  TEXT
);
CREATE INDEX enrollment_tokens_tenant ON enrollment_tokens(tenant_id, id);

CREATE TABLE device_certificates (
    serial           TEXT PRIMARY KEY,
    tenant_id        UUID NOT NULL,
    device_id        UUID NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    not_before       BIGINT NOT NULL,
    not_after        BIGINT NOT NULL,
    issued_at        BIGINT NOT NULL,
    revoked_at       BIGINT,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
CREATE INDEX device_certificates_device ON device_certificates(tenant_id, device_id);
