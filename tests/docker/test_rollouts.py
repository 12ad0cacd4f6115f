"""Changing what prod runs while it serves: publishing a model version (playbooks/models.yml, replica
by replica) and rolling the service image forward and back by tag (service.image + `pulumi up`,
replicas replaced create-before-delete). Predictions go through the gateway all along; the failures
are counted and printed."""
import io
from collections import Counter
import json
import shutil
import tarfile

import pytest
import yaml

from docker_support import IRIS
from dockerstack import stack as harness
from dockerstack.stack import ROOT

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
    base = prod.container("service-1").attrs["Config"]["Image"]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = f"FROM {base}\nLABEL com.prediction.release={note}\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    image, _ = prod.docker.images.build(fileobj=io.BytesIO(context.getvalue()), custom_context=True,
                                        tag=f"prediction-service:{tag}", rm=True)
    return image.id


def replica_images(prod) -> set[str]:
    return {prod.docker.containers.get(n).attrs["Image"] for n in prod.run.replicas()}


def test_rollback_by_image_tag_replaces_replicas_without_failed_requests(prod):
    release_a = tag_release(prod, "1.0.0", "a")
    release_b = tag_release(prod, "1.1.0", "b")
    # `pulumi config set service.image …`: the stack file's service section, plus the image.
    section = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]["prediction-platform:service"]
    figures = []
    for tag, image_id in (("1.0.0", release_a), ("1.1.0", release_b), ("1.0.0", release_a)):
        with prod.load(workers=3) as load:
            load.wait_for(30)
            replaced = harness.update(prod.run, {"service": {**section, "image": f"prediction-service:{tag}"}},
                                      var_dir=prod.run.env_file.parent)
            load.wait_for(30)
        figures.append((tag, len(load.results), len(load.failed)))
        if load.failed:
            print(f"\n[rollout] {tag}: failures by kind: {Counter(str(f)[:120] for f in load.failed).most_common(4)}")
        assert replica_images(prod) == {image_id}, f"the replicas do not run {tag}"
        assert {f"service-{i}" for i in (1, 2, 3)} <= set(replaced)
    print("\n[rollout] service.image A -> B -> A (pulumi up each), requests through the gateway: "
          + "; ".join(f"{t}: {n} sent, {f} failed" for t, n, f in figures))
    assert all(f == 0 for _, _, f in figures)
