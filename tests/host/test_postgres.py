"""PostgreSQL runs with the settings the inventory asks for (roles/timescaledb_tuning's rules)."""
import re

import pytest

from host_expectations import run_ok

UNITS = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def _bytes(value: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*(B|kB|MB|GB|TB)\s*", str(value))
    return int(m.group(1)) * UNITS[m.group(2)] if m else None


@pytest.fixture(scope="module")
def wanted(expected) -> tuple[dict, dict]:
    """(computed, exact): computed values may differ by the role's tolerance, exact ones may not."""
    exact = expected["_timescaledb_tuning_exact"]
    computed = {k: v for k, v in expected["_timescaledb_tuning_recommended"].items() if k not in exact}
    return computed, exact


@pytest.fixture(scope="module")
def running(host, expected, wanted) -> dict:
    names = sorted(set(wanted[0]) | set(wanted[1]))
    sql = ("SELECT name || '|' || setting || '|' || coalesce(unit, '') FROM pg_settings "
           f"WHERE name IN ({', '.join(repr(n) for n in names)})")
    out = run_ok(host, "PGPASSWORD=%s psql -h %s -p %s -U %s -d %s -AtX -c %s",
                 expected["prediction_db_password"], expected["prediction_db_host"], str(expected["prediction_db_port"]),
                 expected["prediction_db_user"], expected["prediction_db_name"], sql)
    result = {}
    for line in out.splitlines():
        name, setting, unit = line.split("|")
        result[name] = (setting, unit)
    return result


def _same(want, setting: str, unit: str, tolerance: float) -> bool:
    if unit in UNITS and _bytes(want) is not None:
        have = int(setting) * UNITS[unit]
        return abs(_bytes(want) - have) <= have * tolerance
    try:
        return abs(float(want) - float(setting)) <= abs(float(setting)) * tolerance
    except ValueError:
        return str(want).lower() == setting.lower()


def test_settings_equal_the_inventory(expected, wanted, running):
    computed, exact = wanted
    tolerance = float(expected["timescaledb_tuning_tolerance_percent"]) / 100
    wrong = []
    for name, want in {**computed, **exact}.items():
        if name not in running:
            wrong.append(f"{name}: unknown to this server")
            continue
        setting, unit = running[name]
        if not _same(want, setting, unit, tolerance if name in computed else 0.0):
            wrong.append(f"{name}: running {setting}{unit}, inventory wants {want}")
    assert not wrong, "PostgreSQL settings differ from the inventory (run playbooks/db-tune.yml):\n  " + "\n  ".join(wrong)


def test_schema_is_migrated(host, expected):
    out = run_ok(host, "PGPASSWORD=%s psql -h %s -p %s -U %s -d %s -AtX -c %s",
                 expected["prediction_db_password"], expected["prediction_db_host"], str(expected["prediction_db_port"]),
                 expected["prediction_db_user"], expected["prediction_db_name"],
                 "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename IN "
                 "('predictions', 'prediction_metrics', 'schema_migrations')")
    assert out.strip() == "prediction_metrics,predictions,schema_migrations", (
        f"schema incomplete (found {out.strip()!r}): run playbooks/db-migrate.yml")
