#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: pg_dump -Fc plus exact per-table row counts taken from the same snapshot."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_consistent_dump
short_description: pg_dump -Fc with row counts from the same snapshot
description:
  - Opens a REPEATABLE READ transaction, exports its snapshot and runs C(pg_dump -Fc --snapshot) with it,
    then counts the rows of every user table inside that same transaction. The counts therefore describe
    exactly the data in the dump, even while the service keeps writing.
  - Counts parent tables only: partitions, inheritance children and TimescaleDB chunks are counted through
    their parent; tables owned by extensions and the TimescaleDB catalog schemas are left out.
  - Writes to O(dest) directly; the caller verifies the file and renames it.
options:
  dest: {description: File to write (custom format)., type: path, required: true}
  database: {description: Database to dump., type: str, required: true}
  login_host: {description: Host of PostgreSQL., type: str, default: localhost}
  login_port: {description: Port of PostgreSQL., type: int, default: 5432}
  login_user: {description: Role to connect as., type: str, required: true}
  login_password: {description: Password of the role., type: str, default: "", no_log: true}
  pg_dump: {description: pg_dump executable., type: str, default: pg_dump}
  compress: {description: pg_dump compression level (0-9)., type: int, default: 6}
requirements: [psycopg2 or psycopg 3 on the host that runs the module]
attributes:
  check_mode: {support: full}
author: prediction-platform ops
"""

RETURN = r"""
row_counts: {description: table (schema.name) -> rows in the dump, type: dict, returned: success}
snapshot: {description: exported snapshot id used by pg_dump, type: str, returned: success}
server_version: {description: server_version of PostgreSQL, type: str, returned: success}
pg_dump_version: {description: output of pg_dump --version, type: str, returned: success}
"""

import os

from ansible.module_utils.basic import AnsibleModule

try:
    import psycopg2 as _pg
except ImportError:  # pragma: no cover - psycopg 3 hosts
    try:
        import psycopg as _pg
    except ImportError:
        _pg = None

# Same selection as roles/db_restore/vars/main.yml (_db_restore_count_sql): keep the two in step.
TABLES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS qualified, n.nspname || '.' || c.relname AS name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND n.nspname NOT LIKE '\\_timescaledb\\_%'
  AND n.nspname NOT LIKE 'timescaledb\\_%'
ORDER BY 1
"""


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            database=dict(type="str", required=True),
            login_host=dict(type="str", default="localhost"),
            login_port=dict(type="int", default=5432),
            login_user=dict(type="str", required=True),
            login_password=dict(type="str", default="", no_log=True),
            pg_dump=dict(type="str", default="pg_dump"),
            compress=dict(type="int", default=6),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if _pg is None:
        module.fail_json(msg="pg_consistent_dump needs psycopg2 or psycopg on the host that runs it "
                             "(apt-get install python3-psycopg2)")
    if os.path.exists(p["dest"]):
        module.fail_json(msg="%s already exists: refusing to overwrite a backup" % p["dest"])
    if module.check_mode:
        module.exit_json(changed=True, row_counts={}, snapshot="", server_version="", pg_dump_version="")

    rc, version_out, err = module.run_command([p["pg_dump"], "--version"])
    if rc != 0:
        module.fail_json(msg="cannot run %s --version: %s" % (p["pg_dump"], err.strip()))

    try:
        conn = _pg.connect(host=p["login_host"], port=p["login_port"], user=p["login_user"],
                           password=p["login_password"] or None, dbname=p["database"])
    except Exception as e:  # the driver's own message names host, port and the reason
        module.fail_json(msg="cannot connect to %s:%s/%s as %s: %s"
                             % (p["login_host"], p["login_port"], p["database"], p["login_user"], e))
    try:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
        snapshot, server_version = cur.fetchone()

        cmd = [p["pg_dump"], "--format=custom", "--compress=%d" % p["compress"], "--snapshot=" + snapshot,
               "--host", p["login_host"], "--port", str(p["login_port"]), "--username", p["login_user"],
               "--no-password", "--dbname", p["database"], "--file", p["dest"]]
        env = {"PGPASSWORD": p["login_password"]} if p["login_password"] else {}
        rc, out, err = module.run_command(cmd, environ_update=env)
        if rc != 0:
            if os.path.exists(p["dest"]):
                os.unlink(p["dest"])
            module.fail_json(msg="pg_dump of %s failed (rc=%d): %s" % (p["database"], rc, err.strip()), cmd=cmd)

        cur.execute(TABLES_SQL)
        tables = cur.fetchall()
        counts = {}
        for qualified, name in tables:
            # qualified comes from format('%I.%I'): already a quoted identifier.
            cur.execute("SELECT count(*) FROM " + qualified)
            counts[name] = int(cur.fetchone()[0])
        conn.rollback()
    finally:
        conn.close()

    module.exit_json(changed=True, row_counts=counts, snapshot=snapshot, server_version=server_version,
                     pg_dump_version=version_out.strip())


if __name__ == "__main__":
    main()
