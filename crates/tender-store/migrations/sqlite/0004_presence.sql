-- Presence: every connection of a device to a gateway, from connect to disconnect.
-- A device is online while it has a connection with disconnected_at NULL.

CREATE TABLE device_connections (
    id                 BLOB PRIMARY KEY NOT NULL,
    tenant_id          BLOB NOT NULL,
    device_id          BLOB NOT NULL,
    transport          TEXT NOT NULL CHECK (transport IN ('mqtt', 'https')),
    protocol           TEXT NOT NULL,
    remote_addr        TEXT NOT NULL,
    client_id          TEXT,
    connected_at       INTEGER NOT NULL,
    disconnected_at    INTEGER,
    disconnect_reason  TEXT,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
-- A device's history, newest first (v7 ids sort by creation time).
CREATE INDEX device_connections_device ON device_connections(tenant_id, device_id, id);
-- Open connections only: which devices are online, and closing them all at start-up.
CREATE INDEX device_connections_open ON device_connections(tenant_id, device_id)
    WHERE disconnected_at IS NULL;
