-- 0005 application_role: prediction_app, the role the service logs in as. It may read and write
-- the prediction rows and run the partition routines of 0003, nothing else: it owns nothing, cannot
-- change the schema and is no superuser. The migrating role (the tables' owner) keeps those rights.
--
-- The role is created here, without LOGIN, when the migrating role may create roles (the database
-- image's superuser); otherwise a superuser creates it first (CREATE ROLE prediction_app). Whoever
-- deploys gives it LOGIN and a password: `python -m prediction_service migrate --app-role
-- prediction_app` with PREDICTION_APP_DB_PASSWORD set (the Pulumi stacks' migrate job does this).

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_app')
       AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        CREATE ROLE prediction_app NOLOGIN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'prediction_app') THEN
        EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO prediction_app';
        GRANT USAGE ON SCHEMA public TO prediction_app;
        GRANT SELECT, INSERT ON predictions, prediction_metrics TO prediction_app;
        GRANT SELECT ON schema_migrations TO prediction_app;
        GRANT EXECUTE ON FUNCTION prediction_partitions_ensure(integer, date),
                                  prediction_partitions_drop_older_than(interval, timestamptz) TO prediction_app;
    ELSE
        RAISE NOTICE USING MESSAGE = 'role prediction_app does not exist and ' || current_user
            || ' may not create roles: create it as a superuser and apply this file again';
    END IF;
END
$do$;

-- The partition routines create and drop partitions: they run with their owner's rights whoever
-- calls them, with a fixed search_path (pg_catalog first, implicitly; partitions go to public) so a
-- caller's objects cannot stand in for the tables.
ALTER FUNCTION prediction_partitions_ensure(integer, date)
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION prediction_partitions_drop_older_than(interval, timestamptz)
    SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION prediction_partitions_ensure(integer, date),
                           prediction_partitions_drop_older_than(interval, timestamptz) FROM PUBLIC;

INSERT INTO schema_migrations (version, name) VALUES (5, 'application_role')
ON CONFLICT DO NOTHING;
