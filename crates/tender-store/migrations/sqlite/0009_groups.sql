-- Device groups: static (explicit members, nested through parent_id) and dynamic (a saved
-- device query; members are whoever matches, so nothing is stored for them).

CREATE TABLE device_groups (
    tenant_id  BLOB NOT NULL REFERENCES tenants(id),
    id         BLOB NOT NULL,
    name       TEXT NOT NULL,
    parent_id  BLOB,
    kind       TEXT NOT NULL CHECK (kind IN ('static', 'dynamic')),
    query      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, parent_id) REFERENCES device_groups(tenant_id, id),
    CHECK ((kind = 'static') = (query IS NULL))
) STRICT;
CREATE UNIQUE INDEX device_groups_name ON device_groups (tenant_id, name);
CREATE INDEX device_groups_parent ON device_groups (tenant_id, parent_id);

CREATE TABLE group_members (
    tenant_id BLOB NOT NULL,
    group_id  BLOB NOT NULL,
    device_id BLOB NOT NULL,
    added_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, group_id, device_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups(tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
) STRICT, WITHOUT ROWID;
-- A device's groups, and "is this device in one of these groups" for queries.
CREATE INDEX group_members_by_device ON group_members (tenant_id, device_id, group_id);
