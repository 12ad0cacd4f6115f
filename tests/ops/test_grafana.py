"""roles/grafana_provisioning run for real into a temporary provisioning tree: files parse, the datasource
uid is the one the dashboards use, the provider's path holds the dashboards, second run changed=0 and
owner/modes stay put. The HTTP API path is NOT tested: there is no Grafana on this machine."""
from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles/grafana_provisioning/templates"
SOURCE_DASHBOARDS = sorted((ROOT / "dashboards/grafana").glob("*.json"))
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def tree(tmp_path):
    # Under its own folder: tmp_path also holds the test inventory and extra-vars files.
    base = tmp_path / "grafana"
    return {"grafana_provisioning_dir": str(base / "provisioning"),
            "grafana_provisioning_dashboards_dir": str(base / "dashboards"),
            "grafana_provisioning_prometheus_url": "http://prometheus.test:9090",
            "grafana_provisioning_owner": USER, "grafana_provisioning_group": GROUP}


def snapshot(root: Path) -> dict:
    """path -> (mode, uid, gid, mtime) of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def test_provisioning_files_parse_and_reference_the_dashboards(playbook, tree, tmp_path):
    run = playbook("grafana.yml", tree)
    assert run.rc == 0, run.failure_messages() or run.stderr
    prov = Path(tree["grafana_provisioning_dir"])

    ds_doc = yaml.safe_load((prov / "datasources/prediction-service.yml").read_text())
    assert ds_doc["apiVersion"] == 1
    [ds] = ds_doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus.test:9090" and ds["access"] == "proxy"
    uid = ds["uid"]
    assert uid == "prometheus"

    prov_doc = yaml.safe_load((prov / "dashboards/prediction-service.yml").read_text())
    assert prov_doc["apiVersion"] == 1
    [provider] = prov_doc["providers"]
    assert provider["type"] == "file" and provider["options"]["foldersFromFilesStructure"] is True
    path = Path(provider["options"]["path"])
    assert path == Path(tree["grafana_provisioning_dashboards_dir"])

    # The provider's path (one sub-folder deep = one Grafana folder) holds exactly our dashboards, unchanged.
    provisioned = {p.name: p for p in path.rglob("*.json")}
    assert set(provisioned) == {p.name for p in SOURCE_DASHBOARDS}
    for src in SOURCE_DASHBOARDS:
        dash = json.loads(provisioned[src.name].read_text())
        assert dash == json.loads(src.read_text())
        assert provisioned[src.name].parent.relative_to(path) == Path("Prediction Service")
        # Every panel's datasource is the variable whose default is the provisioned uid (or that uid itself).
        ds_var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
        assert ds_var["current"]["value"] == uid
        refs = [p.get("datasource") for p in dash["panels"] if p["type"] != "row"]
        refs += [t.get("datasource") for p in dash["panels"] for t in p.get("targets", [])]
        assert refs and all(r["uid"] in {"${datasource}", uid} for r in refs)


def test_second_run_changes_nothing_and_modes_and_owner_are_stable(playbook, tree, tmp_path):
    first = playbook("grafana.yml", tree)
    assert first.rc == 0 and first.changed > 0, first.failure_messages()
    base = tmp_path / "grafana"
    before = snapshot(base)
    second = playbook("grafana.yml", tree)
    assert second.rc == 0, second.failure_messages()
    assert second.changed == 0, second.stdout[-3000:]
    assert snapshot(base) == before  # same content times, modes and owners
    assert len(before) >= 7  # 2 provisioning dirs + 2 files, dashboards dir + folder + dashboard(s)
    for rel, (mode, uid, gid, _) in before.items():
        expected = 0o750 if (base / rel).is_dir() else 0o640
        assert mode == expected, f"{rel}: mode {oct(mode)}"
        assert (uid, gid) == (os.getuid(), os.getgid()), rel


def test_a_drifted_mode_is_put_back(playbook, tree):
    assert playbook("grafana.yml", tree).rc == 0
    ds_file = Path(tree["grafana_provisioning_dir"]) / "datasources/prediction-service.yml"
    ds_file.chmod(0o666)
    run = playbook("grafana.yml", tree)
    assert run.rc == 0 and run.changed == 1, run.failure_messages()
    assert stat.S_IMODE(ds_file.stat().st_mode) == 0o640


def test_check_mode_writes_nothing(playbook, tree):
    run = playbook("grafana.yml", tree, check=True, diff=True)
    assert run.rc == 0, run.failure_messages()
    assert run.changed > 0
    assert not Path(tree["grafana_provisioning_dir"]).exists()
    assert not Path(tree["grafana_provisioning_dashboards_dir"]).exists()


def test_missing_group_fails_with_what_to_fix(playbook, tree):
    run = playbook("grafana.yml", {**tree, "grafana_provisioning_group": "no-such-group-xyz"})
    assert run.rc != 0
    assert any("Group 'no-such-group-xyz' does not exist" in m and "grafana_provisioning_group" in m
               for m in run.failure_messages())


def test_api_url_without_token_is_refused(playbook, tree, monkeypatch):
    monkeypatch.delenv("GRAFANA_API_TOKEN", raising=False)
    run = playbook("grafana.yml", {**tree, "grafana_provisioning_api_url": "http://grafana.test:3000"})
    assert run.rc != 0
    assert any("GRAFANA_API_TOKEN" in m for m in run.failure_messages())


def test_templates_render_with_plain_jinja2_like_ansible(playbook, tree):
    """infra/ renders the same templates with plain Jinja2 and only the three documented variables."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined)
    required = {"grafana_provisioning_prometheus_url": tree["grafana_provisioning_prometheus_url"],
                "grafana_provisioning_datasource_uid": "prometheus",
                "grafana_provisioning_dashboards_dir": tree["grafana_provisioning_dashboards_dir"]}
    assert playbook("grafana.yml", tree).rc == 0
    prov = Path(tree["grafana_provisioning_dir"])
    for template, written in (("datasource.yml.j2", prov / "datasources/prediction-service.yml"),
                              ("dashboards.yml.j2", prov / "dashboards/prediction-service.yml")):
        plain = yaml.safe_load(env.get_template(template).render(**required))
        assert plain == yaml.safe_load(written.read_text()), template
