-- Telemetry: the numeric samples devices report, one row per device, metric and millisecond.
-- Writing a sample again for the same (device, metric, at) replaces its value, so a message
-- delivered twice stores its samples once.

CREATE TABLE telemetry_samples (
    tenant_id  BLOB NOT NULL,
    device_id  BLOB NOT NULL,
    metric     TEXT NOT NULL,
    at         INTEGER NOT NULL,
    value      REAL NOT NULL,
    -- Device ids are unique across tenants, so device, metric and time would do; the tenant
    -- leads the key so that a lookup with the wrong tenant finds nothing at once and an upsert
    -- with the wrong tenant never meets another tenant's row (it fails the foreign key). The
    -- key serves a metric's time range and each metric's newest sample.
    PRIMARY KEY (tenant_id, device_id, metric, at),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
-- Without a rowid the rows are stored in key order (a time series per device and metric),
-- once, rather than in a table plus a copy in the key's index.
) STRICT, WITHOUT ROWID;
