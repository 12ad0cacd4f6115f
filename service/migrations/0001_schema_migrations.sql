-- 0001 schema_migrations: the record of which migration files have been applied.
--
-- Plain SQL on purpose: psql -f, docker-entrypoint-initdb.d, psycopg2 and Ansible
-- (community.postgresql) all apply these same files. Rules for every file in this folder:
--   * no psql meta-commands;
--   * no percent sign anywhere (a driver given an empty parameter list would read it as a placeholder);
--   * safe to apply twice (IF NOT EXISTS, CREATE OR REPLACE): the Python runner and the Ansible role
--     apply only versions missing from schema_migrations, but plain psql -f does not look first;
--   * the file records itself in schema_migrations as its last statement;
--   * a down file that drops tables holding data says so in a `-- drops-data: table, table` line, so
--     a rollback that would lose rows stops and asks for confirmation (roles/timescaledb_schema).

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE schema_migrations IS
    'Migration files of service/migrations applied to this database (one row per file).';

INSERT INTO schema_migrations (version, name) VALUES (1, 'schema_migrations')
ON CONFLICT DO NOTHING;
