-- Undo 0002: the tables with all their partitions (or hypertable chunks and retention jobs).
-- drops-data: predictions, prediction_metrics
-- The timescaledb extension itself is left installed: other objects of the database may use it,
-- and the docker image installs it on its own anyway.
DROP TABLE IF EXISTS prediction_metrics CASCADE;
DROP TABLE IF EXISTS predictions CASCADE;
DROP FUNCTION IF EXISTS prediction_storage_timescaledb_usable();
DELETE FROM schema_migrations WHERE version = 2;
