-- Device search by name (equality, ranges, prefix globs) without scanning the registry.
CREATE INDEX devices_by_name ON devices (tenant_id, name);
