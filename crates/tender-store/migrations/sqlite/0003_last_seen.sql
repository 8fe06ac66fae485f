-- When a device was last heard from (any authenticated request or connection).
ALTER TABLE devices ADD COLUMN last_seen_at INTEGER;
