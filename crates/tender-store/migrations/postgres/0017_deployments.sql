-- Deployments of artifacts to devices: one row per deployment (phases and options as JSON, the
-- rollout's own state, a revision for compare-and-set) and one per (deployment, device).

CREATE TABLE deployments (
    tenant_id          UUID NOT NULL REFERENCES tenants(id),
    id                 UUID NOT NULL,
    name               TEXT NOT NULL,
    artifact_id        UUID NOT NULL,
    target             TEXT NOT NULL,
    query              TEXT,
    phases             TEXT NOT NULL,
    options            TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('scheduled', 'running', 'paused',
                           'completed', 'canceled', 'aborted')),
    status_reason      TEXT,
    current_phase      BIGINT NOT NULL,
    approved_phases    TEXT NOT NULL,
    accepted_failures  TEXT NOT NULL,
    created_by         TEXT,
    created_at         BIGINT NOT NULL,
    start_at           BIGINT,
    started_at         BIGINT,
    finished_at        BIGINT,
    updated_at         BIGINT NOT NULL,
    revision           BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, artifact_id) REFERENCES artifacts(tenant_id, id)
);
CREATE INDEX deployments_active ON deployments (state) WHERE state IN ('scheduled', 'running');

CREATE TABLE deployment_targets (
    tenant_id     UUID NOT NULL,
    deployment_id UUID NOT NULL,
    device_id     UUID NOT NULL,
    phase         BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'notified', 'downloading',
                      'downloaded', 'installing', 'rebooting', 'verifying', 'succeeded', 'failed',
                      'rolled_back', 'skipped', 'incompatible', 'canceled')),
    attempts      BIGINT NOT NULL,
    retry_at      BIGINT,
    notified_at   BIGINT,
    finished_at   BIGINT,
    updated_at    BIGINT NOT NULL,
    progress      BIGINT,
    error         TEXT,
    log           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, deployment_id, device_id),
    FOREIGN KEY (tenant_id, deployment_id) REFERENCES deployments(tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
CREATE INDEX deployment_targets_by_state ON deployment_targets (tenant_id, deployment_id, state, phase);
CREATE INDEX deployment_targets_by_device ON deployment_targets (tenant_id, device_id, state);
