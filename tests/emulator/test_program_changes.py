"""What `pulumi up` does to a running prod stack for each change a user makes to Pulumi.prod.yaml —
the real program, the real stack file, the providers' rules (plan only, no engine). This is where
the program shows it is safe under the provider's semantics: no change to the data layer takes the
replicas down, no change to the replicas restarts the gateway, and nothing is killed at once."""
from pathlib import Path

import pytest

from plan_support import state_of

from stack_emulator.plan import make_plan
from stack_emulator.program import run_program


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """prod as the state records it after a first `pulumi up` (image ids stand-ins)."""
    graph = run_program("prod", realise_images="stand-in")
    return state_of(graph, Path(tmp_path_factory.mktemp("prod")))


def plan_for(deployed, **config):
    graph = run_program("prod", config=config, prior=deployed.prior(), realise_images="stand-in")
    return make_plan(deployed, graph)


def changes(plan) -> dict[str, str]:
    out = {s.name: s.op for s in plan.deletes}
    out.update({s.name: s.op for s in plan.steps if s.op != "same"})
    return out


def test_an_unchanged_stack_file_plans_nothing(deployed):
    plan = plan_for(deployed)
    assert plan.changes == [], plan.render()


def test_a_redis_setting_replaces_redis_alone(deployed):
    plan = plan_for(deployed, cache={"maxmemory": "1gb"})
    assert changes(plan) == {"cache-container": "replace"}
    [step] = plan.changes
    assert step.delete_before_replace and step.cascade == [], "no replica may be deleted with Redis"


def test_a_database_image_tag_replaces_the_database_alone(deployed):
    plan = plan_for(deployed, database={"tag": "2.17.2-pg15-next"})
    assert changes(plan) == {"database-image": "replace", "database-container": "replace"}
    [db] = [s for s in plan.steps if s.name == "database-container"]
    assert db.delete_before_replace and db.cascade == []


def test_a_memory_limit_is_changed_in_place(deployed):
    plan = plan_for(deployed, service={"memoryMb": 1536})
    assert changes(plan) == {f"service-{i}": "update" for i in (1, 2, 3)}
    assert all(s.engine_update and s.diff.update_keys == ["memory", "memorySwap"] for s in plan.changes)
    plan = plan_for(deployed, database={"memoryMb": 3072})
    assert changes(plan) == {"database-container": "update"}


def test_a_new_image_tag_replaces_the_replicas_create_before_delete_and_reruns_the_migration(deployed):
    plan = plan_for(deployed, service={"image": "prediction-service:1.4.0"})
    c = changes(plan)
    assert {c[f"service-{i}"] for i in (1, 2, 3)} == {"replace"} and c["service-migrate"] == "replace"
    for step in plan.steps:
        if step.name.startswith("service-") and step.name != "service-migrate" and step.op == "replace":
            assert not step.delete_before_replace, f"{step.name} must be created before the old one goes"
    assert "gateway-container" not in c and "monitoring-prometheus" not in c
    # The old replicas are deleted last, each stopped with its shutdown budget.
    old = [s for s in plan.deletes if s.type.endswith(":Container") and s.name.startswith("service-")
           and s.name != "service-migrate"]
    assert len(old) == 3 and all(s.old.inputs["destroyGraceSeconds"] >= 36 for s in old)


def test_scaling_adds_or_removes_replicas_and_nothing_else(deployed):
    assert changes(plan_for(deployed, service={"replicas": 4})) == {"service-4": "create"}
    assert changes(plan_for(deployed, service={"replicas": 2})) == {"service-3": "delete"}


def test_a_new_gateway_port_replaces_the_gateway_alone(deployed):
    assert changes(plan_for(deployed, gateway={"httpsPort": 8443})) == {"gateway-container": "replace"}


def test_a_rotated_app_password_reruns_the_migration_and_replaces_the_replicas(deployed):
    graph = run_program("prod", secrets={"appDbPassword": "a-new-app-password-0123456789"},
                        prior=deployed.prior(), realise_images="stand-in")
    c = changes(make_plan(deployed, graph))
    assert c["service-migrate"] == "replace" and {c[f"service-{i}"] for i in (1, 2, 3)} == {"replace"}
    assert "database-container" not in c
