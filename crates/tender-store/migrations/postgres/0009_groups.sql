-- Device groups: static (explicit members, nested through parent_id) and dynamic (a saved
-- device query; members are whoever matches, so nothing is stored for them).

CREATE TABLE device_groups (
    tenant_id  UUID NOT NULL REFERENCES tenants(id),
    id         UUID NOT NULL,
    name       TEXT NOT NULL,
    parent_id  UUID,
    kind       TEXT NOT NULL CHECK (kind IN ('static', 'dynamic')),
    query      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, parent_id) REFERENCES device_groups(tenant_id, id),
    CHECK ((kind = 'static') = (query IS NULL))
);
CREATE UNIQUE INDEX device_groups_name ON device_groups (tenant_id, name);
CREATE INDEX device_groups_parent ON device_groups (tenant_id, parent_id);

CREATE TABLE group_members (
    tenant_id UUID NOT NULL,
    group_id  UUID NOT NULL,
    device_id UUID NOT NULL,
    added_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, group_id, device_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups(tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id)
);
-- A device's groups, and "is this device in one of these groups" for queries.
CREATE INDEX group_members_by_device ON group_members (tenant_id, device_id, group_id);
