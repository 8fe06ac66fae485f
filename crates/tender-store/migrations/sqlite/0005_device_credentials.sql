-- Password credentials for constrained devices that cannot present a client certificate.
-- At most one per device (device ids are unique across tenants); setting it again rotates it.

CREATE TABLE device_credentials (
    device_id    BLOB PRIMARY KEY NOT NULL,
    tenant_id    BLOB NOT NULL,
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
