-- Deployments of artifacts to devices: one row per deployment (phases and options as JSON, the
-- rollout's own state, a revision for compare-and-set) and one per (deployment, device).

CREATE TABLE deployments (
    tenant_id          BLOB NOT NULL REFERENCES tenants(id),
    id                 BLOB NOT NULL,
    name               TEXT NOT NULL,
    artifact_id        BLOB NOT NULL,
    target             TEXT NOT NULL,
    query              TEXT,
    phases             TEXT NOT NULL,
    options            TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('scheduled', 'running', 'paused',
                           'completed', 'canceled', 'aborted')),
    status_reason      TEXT,
    current_phase      INTEGER NOT NULL,
    approved_phases    TEXT NOT NULL,
    accepted_failures  TEXT NOT NULL,
    created_by         TEXT,
    created_at         INTEGER NOT NULL,
    start_at           INTEGER,
    started_at         INTEGER,
    finished_at        INTEGER,
    updated_at         INTEGER NOT NULL,
    revision           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, artifact_id) REFERENCES artifacts(tenant_id, id)
) STRICT;
CREATE INDEX deployments_active ON deployments (state) WHERE state IN ('scheduled', 'running');

CREATE TABLE deployment_targets (
    tenant_id     BLOB NOT NULL,
    deployment_id BLOB NOT NULL,
    device_id     BLOB NOT NULL,
    phase         INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'notified', 'downloading',
                      'downloaded', 'installing', 'rebooting', 'verifying', 'succeeded', 'failed',
                      'rolled_back', 'skipped', 'incompatible', 'canceled')),
    attempts      INTEGER NOT NULL,
    retry_at      INTEGER,
    notified_at   INTEGER,
    finished_at   INTEGER,
    updated_at    INTEGER NOT NULL,
    progress      INTEGER,
    error         TEXT,
    log           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, deployment_id, device_id),
    FOREIGN KEY (tenant_id, deployment_id) REFERENCES deployments(tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
CREATE INDEX deployment_targets_by_state ON deployment_targets (tenant_id, deployment_id, state, phase);
CREATE INDEX deployment_targets_by_device ON deployment_targets (tenant_id, device_id, state);
