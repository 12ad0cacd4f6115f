"""What the emulated provider sends to a Swarm manager for a docker.Service (createServiceSpec), how it
checks inputs (the schema's validation; every path translated or named), and how it waits for a
service to converge (helper/retry StateChangeConf, replicatedConsoleLogUpdater). No engine."""
import pytest

from stack_emulator.program import SECRET, SERVICE, SERVICE_CONFIG, Resource
from stack_emulator.swarm_provider import (SwarmError, check, go_duration, parse_duration, planned_inputs, read_state,
                                           running_replicas, service_spec, wait_for_state, _Timeout)

BASE = {"name": "web", "taskSpec": {"containerSpec": {"image": "sha256:app"}}}


def spec(**top) -> dict:
    return service_spec({**BASE, **top})


def container(**cs) -> dict:
    return service_spec({"name": "web", "taskSpec": {"containerSpec": {"image": "sha256:app", **cs}}})[
        "TaskTemplate"]["ContainerSpec"]


def test_update_config_takes_the_schemas_defaults_not_docker_pys():
    # docker-py's UpdateConfig() would send parallelism 0 (all at once) and failure_action continue.
    got = spec(updateConfig={"order": "start-first"})["UpdateConfig"]
    assert got == {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": 5 * 10**9,
                   "MaxFailureRatio": 0.0, "Order": "start-first"}
    assert spec(rollbackConfig={"parallelism": 2.0, "monitor": "1m30s"})["RollbackConfig"]["Monitor"] == 90 * 10**9
    # no block: nothing sent, the engine's defaults apply
    assert "UpdateConfig" not in spec() and "RollbackConfig" not in spec()


def test_durations_are_nanoseconds_and_unset_pointer_fields_are_zero():
    assert container(stopGracePeriod="1m30s")["StopGracePeriod"] == 90 * 10**9
    # stop_grace_period is read even when unset: a grace period of 0 — tasks are killed at once
    assert container()["StopGracePeriod"] == 0
    hc = container(healthcheck={"tests": ["CMD", "true"], "interval": "500ms", "startPeriod": "2s", "retries": 3.0})
    assert hc["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5 * 10**8, "StartPeriod": 2 * 10**9,
                                 "Retries": 3}
    assert container()["Healthcheck"] == {}  # the image's own healthcheck
    assert container()["Init"] is False


def test_a_restart_policy_block_is_read_whole():
    restart = spec(taskSpec={"containerSpec": {"image": "x"}, "restartPolicy": {"condition": "on-failure"}})
    assert restart["TaskTemplate"]["RestartPolicy"] == {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 0,
                                                        "Window": 0}
    assert spec()["TaskTemplate"]["RestartPolicy"] == {}  # the engine's defaults: any, 5s


def test_an_update_sends_what_the_provider_read_for_attributes_the_program_leaves_unset():
    # As the engine stores a service created without restart_policy, mode or stop_grace_period:
    live = {"Spec": {"Name": "web", "Labels": {"team": "ml"}, "Mode": {"Replicated": {"Replicas": 3}},
                     "TaskTemplate": {"ContainerSpec": {"Image": "sha256:app", "StopGracePeriod": 0, "Init": False},
                                      "RestartPolicy": {"Condition": "any", "MaxAttempts": 0}, "ForceUpdate": 0},
                     "EndpointSpec": {"Mode": "dnsrr"}},
            "Endpoint": {"Spec": {"Mode": "dnsrr"}}}
    new = {"name": "web", "taskSpec": {"containerSpec": {"image": "sha256:app2"}}}
    got = service_spec(planned_inputs(new, read_state(live)))
    # the engine's policy comes back with an explicit delay of 0 (createRestartPolicy reads it whole)
    assert got["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 0, "MaxAttempts": 0, "Window": 0}
    assert got["Mode"] == {"Replicated": {"Replicas": 3}} and got["EndpointSpec"]["Mode"] == "dnsrr"
    assert got["Labels"] == {"team": "ml"}
    # what the program sets wins
    mine = {**new, "mode": {"replicated": {"replicas": 5}}, "taskSpec": {"containerSpec": {
        "image": "sha256:app2", "stopGracePeriod": "20s"}, "restartPolicy": {"condition": "on-failure", "delay": "5s"}}}
    got = service_spec(planned_inputs(mine, read_state(live)))
    assert got["Mode"] == {"Replicated": {"Replicas": 5}}
    assert got["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 20 * 10**9
    assert got["TaskTemplate"]["RestartPolicy"]["Delay"] == 5 * 10**9


def test_container_inputs_map_to_the_engine_api():
    cs = container(env={"B": "2", "A": "1"}, commands=["python"], args=["-m", "http.server"], hosts=[
        {"host": "db", "ip": "10.0.0.5"}], capAdds=["NET_ADMIN"], sysctl={"net.core.somaxconn": 1024},
        mounts=[{"type": "bind", "source": "/srv", "target": "/srv", "bindOptions": {}},
                {"type": "tmpfs", "target": "/tmp", "tmpfsOptions": {"sizeBytes": 1024.0, "mode": 448.0}}],
        secrets=[{"secretId": "s1", "secretName": "pw", "fileName": "/run/secrets/pw", "fileMode": 256.0}],
        configs=[{"configId": "c1", "fileName": "/etc/app.conf", "fileUid": "70"}])
    assert cs["Env"] == ["A=1", "B=2"] and cs["Command"] == ["python"] and cs["Args"] == ["-m", "http.server"]
    assert cs["Hosts"] == ["10.0.0.5 db"] and cs["CapabilityAdd"] == ["NET_ADMIN"]
    assert cs["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert cs["Mounts"] == [
        {"Type": "bind", "Target": "/srv", "Source": "/srv", "BindOptions": {"Propagation": "rprivate"}},
        {"Type": "tmpfs", "Target": "/tmp", "Source": "", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 448}}]
    assert cs["Secrets"] == [{"SecretID": "s1", "SecretName": "pw",
                              "File": {"Name": "/run/secrets/pw", "UID": "0", "GID": "0", "Mode": 0o400}}]
    assert cs["Configs"][0]["File"] == {"Name": "/etc/app.conf", "UID": "70", "GID": "0", "Mode": 0o444}


def test_task_and_service_level_inputs_map_to_the_engine_api():
    got = service_spec({
        "name": "web", "labels": [{"label": "com.docker.stack.namespace", "value": "swarm"}],
        "taskSpec": {"containerSpec": {"image": "x"},
                     "resources": {"limits": {"nanoCpus": 5e8, "memoryBytes": 268435456.0},
                                   "reservation": {"memoryBytes": 134217728.0}},
                     "placement": {"constraints": ["node.labels.db == true"], "prefs": ["spread=node.id"]},
                     "networksAdvanceds": [{"id": "n1", "aliases": ["web"], "driverOpts": ["a=b"]},
                                           {"name": "backend"}]},
        "mode": {"replicated": {"replicas": 3.0}},
        "endpointSpec": {"mode": "dnsrr", "ports": [{"targetPort": 443.0, "publishedPort": 8443.0,
                                                     "publishMode": "host"}]}})
    task = got["TaskTemplate"]
    assert got["Labels"] == {"com.docker.stack.namespace": "swarm"} and got["Mode"] == {"Replicated": {"Replicas": 3}}
    assert task["Resources"] == {"Limits": {"NanoCPUs": 500000000, "MemoryBytes": 268435456},
                                 "Reservations": {"MemoryBytes": 134217728}}
    assert task["Placement"] == {"Constraints": ["node.labels.db == true"],
                                 "Preferences": [{"Spread": {"SpreadDescriptor": "spread=node.id"}}]}
    assert task["Networks"] == [{"Target": "n1", "Aliases": ["web"], "DriverOpts": {"a": "b"}}, {"Target": "backend"}]
    assert got["EndpointSpec"] == {"Mode": "dnsrr", "Ports": [{"Name": "", "Protocol": "tcp", "TargetPort": 443,
                                                               "PublishedPort": 8443, "PublishMode": "host"}]}
    assert spec()["Mode"] == {} and spec(mode={"global": True})["Mode"] == {"Global": {}}


def test_secret_values_arrive_revealed():
    got = service_spec({**BASE, "taskSpec": {"containerSpec": {"image": "x", "env": {"K": {"__secret__": "v"}}}}})
    assert got["TaskTemplate"]["ContainerSpec"]["Env"] == ["K=v"]


def _r(typ, inputs) -> Resource:
    return Resource("urn:pulumi:t::p::x::r", typ, "r", True, "", inputs, {})


@pytest.mark.parametrize("inputs, message", [
    ({**BASE, "taskSpec": {"containerSpec": {"image": "x", "ulimits": []}}},
     r"input taskSpec\.containerSpec\.ulimits is not translated"),
    ({**BASE, "taskSpec": {"containerSpec": {"image": "x", "mounts": [{"type": "volume", "target": "/d",
                                                                      "volumeOptions": {"subpath": "a"}}]}}},
     r"input taskSpec\.containerSpec\.mounts\[0\]\.volumeOptions\.subpath is not translated"),
    ({**BASE, "auth": {"serverAddress": "registry.example"}}, r"input auth is not translated.*no registry"),
    ({**BASE, "updateConfig": {"monitor": "5 seconds"}}, r"'5 seconds' is not a valid duration"),
    ({**BASE, "updateConfig": {"failureAction": "retry"}}, r"updateConfig\.failureAction = 'retry' does not match"),
    ({**BASE, "updateConfig": {"maxFailureRatio": "2"}}, r"has to be between 0\.0 and 1\.0"),
    ({**BASE, "endpointSpec": {"mode": "ipvs"}}, r"endpointSpec\.mode = 'ipvs'"),
    ({**BASE, "mode": {"global": True}, "convergeConfig": {}}, r"mode\.global conflicts with convergeConfig"),
    ({**BASE, "taskSpec": {"containerSpec": {"image": "x"}, "networksAdvanceds": [{"aliases": ["a"]}]}},
     r"network 'name' or 'id' must be specified"),
])
def test_a_service_input_the_provider_would_refuse_or_the_emulator_cannot_carry_stops_the_run(inputs, message):
    with pytest.raises(SwarmError, match=message):
        check(_r(SERVICE, inputs))


def test_secret_and_config_data_is_base64_as_the_schema_validates():
    check(_r(SECRET, {"name": "pw", "data": {"__secret__": "c2VjcmV0"}}))
    with pytest.raises(SwarmError, match="not base64 decodeable") as err:
        check(_r(SECRET, {"name": "pw", "data": {"__secret__": "plain secret"}}))
    assert "plain secret" not in str(err.value)  # the message never shows the value
    with pytest.raises(SwarmError, match="exactly one of data and dataRaw"):
        check(_r(SERVICE_CONFIG, {"name": "c", "data": "YQ==", "dataRaw": "a"}))
    check(_r(SERVICE_CONFIG, {"name": "c", "dataRaw": "worker_processes 1;"}))


def test_go_durations():
    assert parse_duration("1h2m3.5s") == (3723 * 10**9 + 5 * 10**8)
    assert parse_duration("0") == 0 and parse_duration("250ms") == 25 * 10**7
    with pytest.raises(SwarmError):
        parse_duration("10")
    assert go_duration(180 * 10**9) == "3m0s" and go_duration(20 * 10**9) == "20s"


def test_the_wait_refreshes_after_the_delay_then_every_5_then_10_seconds():
    clock = [0.0]
    refreshed = []

    def sleep(s):
        clock[0] += s

    def refresh():
        refreshed.append(clock[0])
        return ("running", True) if len(refreshed) == 4 else ("creating", False)

    assert wait_for_state(refresh, delay=7, timeout=180, sleep=sleep, clock=lambda: clock[0]) == "running"
    assert refreshed == [7, 12, 22, 32]
    refreshed.clear()
    clock[0] = 0.0
    with pytest.raises(_Timeout):
        wait_for_state(lambda: (refreshed.append(clock[0]), ("creating", False))[1], delay=1, timeout=20,
                       sleep=sleep, clock=lambda: clock[0])
    assert refreshed == [1, 6, 16]


def _task(slot, state, desired="running", node="n1"):
    return {"Slot": slot, "DesiredState": desired, "Status": {"State": state}, "NodeID": node}


def test_a_replica_counts_when_its_slots_task_runs_on_a_node_that_is_up():
    tasks = [_task(1, "running"), _task(2, "starting"), _task(3, "running", node="down-node"),
             # start-first update: two tasks for slot 4; the one to keep running counts
             _task(4, "running"), _task(4, "running", desired="shutdown")]
    assert running_replicas(tasks, {"n1"}) == 2
