-- Password credentials for constrained devices that cannot present a client certificate.
-- At most one per device (device ids are unique across tenants); setting it again rotates it.

CREATE TABLE device_credentials (
    device_id    UUID PRIMARY KEY,
    tenant_id    UUID NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
