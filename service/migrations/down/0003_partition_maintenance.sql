-- Undo 0003: the maintenance routines. Partitions they created belong to the tables of 0002 and
-- stay until 0002 is undone.
DROP FUNCTION IF EXISTS prediction_partitions_drop_older_than(interval, timestamptz);
DROP FUNCTION IF EXISTS prediction_partitions_ensure(integer, date);
DELETE FROM schema_migrations WHERE version = 3;
