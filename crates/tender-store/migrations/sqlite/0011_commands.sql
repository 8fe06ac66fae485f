-- Device commands: one row per command, one per (command, target device). The targets are
-- fixed when the command is sent (a group or query is resolved then).

CREATE TABLE commands (
    tenant_id    BLOB NOT NULL REFERENCES tenants(id),
    id           BLOB NOT NULL,
    name         TEXT NOT NULL,
    args         TEXT NOT NULL,
    target       TEXT NOT NULL,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    timeout_secs INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT;

CREATE TABLE command_targets (
    tenant_id    BLOB NOT NULL,
    command_id   BLOB NOT NULL,
    device_id    BLOB NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'succeeded',
                     'failed', 'timed_out', 'expired', 'canceled')),
    attempts     INTEGER NOT NULL,
    deadline_at  INTEGER,
    expires_at   INTEGER NOT NULL,
    sent_at      INTEGER,
    delivered_at INTEGER,
    finished_at  INTEGER,
    updated_at   INTEGER NOT NULL,
    -- The outcome the device reported: stdout is NULL exactly when there is none.
    exit_code    INTEGER,
    stdout       TEXT,
    stderr       TEXT,
    output       TEXT,
    error        TEXT,
    PRIMARY KEY (tenant_id, command_id, device_id),
    FOREIGN KEY (tenant_id, command_id) REFERENCES commands(tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT, WITHOUT ROWID;
-- A device's commands (and its pending ones, at reconnect).
CREATE INDEX command_targets_by_device ON command_targets (tenant_id, device_id, state);
-- The sweeps: attempts past their deadline, targets past their TTL.
CREATE INDEX command_targets_deadline ON command_targets (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX command_targets_pending_expiry ON command_targets (expires_at)
    WHERE state IN ('queued', 'sent', 'delivered');
