-- Remote logs: one row per operator request for one device's logs, and the gzip the device
-- uploaded for it (capped by the server, so it is kept in the database).

CREATE TABLE log_requests (
    tenant_id   BLOB NOT NULL,
    id          BLOB NOT NULL,
    device_id   BLOB NOT NULL,
    sources     TEXT NOT NULL,
    since       INTEGER,
    until       INTEGER,
    lines       INTEGER NOT NULL,
    max_bytes   INTEGER NOT NULL,
    follow      INTEGER NOT NULL,
    created_by  TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'uploading', 'ready', 'failed',
                    'expired')),
    sent_at     INTEGER,
    finished_at INTEGER,
    updated_at  INTEGER NOT NULL,
    error       TEXT,
    size        INTEGER,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
-- A device's requests (newest first), and its open ones at reconnect.
CREATE INDEX log_requests_by_device ON log_requests (tenant_id, device_id, id);
-- The sweep: open requests past their TTL.
CREATE INDEX log_requests_open_expiry ON log_requests (expires_at)
    WHERE state IN ('pending', 'sent', 'uploading');

CREATE TABLE log_contents (
    tenant_id  BLOB NOT NULL,
    request_id BLOB NOT NULL,
    gzip       BLOB NOT NULL,
    PRIMARY KEY (tenant_id, request_id),
    FOREIGN KEY (tenant_id, request_id) REFERENCES log_requests(tenant_id, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
