"""One test per lifecycle rule of the Swarm resource types (docker.Service, docker.Secret,
docker.ServiceConfig, overlay networks), on hand-made registrations: plans only, no engine. Each
rule's source is cited in stack_emulator/schema.py."""
import copy

from plan_support import NETWORK, graph, resource, urn

from stack_emulator.plan import make_plan
from stack_emulator.values import UNKNOWN

SERVICE = "docker:index/service:Service"
SECRET = "docker:index/secret:Secret"
CONFIG = "docker:index/serviceConfig:ServiceConfig"

WEB = {
    "name": "web",
    "taskSpec": {
        "containerSpec": {
            "image": "sha256:app1", "env": {"A": "1"},
            "secrets": [{"secretId": "sec-id-1", "secretName": "pw-1", "fileName": "/run/secrets/pw"}],
        },
        "networksAdvanceds": [{"id": "net-id-1", "aliases": ["web"]}],
    },
    "mode": {"replicated": {"replicas": 3}},
    "updateConfig": {"order": "start-first", "failureAction": "rollback"},
    "endpointSpec": {"mode": "dnsrr"},
}


def web(**changes) -> dict:
    """WEB with ``changes`` applied at dotted paths ("taskSpec.containerSpec.env": {...}); None deletes."""
    out = copy.deepcopy(WEB)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def plan_for(tmp_state, old: dict, new: dict, typ=SERVICE, **options):
    return make_plan(tmp_state(graph(resource(typ, "svc", old))), graph(resource(typ, "svc", new, **options)))


def only_step(plan):
    [step] = plan.changes if len(plan.changes) == 1 else [s for s in plan.steps if s.op != "same"]
    return step


def test_an_unchanged_service_has_no_changes(tmp_state):
    assert plan_for(tmp_state, WEB, web()).changes == []


def test_replicas_image_env_and_update_config_update_the_service_in_place(tmp_state):
    # mode is ForceNew, but the SDK applies that to its element count only; replicas is not ForceNew.
    for change in ({"mode": {"replicated": {"replicas": 6}}},
                   {"taskSpec__containerSpec__image": "sha256:app2"},
                   {"taskSpec__containerSpec__env": {"A": "2"}},
                   {"updateConfig": {"order": "stop-first"}},
                   {"convergeConfig": {"timeout": "5m"}}):
        step = only_step(plan_for(tmp_state, WEB, web(**change)))
        assert (step.op, step.engine_update) == ("update", True), change


def test_mode_added_where_the_program_had_none_is_an_update_not_a_replacement(tmp_state):
    # The state holds the mode the provider read back (one block), so the element count is the same.
    no_mode = web(mode=None)
    step = only_step(plan_for(tmp_state, no_mode, web()))
    assert step.op == "update" and step.diff.update_keys == ["mode"]
    # and a mode the program stops setting is kept (Optional+Computed): no change
    assert plan_for(tmp_state, WEB, no_mode).changes == []


def test_force_new_inputs_replace_the_service_create_before_delete(tmp_state):
    for change in ({"name": "web2"},
                   {"taskSpec__containerSpec__hosts": [{"host": "db", "ip": "10.0.0.5"}]},
                   {"taskSpec__containerSpec__sysctl": {"net.core.somaxconn": "1024"}},
                   {"taskSpec__networksAdvanceds": [{"id": "net-id-1", "aliases": ["web", "api"]}]},
                   {"taskSpec__networksAdvanceds": [{"id": "net-id-2", "aliases": ["web"]}]}):
        plan = plan_for(tmp_state, WEB, web(**change))
        [step] = [s for s in plan.steps if s.op != "same"]
        assert (step.op, step.delete_before_replace) == ("replace", False), change
        # the old service goes in the delete phase, after the new one runs
        assert [(s.op, s.name) for s in plan.deletes] == [("delete", "svc")]


def test_a_network_given_by_name_replaces_the_service_on_every_run(tmp_state):
    # The provider's Read records the network by the id the engine resolved the name to, never by
    # name: the schema's own warning ("Using the name attribute ... will lead to constant replacements").
    by_name = web(taskSpec__networksAdvanceds=[{"name": "backend", "aliases": ["web"]}])
    step = only_step(plan_for(tmp_state, by_name, copy.deepcopy(by_name)))
    assert step.op == "replace" and step.diff.replace_keys == ["taskSpec"]


def test_schema_defaults_written_out_are_no_change(tmp_state):
    explicit = web(updateConfig={"order": "start-first", "failureAction": "rollback", "parallelism": 1.0,
                                 "delay": "0s", "monitor": "5s", "maxFailureRatio": "0"},
                   taskSpec__containerSpec__secrets=[{"secretId": "sec-id-1", "secretName": "pw-1",
                                                      "fileName": "/run/secrets/pw", "fileUid": "0",
                                                      "fileGid": "0", "fileMode": 292.0}],
                   taskSpec__containerSpec__isolation="default")
    assert plan_for(tmp_state, WEB, explicit).changes == []
    # a real change of one of them is an update
    step = only_step(plan_for(tmp_state, WEB, web(updateConfig={"order": "start-first", "failureAction": "rollback",
                                                               "maxFailureRatio": "0.2"})))
    assert step.op == "update"


def test_a_computed_container_input_the_program_stops_setting_keeps_its_value(tmp_state):
    graceful = web(taskSpec__containerSpec__stopGracePeriod="30s",
                   taskSpec__containerSpec__healthcheck={"tests": ["CMD", "true"], "interval": "5s"})
    assert plan_for(tmp_state, graceful, web()).changes == []


def test_a_replaced_secret_is_created_before_the_old_one_goes_and_the_service_is_updated(tmp_state):
    secret = resource(SECRET, "pw", {"name": "pw-1", "data": {"__secret__": "czE="}})
    svc = resource(SERVICE, "svc", WEB, deps={"taskSpec": [(SECRET, "pw")]})
    old = graph(secret, svc)
    # A new secret (named by its content hash): its id is known only once it exists.
    new_svc = web(taskSpec__containerSpec__secrets=[{"secretId": UNKNOWN, "secretName": "pw-2",
                                                     "fileName": "/run/secrets/pw"}])
    new = graph(resource(SECRET, "pw", {"name": "pw-2", "data": {"__secret__": "czI="}}),
                resource(SERVICE, "svc", new_svc, deps={"taskSpec": [(SECRET, "pw")]}))
    plan = make_plan(tmp_state(old), new)
    ops = [(s.op, s.name, s.delete_before_replace) for s in plan.steps]
    assert ops == [("replace", "pw", False), ("update", "svc", False)]
    # the old secret is deleted last, once the service no longer uses it (Swarm refuses before)
    assert [(s.op, s.name) for s in plan.deletes] == [("delete", "pw")]
    assert plan.steps[1].diff.unknown == {"taskSpec"}


def test_secrets_and_configs_are_immutable_every_change_replaces(tmp_state):
    for typ, old, new in ((SECRET, {"name": "pw", "data": "czE="}, {"name": "pw", "data": "czI="}),
                          (SECRET, {"name": "pw", "data": "czE="},
                           {"name": "pw", "data": "czE=", "labels": [{"label": "a", "value": "b"}]}),
                          (CONFIG, {"name": "nginx-1", "data": "YQ=="}, {"name": "nginx-2", "data": "YQ=="}),
                          (CONFIG, {"name": "nginx", "dataRaw": "a"}, {"name": "nginx", "dataRaw": "b"})):
        plan = plan_for(tmp_state, old, new, typ=typ)
        assert [(s.op, s.delete_before_replace) for s in plan.steps] == [("replace", False)], (typ, new)


def test_overlay_network_inputs_replace_the_network(tmp_state):
    overlay = {"name": "backend", "driver": "overlay", "attachable": True, "internal": True,
               "options": {"encrypted": ""}}
    for change in ({"options": {}}, {"attachable": False}, {"internal": False}, {"ingress": True}):
        plan = plan_for(tmp_state, overlay, {**overlay, **change}, typ=NETWORK)
        assert [s.op for s in plan.steps] == ["replace"], change
    # internal is Optional+Computed: left out, the network keeps what it has
    assert plan_for(tmp_state, overlay, {k: v for k, v in overlay.items() if k != "internal"},
                    typ=NETWORK).changes == []


def test_a_service_whose_update_failed_is_updated_again(tmp_state):
    # A rolled-back update is recorded with its new inputs and init errors (a partial failure); the
    # next run updates again, though the inputs did not change.
    g = graph(resource(SERVICE, "svc", web(taskSpec__containerSpec__image="sha256:broken")))
    st = tmp_state(g, svc={"init_errors": ["service rollback completed: rollback completed"]})
    [step] = make_plan(st, g).changes
    assert step.op == "update" and "update to continue" in step.line()


def test_the_plan_names_the_service_type_and_what_changed(tmp_state):
    step = only_step(plan_for(tmp_state, WEB, web(mode={"replicated": {"replicas": 6}})))
    assert "docker:Service" in step.line() and "~mode" in step.line()
    assert step.urn == urn(SERVICE, "svc")
