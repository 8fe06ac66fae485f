-- Alert rules (the condition and scope as their canonical text) and alerts, one row per firing
-- of a rule on a device. At most one alert per (rule, device) is open (not resolved); resolved
-- alerts are history and stay when their rule is deleted (no foreign key to the rule).

CREATE TABLE alert_rules (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    id         UUID NOT NULL,
    name       TEXT NOT NULL,
    severity   TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    scope      TEXT NOT NULL,
    condition  TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    created_by TEXT,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE alerts (
    tenant_id       UUID NOT NULL REFERENCES tenants(id),
    id              UUID NOT NULL,
    rule_id         UUID NOT NULL,
    device_id       UUID NOT NULL,
    rule_name       TEXT NOT NULL,
    severity        TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state           TEXT NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
    fired_at        BIGINT NOT NULL,
    value           DOUBLE PRECISION,
    reason          TEXT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    ack_note        TEXT,
    resolved_at     BIGINT,
    resolve_reason  TEXT,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
CREATE UNIQUE INDEX alerts_open_per_rule_device ON alerts (tenant_id, rule_id, device_id)
    WHERE state <> 'resolved';
CREATE INDEX alerts_open ON alerts (state) WHERE state <> 'resolved';
CREATE INDEX alerts_by_device ON alerts (tenant_id, device_id, id);
CREATE INDEX alerts_by_rule ON alerts (tenant_id, rule_id, id);
