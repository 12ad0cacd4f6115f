-- Undo 0005: the application role's rights here, and the routines back to their caller's rights.
-- The role itself stays: it belongs to the whole cluster and may hold rights in other databases
-- (DROP ROLE prediction_app by hand once no database uses it).
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_app') THEN
        REVOKE ALL ON predictions, prediction_metrics, schema_migrations FROM prediction_app;
        REVOKE ALL ON FUNCTION prediction_partitions_ensure(integer, date),
                               prediction_partitions_drop_older_than(interval, timestamptz) FROM prediction_app;
        REVOKE USAGE ON SCHEMA public FROM prediction_app;
        EXECUTE 'REVOKE CONNECT ON DATABASE ' || quote_ident(current_database()) || ' FROM prediction_app';
    END IF;
END
$do$;
ALTER FUNCTION prediction_partitions_ensure(integer, date) SECURITY INVOKER RESET search_path;
ALTER FUNCTION prediction_partitions_drop_older_than(interval, timestamptz) SECURITY INVOKER RESET search_path;
GRANT EXECUTE ON FUNCTION prediction_partitions_ensure(integer, date),
                          prediction_partitions_drop_older_than(interval, timestamptz) TO PUBLIC;
DELETE FROM schema_migrations WHERE version = 5;
