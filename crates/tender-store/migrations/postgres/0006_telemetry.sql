-- Telemetry: the numeric samples devices report, one row per device, metric and millisecond.
-- Writing a sample again for the same (device, metric, at) replaces its value, so a message
-- delivered twice stores its samples once.

CREATE TABLE telemetry_samples (
    tenant_id  UUID NOT NULL,
    device_id  UUID NOT NULL,
    -- Names are ASCII: "C" compares them bytewise, as SQLite does, and cheaply.
    metric     TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    -- Device ids are unique across tenants, so device, metric and time would do; the tenant
    -- leads the key so that a lookup with the wrong tenant finds nothing at once and an upsert
    -- with the wrong tenant never meets another tenant's row (it fails the foreign key). The
    -- key serves a metric's time range and each metric's newest sample.
    PRIMARY KEY (tenant_id, device_id, metric, at),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
