"""Changing what prod runs while it serves: publishing a model version (playbooks/models.yml, replica
by replica) and rolling the service image forward and back by tag (service.image + `pulumi up`,
replicas replaced create-before-delete, the old ones stopped with their shutdown budget as
pulumi-docker deletes them). Predictions go through the gateway all along; failed requests and lost
rows are counted and printed."""
import json
import shutil
from collections import Counter

import pytest

from docker_support import IRIS, derived_image, settled_rows

from stack_emulator.stack import ROOT

pytestmark = pytest.mark.slow


def test_a_published_model_version_is_served_and_no_request_fails(prod, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "service/models", models)
    # A new version of iris: version 2's model under version 3.
    shutil.copytree(models / "iris/2", models / "iris/3")
    meta = json.loads((models / "iris/3/metadata.json").read_text())
    meta.update(version="3", default=False)
    (models / "iris/3/metadata.json").write_text(json.dumps(meta))
    with prod.load(workers=3) as load:
        load.wait_for(30)
        run = prod.playbook("models.yml", "-e", f"models_src={models}").ok()
        load.wait_for(30)
    print(f"\n[rollout] models.yml published iris v3 under load: {len(load.results)} requests, "
          f"{len(load.failed)} failed, {run.changed} changes")
    assert run.changed > 0 and not load.failed, load.failed[:5]
    r = prod.session().post(f"{prod.url}/api/v1/models/iris/predict?version=3", json=IRIS, timeout=10)
    assert r.status_code == 200 and r.json()["version"] == "3"
    assert prod.playbook("models.yml", "-e", f"models_src={models}").ok().changed == 0


def tag_release(prod, tag: str, note: str) -> str:
    """A release tag of the running service image; each note makes a distinct image id."""
    return derived_image(prod, tag, [f"LABEL com.prediction.release={note}"])


def replica_images(prod) -> set[str]:
    return {prod.docker.containers.get(n).attrs["Image"] for n in prod.run.replicas()}


def test_rollback_by_image_tag_replaces_replicas_without_failed_requests_or_lost_rows(prod):
    release_a = tag_release(prod, "1.0.0", "a")
    release_b = tag_release(prod, "1.1.0", "b")
    figures = []
    for tag, image_id in (("1.0.0", release_a), ("1.1.0", release_b), ("1.0.0", release_a)):
        before = settled_rows(prod)
        with prod.load(workers=3) as load:
            load.wait_for(30)
            # `pulumi config set --path service.image …` then `pulumi up`.
            run = prod.up(config={"service": {"image": f"prediction-service:{tag}"}})
            load.wait_for(30)
        lost = before + load.ok - settled_rows(prod)
        replaced = sorted(s.name for s in run.plan.changes if s.op == "replace")
        figures.append((tag, len(load.results), len(load.failed), lost))
        if load.failed:
            print(f"\n[rollout] {tag}: failures by kind: {Counter(str(f)[:120] for f in load.failed).most_common(4)}")
        assert replica_images(prod) == {image_id}, f"the replicas do not run {tag}"
        assert {f"service-{i}" for i in (1, 2, 3)} <= set(replaced) and "gateway-container" not in replaced
    print("\n[rollout] service.image A -> B -> A (pulumi up each), requests through the gateway: "
          + "; ".join(f"{t}: {n} sent, {f} failed, {lost} rows lost" for t, n, f, lost in figures))
    assert all(f == 0 and lost == 0 for _, _, f, lost in figures)
