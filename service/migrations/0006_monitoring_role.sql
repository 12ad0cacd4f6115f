-- 0006 monitoring_role: prediction_monitor, the role the PostgreSQL exporter logs in as. It is a member
-- of pg_monitor (PostgreSQL's built-in monitoring role: every session in pg_stat_activity, every
-- setting, statistics and sizes) and may connect to this database; nothing else. It reads no prediction
-- rows and owns nothing. What the exporter's queries read of TimescaleDB (timescaledb_information.jobs,
-- job_stats, hypertables, chunks, hypertable_detailed_size()) needs no more than that.
--
-- As for prediction_app (0005): the role is created here, without LOGIN, when the migrating role may
-- create roles (the database image's superuser); otherwise a superuser creates it first (make up's
-- roles/local_postgres does). Whoever deploys gives it LOGIN and a password: `python -m
-- prediction_service migrate --monitor-role prediction_monitor` with PREDICTION_MONITOR_DB_PASSWORD set.

DO $do$
DECLARE
    may_manage_roles boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_monitor') AND may_manage_roles THEN
        CREATE ROLE prediction_monitor NOLOGIN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_monitor') THEN
        IF may_manage_roles THEN
            GRANT pg_monitor TO prediction_monitor;
        END IF;
        EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO prediction_monitor';
    ELSE
        RAISE NOTICE USING MESSAGE = 'role prediction_monitor does not exist and ' || current_user
            || ' may not create roles: create it as a superuser (CREATE ROLE prediction_monitor IN ROLE'
            || ' pg_monitor) and apply this file again';
    END IF;
END
$do$;

INSERT INTO schema_migrations (version, name) VALUES (6, 'monitoring_role')
ON CONFLICT DO NOTHING;
