"""Command line for the database schema: ``python -m prediction_service.storage <command>``.

Commands (the database is ``--dsn`` or else ``PREDICTION_TIMESCALE_URL``):

    migrate [--target N]   apply the migrations not yet applied (up to version N); prints each one
    rollback --to N        undo applied migrations newer than N, newest first (0 undoes all)
    status                 list every migration as applied or pending

``python -m prediction_service migrate`` delegates here. Exit status 0 on success, 1 on a
migration error, 2 on bad usage (e.g. no database given). Run it as the owner role of the
database (``prediction_user``): the tables belong to whoever creates them, and the service
must own them to create and drop partitions.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import psycopg2

from .migrations import (MigrationError, apply_migrations, discover, pending_migrations,
                         rollback_migrations)

ENV_DSN = "PREDICTION_TIMESCALE_URL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prediction_service.storage",
                                     description="Apply or roll back the prediction database migrations.")
    parser.add_argument("--dsn", default=os.environ.get(ENV_DSN),
                        help=f"postgresql://user:pw@host:port/db (default: ${ENV_DSN})")
    # --dsn is accepted after the command too; SUPPRESS keeps the sub-parser from resetting it.
    dsn_after = argparse.ArgumentParser(add_help=False)
    dsn_after.add_argument("--dsn", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="apply pending migrations", parents=[dsn_after])
    migrate.add_argument("--target", type=int, default=None, help="stop after this version")
    rollback = sub.add_parser("rollback", help="undo migrations newer than --to", parents=[dsn_after])
    rollback.add_argument("--to", type=int, required=True, dest="to_version",
                          help="version to keep (0 undoes everything)")
    sub.add_parser("status", help="show applied and pending migrations", parents=[dsn_after])
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error(f"no database: set {ENV_DSN} or pass --dsn")

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        if args.command == "migrate":
            done = apply_migrations(args.dsn, target=args.target)
            print(f"applied {len(done)} migration(s)" + (f": {', '.join(map(str, done))}" if done else ""))
        elif args.command == "rollback":
            done = rollback_migrations(args.dsn, args.to_version)
            print(f"rolled back {len(done)} migration(s)" + (f": {', '.join(map(str, done))}" if done else ""))
        else:
            pending = set(pending_migrations(args.dsn))
            for m in discover():
                print(f"{m.version:04d}_{m.name}: {'pending' if m.version in pending else 'applied'}")
    except (MigrationError, psycopg2.Error) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
