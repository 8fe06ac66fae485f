-- Events: what happened to devices and groups, append-only, numbered in the order written.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    device_id  BLOB,
    group_id   BLOB,
    data       TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_tenant ON events (tenant_id, id);
CREATE INDEX events_by_device ON events (tenant_id, device_id, id);
CREATE INDEX events_by_time ON events (at);

-- The dynamic groups each device was last seen to match, so that joining and leaving are
-- events. Static memberships live in group_members.
CREATE TABLE dynamic_group_members (
    tenant_id BLOB NOT NULL,
    group_id  BLOB NOT NULL,
    device_id BLOB NOT NULL,
    since     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id, group_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups(tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT;
