-- Webhooks: operators' HTTP endpoints that receive the event log, and the deliveries to them.
-- `event_cursor` is the id of the last event the dispatcher looked at for the webhook. Deliveries are
-- numbered (`seq`) in the order they were made: one endpoint gets them in that order.

CREATE TABLE webhooks (
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    id         BLOB NOT NULL,
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    filter     TEXT NOT NULL,
    enabled    INTEGER NOT NULL,
    secret     TEXT NOT NULL,
    event_cursor INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT;

CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB NOT NULL UNIQUE,
    tenant_id       BLOB NOT NULL,
    webhook_id      BLOB NOT NULL,
    event_id        INTEGER,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks(tenant_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (tenant_id, webhook_id, seq);
CREATE INDEX webhook_deliveries_queued ON webhook_deliveries (next_attempt_at)
    WHERE state IN ('pending', 'failed');
