"""roles/redis_tuning against real throwaway Redis servers: values applied live, verified, persisted,
second run changed=0, --check changes nothing."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis as redislib
import yaml

from harness.net import free_port, wait_for_port
from harness.redis import REDIS_SERVER

ROLE_DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/redis_tuning/defaults/main.yml").read_text())
PARAMS = ("maxmemory", "maxmemory-policy", "timeout", "tcp-keepalive")


def live(client) -> dict:
    return {p: client.config_get(p)[p] for p in PARAMS}


class ConfFileRedis:
    """A redis-server started WITH a config file (as packaged servers are), so CONFIG REWRITE works."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="redisconf-"))
        self.port = free_port()
        self.conf = self.dir / "redis.conf"
        self.conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nsave \"\"\nappendonly no\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port)
        return self

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self):
        return redislib.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def conf_redis():
    server = ConfFileRedis().start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_brief_values_applied_verified_persisted_and_idempotent(redis_factory, playbook, tmp_path):
    server = redis_factory()
    conf = tmp_path / "redis-tuned.conf"
    before = live(server.client())
    assert before["maxmemory-policy"] != "allkeys-lru"  # the run really has something to change

    first = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_config_file": str(conf)})
    assert first.rc == 0, first.failure_messages() or first.stderr
    assert first.changed > 0

    # The role defaults are the deployment guide's production values.
    assert ROLE_DEFAULTS["redis_tuning_maxmemory"] == "2gb"
    assert live(server.client()) == {"maxmemory": str(2 * 1024 ** 3), "maxmemory-policy": "allkeys-lru",
                                     "timeout": "300", "tcp-keepalive": "60"}
    # The server has no config file of its own, so the directives went into the managed file.
    lines = conf.read_text().splitlines()
    assert f"maxmemory {2 * 1024 ** 3}" in lines and "maxmemory-policy allkeys-lru" in lines
    assert "timeout 300" in lines and "tcp-keepalive 60" in lines
    content, mtime = conf.read_text(), conf.stat().st_mtime_ns

    second = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_config_file": str(conf)})
    assert second.rc == 0, second.failure_messages()
    assert second.changed == 0, second.stdout[-3000:]
    assert conf.read_text() == content and conf.stat().st_mtime_ns == mtime


def test_check_mode_reports_but_changes_nothing(redis_factory, playbook, tmp_path):
    server = redis_factory()
    before = live(server.client())
    conf = tmp_path / "never-written.conf"
    run = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_config_file": str(conf)},
                   check=True, diff=True)
    assert run.rc == 0, run.failure_messages()
    assert run.changed > 0  # it says what would change ...
    assert live(server.client()) == before  # ... and does not change it
    assert not conf.exists()


def test_config_rewrite_persists_across_a_restart(conf_redis, playbook):
    values = {"redis_tuning_port": conf_redis.port, "redis_tuning_maxmemory": "64mb",
              "redis_tuning_maxmemory_policy": "volatile-lru", "redis_tuning_timeout": 120,
              "redis_tuning_tcp_keepalive": 30, "redis_tuning_persist_required": True}
    run = playbook("redis-tune.yml", values)
    assert run.rc == 0, run.failure_messages()
    text = conf_redis.conf.read_text()
    assert "maxmemory-policy volatile-lru" in text and "timeout 120" in text  # CONFIG REWRITE wrote them

    conf_redis.stop()
    conf_redis.start()  # from the rewritten file only
    assert live(conf_redis.client()) == {"maxmemory": str(64 * 1024 ** 2), "maxmemory-policy": "volatile-lru",
                                         "timeout": "120", "tcp-keepalive": "30"}
    again = playbook("redis-tune.yml", values)
    assert again.rc == 0 and again.changed == 0, again.failure_messages()


def test_decimal_units_and_password_from_environment(redis_factory, playbook, monkeypatch):
    server = redis_factory()
    server.client().config_set("requirepass", "s3cret-for-test")
    monkeypatch.setenv("PREDICTION_REDIS_PASSWORD", "s3cret-for-test")
    run = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_maxmemory": "100m"})
    assert run.rc == 0, run.failure_messages()
    client = redislib.Redis(host="127.0.0.1", port=server.port, password="s3cret-for-test")
    assert client.config_get("maxmemory")["maxmemory"] == "100000000"  # m = 10^6, as in redis.conf
    assert "s3cret-for-test" not in run.stdout  # passed as REDISCLI_AUTH, not on the command line
    # Without a config file and without redis_tuning_config_file the run says so plainly.
    assert "NOT PERSISTED" in run.stdout


def test_persistence_required_without_any_config_file_fails_clearly(redis_factory, playbook):
    server = redis_factory()
    run = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_persist_required": True})
    assert run.rc != 0
    assert any("without a config file" in m and "redis_tuning_config_file" in m for m in run.failure_messages())


def test_bad_input_and_unreachable_server_fail_with_what_to_fix(redis_factory, playbook):
    server = redis_factory()
    bad = playbook("redis-tune.yml", {"redis_tuning_port": server.port, "redis_tuning_maxmemory": "lots"})
    assert bad.rc != 0
    assert any("redis_tuning_maxmemory=lots" in m for m in bad.failure_messages())

    unknown = playbook("redis-tune.yml", {"redis_tuning_port": server.port,
                                          "redis_tuning_extra_settings": {"no-such-parameter": "1"}})
    assert unknown.rc != 0
    assert any("does not know no-such-parameter" in m for m in unknown.failure_messages())

    server.stop()
    down = playbook("redis-tune.yml", {"redis_tuning_port": server.port})
    assert down.rc != 0
    assert any("did not answer PING" in m and str(server.port) in m for m in down.failure_messages())
