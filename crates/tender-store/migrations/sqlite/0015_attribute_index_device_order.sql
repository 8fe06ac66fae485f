-- Nothing to change on SQLite. PostgreSQL's 0015 appends the device id and list position to
-- the attribute indexes, adds statistics on (scope, name, text_value) and an index for name
-- prefix globs; here the table is clustered by its key (WITHOUT ROWID), so the attribute
-- indexes' entries already end with the device id and position, and names are matched with
-- GLOB, which uses the index of 0014.
SELECT 1;
