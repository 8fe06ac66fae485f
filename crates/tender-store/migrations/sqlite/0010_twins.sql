-- The device twin and layered configuration.
--
-- device_twins: one row per device once anything was written. `desired` is the device's own
-- configuration layer (operators write it, with a version for compare-and-set), `reported`
-- what the device says it is; `rendered` is the effective document last sent to the device
-- (fleet, group and device layers merged) and `rendered_version` grows whenever it changes.
-- Documents are canonical JSON text. Versions start at 0 and only grow.

CREATE TABLE device_twins (
    tenant_id        BLOB NOT NULL,
    device_id        BLOB NOT NULL,
    desired          TEXT NOT NULL DEFAULT '{}',
    desired_version  INTEGER NOT NULL DEFAULT 0,
    desired_at       INTEGER,
    reported         TEXT NOT NULL DEFAULT '{}',
    reported_version INTEGER NOT NULL DEFAULT 0,
    reported_at      INTEGER,
    rendered         TEXT NOT NULL DEFAULT '{}',
    rendered_version INTEGER NOT NULL DEFAULT 0,
    rendered_at      INTEGER,
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;

-- Configuration layers: the fleet-wide one (group_id NULL) and one per group. `layer_key`
-- is 'fleet' or 'group:' and the group id, so each exists at most once.
CREATE TABLE config_layers (
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    layer_key  TEXT NOT NULL,
    group_id   BLOB,
    priority   INTEGER NOT NULL DEFAULT 0,
    document   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, layer_key),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups(tenant_id, id) ON DELETE CASCADE
) STRICT;
