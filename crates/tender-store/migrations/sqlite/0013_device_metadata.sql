-- Operator metadata about a device: who owns it and free-form notes. One row per device once
-- set; devices never see it.
CREATE TABLE device_metadata (
    tenant_id  BLOB NOT NULL,
    device_id  BLOB NOT NULL,
    owner      TEXT,
    notes      TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
