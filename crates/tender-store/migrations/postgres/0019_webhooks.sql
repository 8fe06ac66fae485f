-- Webhooks: operators' HTTP endpoints that receive the event log, and the deliveries to them.
-- `event_cursor` is the id of the last event the dispatcher looked at for the webhook. Deliveries are
-- numbered (`seq`) in the order they were made: one endpoint gets them in that order.

CREATE TABLE webhooks (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    id         UUID NOT NULL,
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    filter     TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL,
    secret     TEXT NOT NULL,
    event_cursor BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE webhook_deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID NOT NULL UNIQUE,
    tenant_id       UUID NOT NULL,
    webhook_id      UUID NOT NULL,
    event_id        BIGINT,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks(tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (tenant_id, webhook_id, seq);
CREATE INDEX webhook_deliveries_queued ON webhook_deliveries (next_attempt_at)
    WHERE state IN ('pending', 'failed');
