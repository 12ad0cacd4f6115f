"""Render the shared Jinja2 templates (owned by the Ansible roles) exactly as Ansible would.

The templates under ``roles/*/templates`` are the single copy of the nginx, Prometheus and Grafana
configuration; Ansible's ``template`` module renders them for the local environment and this module
renders them for the containers. The Jinja2 settings match Ansible's defaults (``trim_blocks``,
strict undefined variables) so both render the same text from the same variables.
"""
from __future__ import annotations

from pathlib import Path

import jinja2

from config import REPO_ROOT

NGINX_CONF = REPO_ROOT / "roles/nginx_gateway/templates/nginx.conf.j2"
PROMETHEUS_YML = REPO_ROOT / "roles/prometheus_server/templates/prometheus.yml.j2"
GRAFANA_DATASOURCE = REPO_ROOT / "roles/grafana_provisioning/templates/datasource.yml.j2"
GRAFANA_DASHBOARDS = REPO_ROOT / "roles/grafana_provisioning/templates/dashboards.yml.j2"
# Not a template, but shared the same way: the PostgreSQL exporter's custom queries (TimescaleDB jobs,
# hypertable sizes), which the postgres_exporter role installs for make up.
POSTGRES_EXPORTER_QUERIES = REPO_ROOT / "roles/postgres_exporter/files/queries.yml"


class TemplateError(Exception):
    """A shared template is missing or needs a variable the caller did not pass."""


def render(template: Path, **variables: object) -> str:
    """Render one template file with ``variables``; fails naming the file and the problem."""
    if not template.is_file():
        raise TemplateError(
            f"template {template.relative_to(REPO_ROOT)} not found: it belongs to the "
            f"{template.parent.parent.name} role; restore it or check out a revision that has it")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    try:
        return env.get_template(template.name).render(**variables)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"rendering {template.relative_to(REPO_ROOT)} failed: {exc}") from exc


def role_defaults(role: str) -> dict:
    """The plain values of roles/<role>/defaults/main.yml (those without a Jinja expression), so a
    name the role and the program both use is written once, in the role."""
    import yaml

    data = yaml.safe_load((REPO_ROOT / "roles" / role / "defaults/main.yml").read_text()) or {}
    return {k: v for k, v in data.items() if not (isinstance(v, str) and "{{" in v)}
