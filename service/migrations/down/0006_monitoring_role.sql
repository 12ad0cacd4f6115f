-- Undo 0006: the monitoring role may no longer connect here. The role itself stays (it belongs to the
-- whole cluster and may monitor other databases): DROP ROLE prediction_monitor by hand once unused.
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_monitor') THEN
        EXECUTE 'REVOKE CONNECT ON DATABASE ' || quote_ident(current_database()) || ' FROM prediction_monitor';
    END IF;
END
$do$;
DELETE FROM schema_migrations WHERE version = 6;
