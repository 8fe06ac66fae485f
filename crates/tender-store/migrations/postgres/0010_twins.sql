-- The device twin and layered configuration.
--
-- device_twins: one row per device once anything was written. `desired` is the device's own
-- configuration layer (operators write it, with a version for compare-and-set), `reported`
-- what the device says it is; `rendered` is the effective document last sent to the device
-- (fleet, group and device layers merged) and `rendered_version` grows whenever it changes.
-- Documents are canonical JSON text. Versions start at 0 and only grow.

CREATE TABLE device_twins (
    tenant_id        UUID NOT NULL,
    device_id        UUID NOT NULL,
    desired          TEXT NOT NULL DEFAULT '{}',
    desired_version  BIGINT NOT NULL DEFAULT 0,
    desired_at       BIGINT,
    reported         TEXT NOT NULL DEFAULT '{}',
    reported_version BIGINT NOT NULL DEFAULT 0,
    reported_at      BIGINT,
    rendered         TEXT NOT NULL DEFAULT '{}',
    rendered_version BIGINT NOT NULL DEFAULT 0,
    rendered_at      BIGINT,
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);

-- Configuration layers: the fleet-wide one (group_id NULL) and one per group. `layer_key`
-- is 'fleet' or 'group:' and the group id, so each exists at most once.
CREATE TABLE config_layers (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    layer_key  TEXT NOT NULL,
    group_id   UUID,
    priority   BIGINT NOT NULL DEFAULT 0,
    document   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, layer_key),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups(tenant_id, id) ON DELETE CASCADE
);
