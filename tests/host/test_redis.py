"""Redis runs with the inventory's settings (roles/redis_tuning) and is bound to loopback."""
from host_expectations import run_ok


def _config_get(host, expected, name: str) -> str:
    out = run_ok(host, "REDISCLI_AUTH=%s redis-cli --no-auth-warning -h %s -p %s CONFIG GET %s",
                 expected["redis_tuning_password"], expected["redis_tuning_host"], str(expected["redis_tuning_port"]),
                 name)
    lines = out.splitlines()
    assert len(lines) == 2, f"CONFIG GET {name} answered {lines}"
    return lines[1]


def test_settings_equal_the_inventory(host, expected):
    wanted = expected["_redis_tuning_desired"]
    wrong = {k: (have, v) for k, v in wanted.items() if (have := _config_get(host, expected, k)) != v}
    assert not wrong, ("Redis settings differ from the inventory (run playbooks/redis-tune.yml): "
                       + ", ".join(f"{k} is {h!r}, wants {w!r}" for k, (h, w) in wrong.items()))


def test_bound_to_loopback_with_protected_mode(host, expected, localenv):
    assert _config_get(host, expected, "bind").split() == ["127.0.0.1"]
    assert _config_get(host, expected, "protected-mode") == "yes"
