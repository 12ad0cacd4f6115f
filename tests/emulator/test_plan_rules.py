"""One test per lifecycle rule the stack emulator applies, on hand-made registrations (plan only, no
engine). Each rule's source is cited in stack_emulator/plan.py and schema.py."""
import pytest

from plan_support import CONTAINER, IMAGE, NETWORK, PASSWORD, VOLUME, graph, resource, urn

from stack_emulator.plan import PlanError, destroy_plan, make_plan

DB = dict(name="db", image="sha256:pg", envs=["POSTGRES_PASSWORD=x"], memory=1024, restart="unless-stopped")
APP = dict(name="app-1", image="sha256:app", envs=["DB_HOST=db", "A=1"], memory=512)


def ops(plan):
    """name -> what happens to it (the old copy of a create-before-delete replacement, deleted in the
    delete phase, is part of its replacement)."""
    out = {s.name: s.op for s in plan.deletes}
    out.update({s.name: s.op for s in plan.steps if s.op != "same"})
    return out


def test_an_unchanged_stack_has_no_changes(tmp_state):
    g = graph(resource(CONTAINER, "db", DB))
    plan = make_plan(tmp_state(g), g)
    assert plan.changes == [] and "no changes" in plan.render()


def test_new_resources_are_created_and_missing_ones_deleted_dependents_first(tmp_state):
    old = graph(resource(NETWORK, "net", {"name": "n"}),
                resource(CONTAINER, "db", DB, depends_on=[(NETWORK, "net")]),
                resource(CONTAINER, "app", APP, depends_on=[(CONTAINER, "db")]))
    new = graph(resource(VOLUME, "vol", {"name": "v"}))
    plan = make_plan(tmp_state(old), new)
    assert ops(plan) == {"vol": "create", "app": "delete", "db": "delete", "net": "delete"}
    assert [s.name for s in plan.deletes] == ["app", "db", "net"]


def test_set_inputs_in_another_order_and_unset_defaults_are_no_change(tmp_state):
    old = graph(resource(CONTAINER, "app", {**APP, "restart": "no", "ports": [{"internal": 80, "external": 8080}]}))
    new = graph(resource(CONTAINER, "app", {**APP, "envs": list(reversed(APP["envs"])),
                                            "ports": [{"internal": 80, "external": 8080, "ip": "0.0.0.0",
                                                       "protocol": "tcp"}]}))
    assert ops(make_plan(tmp_state(old), new)) == {}


def test_a_computed_input_the_program_stops_setting_keeps_its_value(tmp_state):
    # hostname is Optional+Computed in resource_docker_container.go: no diff when left out.
    old = graph(resource(CONTAINER, "app", {**APP, "hostname": "app-1"}))
    assert ops(make_plan(tmp_state(old), graph(resource(CONTAINER, "app", APP)))) == {}


def test_a_force_new_input_replaces_a_container_delete_before_replace_by_the_providers_choice(tmp_state):
    old = graph(resource(CONTAINER, "db", DB))
    new = graph(resource(CONTAINER, "db", {**DB, "image": "sha256:pg2"}))
    [step] = make_plan(tmp_state(old), new).changes
    assert (step.op, step.delete_before_replace, step.diff.replace_keys) == ("replace", True, ["image"])


def test_the_delete_before_replace_option_overrides_the_provider_either_way(tmp_state):
    old = graph(resource(CONTAINER, "app", APP))
    new = graph(resource(CONTAINER, "app", {**APP, "image": "sha256:app2"}, deleteBeforeReplace=False))
    plan = make_plan(tmp_state(old), new)
    assert [(s.op, s.delete_before_replace) for s in plan.steps] == [("replace", False)]
    # create-before-delete: the old copy goes in the delete phase, after every create
    assert [(s.op, s.name) for s in plan.deletes] == [("delete", "app")]
    old_net = graph(resource(NETWORK, "net", {"name": "n", "internal": False}))
    new_net = graph(resource(NETWORK, "net", {"name": "n", "internal": True}, deleteBeforeReplace=True))
    [step] = make_plan(tmp_state(old_net), new_net).changes
    assert (step.op, step.delete_before_replace) == ("replace", True)


def test_memory_and_restart_policy_update_the_container_in_place(tmp_state):
    old = graph(resource(CONTAINER, "db", DB))
    new = graph(resource(CONTAINER, "db", {**DB, "memory": 2048, "restart": "always"}))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "update" and step.engine_update and step.diff.update_keys == ["memory", "restart"]


def test_a_healthcheck_or_grace_change_is_recorded_but_the_container_keeps_its_own(tmp_state):
    # Not ForceNew, and resourceDockerContainerUpdate does not apply them.
    old = graph(resource(CONTAINER, "app", APP))
    new = graph(resource(CONTAINER, "app", {**APP, "destroyGraceSeconds": 45,
                                            "healthcheck": {"tests": ["CMD", "true"], "interval": "5s"}}))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "update" and not step.engine_update
    assert step.diff.record_keys == ["destroyGraceSeconds", "healthcheck"]
    assert "update (state only)" in step.line()


def test_a_value_known_only_after_apply_in_a_force_new_input_is_a_replacement(tmp_state):
    old = graph(resource(CONTAINER, "app", APP))
    new = graph(resource(CONTAINER, "app", {**APP, "image": {"__unknown__": True}}))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "replace" and step.diff.unknown == {"image"}


def test_an_image_build_context_change_is_an_update_that_rebuilds(tmp_state):
    # pulumi-docker's Image: Diff reports any change as an update, never a replacement.
    old = graph(resource(IMAGE, "img", {"imageName": "svc:dev", "build": {"context": ".", "contextDigest": "a"}}))
    new = graph(resource(IMAGE, "img", {"imageName": "svc:dev", "build": {"context": ".", "contextDigest": "b"}}))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "update"


def test_delete_before_replace_first_deletes_dependents_whose_replacement_it_forces(tmp_state):
    """calculateDependentReplacements: a dependent whose ForceNew input takes a value from the
    replaced resource is deleted first; one that only dependsOn it, or takes the value into an
    updatable input, is not."""
    db = resource(CONTAINER, "db", DB)
    by_value = resource(CONTAINER, "app-1", {**APP, "name": "app-1"}, deps={"envs": [(CONTAINER, "db")]})
    by_order = resource(CONTAINER, "app-2", {**APP, "name": "app-2"}, depends_on=[(CONTAINER, "db")])
    by_memory = resource(CONTAINER, "app-3", {**APP, "name": "app-3"}, deps={"memory": [(CONTAINER, "db")]})
    old = graph(db, by_value, by_order, by_memory)
    new = graph(resource(CONTAINER, "db", {**DB, "image": "sha256:pg2"}), by_value, by_order, by_memory)
    plan = make_plan(tmp_state(old), new)
    [db_step] = [s for s in plan.steps if s.name == "db"]
    assert [c.name for c in db_step.cascade] == ["app-1"]
    assert ops(plan) == {"db": "replace", "app-1": "replace"}
    [app] = [s for s in plan.steps if s.name == "app-1"]
    assert app.cascaded_by == urn(CONTAINER, "db") and app.delete_before_replace


def test_create_before_delete_never_cascades(tmp_state):
    db = resource(CONTAINER, "db", DB)
    app = resource(CONTAINER, "app-1", APP, deps={"envs": [(CONTAINER, "db")]})
    new = graph(resource(CONTAINER, "db", {**DB, "image": "sha256:pg2"}, deleteBeforeReplace=False), app)
    plan = make_plan(tmp_state(graph(db, app)), new)
    assert ops(plan) == {"db": "replace"} and plan.steps[0].cascade == []


def test_protect_refuses_a_replacement_and_a_delete(tmp_state):
    vol = resource(VOLUME, "vol", {"name": "v"}, protect=True)
    with pytest.raises(PlanError, match="vol .* is protected and would be replaced"):
        make_plan(tmp_state(graph(vol)), graph(resource(VOLUME, "vol", {"name": "v2"}, protect=True)))
    with pytest.raises(PlanError, match="vol .* is protected and the program no longer declares it"):
        make_plan(tmp_state(graph(vol)), graph())
    with pytest.raises(PlanError, match="protected, so not destroyed: vol"):
        destroy_plan(tmp_state(graph(vol)))
    kept = destroy_plan(tmp_state(graph(vol, resource(CONTAINER, "db", DB))), exclude={urn(VOLUME, "vol")})
    assert [s.name for s in kept.deletes] == ["db"]


def test_unprotecting_and_replacing_in_one_run_is_allowed(tmp_state):
    vol = resource(VOLUME, "vol", {"name": "v"}, protect=True)
    plan = make_plan(tmp_state(graph(vol)), graph(resource(VOLUME, "vol", {"name": "v2"}, protect=False)))
    assert ops(plan) == {"vol": "replace"}


def test_ignore_changes_keeps_the_old_value(tmp_state):
    old = graph(resource(CONTAINER, "app", APP))
    new = graph(resource(CONTAINER, "app", {**APP, "envs": ["B=2"], "memory": 1024}, ignoreChanges=["envs"]))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "update" and step.diff.update_keys == ["memory"]


def test_replace_on_changes_turns_an_update_into_a_replacement(tmp_state):
    old = graph(resource(CONTAINER, "app", APP))
    new = graph(resource(CONTAINER, "app", {**APP, "memory": 1024}, replaceOnChanges=["memory"]))
    [step] = make_plan(tmp_state(old), new).changes
    assert step.op == "replace" and "replaceOnChanges" in step.reasons[0]


def test_a_failed_create_is_replaced_when_replace_on_changes_covers_everything(tmp_state):
    job = resource(CONTAINER, "migrate", APP, replaceOnChanges=["*"])
    st = tmp_state(graph(job), migrate={"init_errors": ["container failed to be in healthy state"]})
    [step] = make_plan(st, graph(job)).changes
    assert step.op == "replace" and "#initerror" in step.reasons[0]
    # Without it, Pulumi only updates (continues) the resource: the container is not run again.
    plain_job = resource(CONTAINER, "migrate", APP)
    st = tmp_state(graph(plain_job), migrate={"init_errors": ["failed"]})
    [step] = make_plan(st, graph(plain_job)).changes
    assert step.op == "update" and not step.engine_update


def test_a_changed_replacement_trigger_replaces(tmp_state):
    old = graph(resource(CONTAINER, "app", APP, replacementTrigger="v1"))
    new = graph(resource(CONTAINER, "app", APP, replacementTrigger="v2"))
    assert ops(make_plan(tmp_state(old), new)) == {"app": "replace"}


def test_replace_with_follows_the_named_resource(tmp_state):
    db = resource(CONTAINER, "db", DB)
    app = resource(CONTAINER, "app", APP, replaceWith=[urn(CONTAINER, "db")])
    new = graph(resource(CONTAINER, "db", {**DB, "image": "sha256:pg2"}), app)
    assert ops(make_plan(tmp_state(graph(db, app)), new)) == {"db": "replace", "app": "replace"}


def test_targeted_replace_replaces_an_unchanged_resource(tmp_state):
    g = graph(resource(CONTAINER, "app", APP, deleteBeforeReplace=False))
    plan = make_plan(tmp_state(g), g, replace={"app"})
    assert [(s.op, s.reasons) for s in plan.steps] == [("replace", ["--replace"])]
    with pytest.raises(PlanError, match="no such resource"):
        make_plan(tmp_state(g), g, replace={"nope"})


def test_an_option_the_emulator_does_not_model_stops_the_plan(tmp_state):
    g = graph(resource(CONTAINER, "app", APP, deletedWith=urn(CONTAINER, "db")))
    with pytest.raises(PlanError, match="app .* sets the resource option deletedWith"):
        make_plan(tmp_state(graph()), g)


def test_a_provider_release_the_emulator_does_not_model_stops_the_plan(tmp_state):
    g = graph(resource(CONTAINER, "app", APP, version="4.5.0"))
    with pytest.raises(PlanError, match="pulumi-docker 4.5.0; the stack emulator models 5.2.0"):
        make_plan(tmp_state(graph()), g)


def test_generated_secrets_change_only_with_their_inputs(tmp_state):
    old = graph(resource(PASSWORD, "pw", {"length": 32, "special": False}))
    assert ops(make_plan(tmp_state(old), old)) == {}
    new = graph(resource(PASSWORD, "pw", {"length": 40, "special": False}))
    assert ops(make_plan(tmp_state(old), new)) == {"pw": "replace"}


def test_a_retained_resource_is_forgotten_not_deleted(tmp_state):
    old = graph(resource(VOLUME, "vol", {"name": "v"}, retainOnDelete=True))
    [step] = make_plan(tmp_state(old), graph()).deletes
    assert step.op == "delete" and step.retain


def test_a_changed_mount_is_only_recorded_but_another_mount_replaces(tmp_state):
    # mounts is ForceNew for its element count only; its target/source/type are not ForceNew, and
    # resourceDockerContainerUpdate does not apply them.
    mount = {"type": "bind", "source": "/", "target": "/host", "readOnly": True}
    old = graph(resource(CONTAINER, "exporter", {**APP, "mounts": [mount]}))
    moved = graph(resource(CONTAINER, "exporter", {**APP, "mounts": [{**mount, "source": "/srv"}]}))
    [step] = make_plan(tmp_state(old), moved).changes
    assert step.op == "update" and not step.engine_update and step.diff.record_keys == ["mounts"]
    more = graph(resource(CONTAINER, "exporter", {**APP, "mounts": [mount, {**mount, "target": "/more"}]}))
    [step] = make_plan(tmp_state(old), more).changes
    assert step.op == "replace"
