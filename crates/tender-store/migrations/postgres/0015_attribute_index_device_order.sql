-- Device search at a million devices.
--
-- The attribute indexes end with the device id and the list position, so that one value's
-- entries come out in device order (a page walks them and stops after its limit instead of
-- sorting every match) and a count finds each device's first match from the index alone.
-- SQLite's table is clustered by its key, so its indexes already carry both.
DROP INDEX device_attributes_by_text;
CREATE INDEX device_attributes_by_text
    ON device_attributes (tenant_id, scope, name, text_value, device_id, seq);
DROP INDEX device_attributes_by_number;
CREATE INDEX device_attributes_by_number
    ON device_attributes (tenant_id, scope, name, num_value, device_id, seq);

-- The name decides the scope and the value's distribution: estimated as independent columns,
-- `scope = 'tag' AND name = 'site' AND text_value = 'lyon'` came out at 2,000 rows for
-- 125,000, and the planner read every match to sort them. Statistics on the combination (its
-- most common values) give the planner the real figure.
CREATE STATISTICS device_attributes_values (mcv, dependencies)
    ON scope, name, text_value FROM device_attributes;
ANALYZE device_attributes;

-- Name prefix globs (`LIKE 'dev-00012%'`): the index of 0014 orders names by the database's
-- collation, which LIKE can only use under the C collation; this one compares bytes whatever
-- the collation (ranges keep using 0014's).
CREATE INDEX devices_by_name_pattern ON devices (tenant_id, name text_pattern_ops);
