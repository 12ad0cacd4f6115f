-- 0002 prediction_tables: predictions and prediction_metrics, as TimescaleDB hypertables or as
-- natively range-partitioned tables (one partition per UTC day plus a DEFAULT partition).
--
-- Which one is decided here, at migration time, by prediction_storage_timescaledb_usable():
-- TimescaleDB is used when the timescaledb extension is installed, or is available AND preloaded
-- (shared_preload_libraries). Either way the tables have the same columns and indexes, so the
-- service runs the same queries on both. Retention: TimescaleDB's add_retention_policy (30 days, as
-- in the deployment guide) or the routines of migration 0003 on the native path.

CREATE OR REPLACE FUNCTION prediction_storage_timescaledb_usable() RETURNS boolean
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    preloaded boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RETURN false;
    END IF;
    BEGIN
        preloaded := 'timescaledb' = ANY (string_to_array(
            replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','));
    EXCEPTION WHEN insufficient_privilege THEN
        -- Only superusers and pg_read_all_settings may read shared_preload_libraries. A preloaded
        -- TimescaleDB registers its own settings in every backend, typed (a mere placeholder
        -- from postgresql.conf would be of type string), so that is the sign for everyone else.
        preloaded := EXISTS (SELECT 1 FROM pg_settings
                             WHERE name = 'timescaledb.max_background_workers' AND vartype = 'integer');
    END;
    RETURN preloaded;
END
$fn$;

COMMENT ON FUNCTION prediction_storage_timescaledb_usable() IS
    'True when the prediction tables are (to be) TimescaleDB hypertables: the extension is installed, '
    'or available and preloaded.';

DO $do$
DECLARE
    existing_kind "char" := (SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions'));
    -- Applied again (Ansible and psql re-apply every file): keep what the first run built, even if
    -- TimescaleDB has been installed since; switching storage is a data migration, not a re-run.
    use_timescaledb boolean := CASE WHEN existing_kind = 'p' THEN false
                                    WHEN existing_kind IS NOT NULL THEN true
                                    ELSE prediction_storage_timescaledb_usable() END;
    -- One definition of the columns for both paths; only the storage clause differs.
    storage_clause text := CASE WHEN use_timescaledb THEN '' ELSE ' PARTITION BY RANGE (time)' END;
BEGIN
    IF use_timescaledb THEN
        RAISE NOTICE 'prediction tables: TimescaleDB hypertables with a 30-day retention policy';
        CREATE EXTENSION IF NOT EXISTS timescaledb CASCADE;
    ELSE
        RAISE NOTICE 'prediction tables: timescaledb not available and preloaded, so native daily range partitions';
    END IF;

    EXECUTE 'CREATE TABLE IF NOT EXISTS predictions (
                 time          timestamptz      NOT NULL,
                 instance      text             NOT NULL,
                 model         text             NOT NULL,
                 model_version text             NOT NULL,
                 request_id    text,
                 input         jsonb            NOT NULL,
                 output        jsonb            NOT NULL,
                 latency_ms    double precision,
                 cache_hit     boolean          NOT NULL DEFAULT false
             )' || storage_clause;
    EXECUTE 'CREATE TABLE IF NOT EXISTS prediction_metrics (
                 time           timestamptz      NOT NULL,
                 instance       text             NOT NULL,
                 model          text             NOT NULL,
                 model_version  text             NOT NULL,
                 requests       integer          NOT NULL,
                 cache_hits     integer          NOT NULL,
                 latency_ms_avg double precision,
                 latency_ms_max double precision
             )' || storage_clause;

    IF use_timescaledb THEN
        -- One chunk per UTC day, like the native partitions; our own indexes are created below.
        PERFORM create_hypertable('predictions', 'time', chunk_time_interval => INTERVAL '1 day',
                                  create_default_indexes => false, if_not_exists => true);
        PERFORM create_hypertable('prediction_metrics', 'time', chunk_time_interval => INTERVAL '1 day',
                                  create_default_indexes => false, if_not_exists => true);
        PERFORM add_retention_policy('predictions', INTERVAL '30 days', if_not_exists => true);
        PERFORM add_retention_policy('prediction_metrics', INTERVAL '30 days', if_not_exists => true);
    ELSE
        -- Catch-all so an insert never fails for want of a daily partition; the routines of 0003
        -- move its rows into daily partitions when those are created, and expire its old rows.
        CREATE TABLE IF NOT EXISTS predictions_default PARTITION OF predictions DEFAULT;
        CREATE TABLE IF NOT EXISTS prediction_metrics_default PARTITION OF prediction_metrics DEFAULT;
    END IF;
END
$do$;

COMMENT ON TABLE predictions IS
    'One row per prediction served (per instance of a batch), written in batches by the service.';
COMMENT ON TABLE prediction_metrics IS
    'Per-flush aggregates of predictions: one row per instance, model, version and second.';

-- Dashboards read recent rows by time, optionally per model; request_id finds one request.
CREATE INDEX IF NOT EXISTS predictions_time_idx ON predictions (time DESC);
CREATE INDEX IF NOT EXISTS predictions_model_time_idx ON predictions (model, model_version, time DESC);
CREATE INDEX IF NOT EXISTS predictions_request_id_idx ON predictions (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS prediction_metrics_time_idx ON prediction_metrics (time DESC);
CREATE INDEX IF NOT EXISTS prediction_metrics_model_time_idx
    ON prediction_metrics (model, model_version, time DESC);

INSERT INTO schema_migrations (version, name) VALUES (2, 'prediction_tables')
ON CONFLICT DO NOTHING;
