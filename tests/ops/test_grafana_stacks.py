"""One Grafana story for the Docker stacks: Pulumi uploads the provisioning files into the Grafana
container when it creates it, and playbooks/grafana.yml copies the very same files (same paths, same
content, root-owned 0644) through the Docker API. No Grafana can run here, so the files are checked
against Grafana's documented provisioning schema instead (administration/provisioning: datasources
and dashboard providers, apiVersion 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/infra"))

from pulumi_graph import STACKS, files_of, run_stack  # noqa: E402

# The fields Grafana's provisioning documentation lists, with their types; anything else is refused.
DATASOURCES_SCHEMA = {
    "type": "object", "required": ["apiVersion", "datasources"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": 1},
        "deleteDatasources": {"type": "array"},
        "prune": {"type": "boolean"},
        "datasources": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "type", "access", "url", "uid"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}, "access": {"enum": ["proxy", "direct"]},
                "orgId": {"type": "integer"}, "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
                "url": {"type": "string", "pattern": "^https?://"}, "user": {"type": "string"},
                "database": {"type": "string"}, "basicAuth": {"type": "boolean"}, "basicAuthUser": {"type": "string"},
                "withCredentials": {"type": "boolean"}, "isDefault": {"type": "boolean"},
                "jsonData": {"type": "object"}, "secureJsonData": {"type": "object"},
                "version": {"type": "integer"}, "editable": {"type": "boolean"}}}}}}
PROVIDERS_SCHEMA = {
    "type": "object", "required": ["apiVersion", "providers"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": 1},
        "providers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "type", "options"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"}, "orgId": {"type": "integer"}, "folder": {"type": "string"},
                "folderUid": {"type": "string"}, "type": {"const": "file"},
                "disableDeletion": {"type": "boolean"}, "updateIntervalSeconds": {"type": "integer"},
                "allowUiUpdates": {"type": "boolean"},
                "options": {"type": "object", "required": ["path"], "additionalProperties": False, "properties": {
                    "path": {"type": "string", "pattern": "^/"},
                    "foldersFromFilesStructure": {"type": "boolean"}}}}}}}}


def grafana_uploads(stack: str, tmp_path: Path) -> dict[str, str]:
    return files_of(run_stack(stack, tmp_path / stack), "monitoring-grafana")


def role_render(stack: str, template: str, tmp_path: Path) -> str:
    """The role's template rendered by Ansible with the stack inventory's variables, as grafana.yml does."""
    dest = tmp_path / f"{stack}-{template}"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "localhost", "-i", str(ROOT / f"inventories/{stack}"),
         "-m", "ansible.builtin.template",
         "-a", f"src={ROOT}/roles/grafana_provisioning/templates/{template} dest={dest}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest.read_text()


@pytest.mark.parametrize("stack", STACKS)
def test_pulumi_uploads_what_the_grafana_playbook_writes(stack, tmp_path):
    uploads = grafana_uploads(stack, tmp_path)
    provisioning = "/etc/grafana/provisioning"
    assert uploads[f"{provisioning}/datasources/prediction-service.yml"] == role_render(stack, "datasource.yml.j2", tmp_path)
    assert uploads[f"{provisioning}/dashboards/prediction-service.yml"] == role_render(stack, "dashboards.yml.j2", tmp_path)
    for dashboard in sorted((ROOT / "dashboards/grafana").glob("*.json")):
        assert uploads[f"/etc/grafana/dashboards/Prediction Service/{dashboard.name}"] == dashboard.read_text()


@pytest.mark.parametrize("stack", STACKS)
def test_provisioning_files_follow_grafanas_documented_schema(stack, tmp_path):
    uploads = grafana_uploads(stack, tmp_path)
    datasources = yaml.safe_load(uploads["/etc/grafana/provisioning/datasources/prediction-service.yml"])
    providers = yaml.safe_load(uploads["/etc/grafana/provisioning/dashboards/prediction-service.yml"])
    jsonschema.validate(datasources, DATASOURCES_SCHEMA)
    jsonschema.validate(providers, PROVIDERS_SCHEMA)
    path = providers["providers"][0]["options"]["path"]
    dashboards = [f for f in uploads if f.startswith(path + "/") and f.endswith(".json")]
    assert dashboards, f"no dashboard under the provider's path {path}"
    uid = datasources["datasources"][0]["uid"]
    for f in dashboards:
        doc = json.loads(uploads[f])
        assert doc["uid"] and doc["title"]
        # Every panel queries the provisioned datasource (by variable defaulting to its uid).
        variables = {v["name"]: v for v in doc.get("templating", {}).get("list", [])}
        assert variables["datasource"]["current"]["value"] == uid
