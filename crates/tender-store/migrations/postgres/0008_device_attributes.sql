-- Searchable device attributes: one row per inventory attribute (one per element of a list)
-- and per operator tag, so that a device query compiles to index lookups on both backends
-- (`EXISTS (SELECT 1 FROM device_attributes WHERE ... name = ? AND text_value = ?)`).
-- Tags live only here (scope 'tag'); inventory rows mirror device_inventory and are rewritten
-- with it whenever the inventory changes (an inventory reported before this migration is
-- indexed at the device's next report: the agent reports at every start).
--
-- text_value is the value as text (numbers in their shortest form, booleans 'true'/'false');
-- num_value is set for numbers, and for text that reads entirely as a finite number, so that
-- `inventory.os.version >= 22` works on "22.04".

CREATE TABLE device_attributes (
    tenant_id  UUID NOT NULL,
    device_id  UUID NOT NULL,
    scope      TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    -- Position in a list value; 0 for a single value.
    seq        BIGINT NOT NULL,
    text_value TEXT COLLATE "C" NOT NULL,
    num_value  DOUBLE PRECISION,
    PRIMARY KEY (tenant_id, device_id, scope, name, seq),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
CREATE INDEX device_attributes_by_text ON device_attributes (tenant_id, scope, name, text_value);
CREATE INDEX device_attributes_by_number ON device_attributes (tenant_id, scope, name, num_value);
