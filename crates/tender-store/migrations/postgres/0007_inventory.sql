-- Inventory: the attributes a device reports about itself (hardware, OS, software, network),
-- one row per device, replaced whole by each report. `attributes` is the canonical JSON of the
-- core's Inventory (names in order), so equal inventories are equal text and a report that
-- changes nothing keeps `updated_at`.

CREATE TABLE device_inventory (
    tenant_id   UUID NOT NULL,
    device_id   UUID NOT NULL,
    attributes  TEXT NOT NULL,
    -- When the attributes last changed, and when the device last reported them.
    updated_at  BIGINT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
