"""The PromQL the platform ships: every dashboard panel's queries and every alert rule's expression,
made concrete the way Grafana and Prometheus run them (shared by the e2e and the Docker suites)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def dashboard_panels() -> list[tuple[str, str, list[str]]]:
    """(dashboard file, panel title, [expr…]) for every panel with queries, rows' nested panels included."""
    out = []
    for f in sorted((ROOT / "dashboards" / "grafana").glob("*.json")):
        doc = json.loads(f.read_text())
        doc = doc.get("dashboard", doc)
        stack = list(doc.get("panels", []))
        while stack:
            p = stack.pop(0)
            stack.extend(p.get("panels", []))
            exprs = [t["expr"] for t in p.get("targets", []) if t.get("expr")]
            if exprs:
                out.append((f.name, p.get("title", "?"), exprs))
    return out


def alert_rules() -> list[tuple[str, str, str]]:
    """(rules file, alert or record name, expr) of every rule."""
    out = []
    for f in sorted((ROOT / "dashboards" / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f.name, rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


def concrete(expr: str) -> str:
    """Replace Grafana's template variables the way Grafana would for 'All' over a short range."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    expr = re.sub(r"\$\{?instance\}?", ".*", expr)
    return re.sub(r"\$\{?datasource\}?", "prometheus", expr)


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool)?")
_SET_OPERATOR = re.compile(r"\b(and|or|unless)\b")


def _top_level(text: str):
    """Indexes of ``text`` outside brackets and string literals."""
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == '"':
            i = text.index('"', i + 1)
        elif depth == 0:
            yield i
        i += 1


def signal_of(expr: str) -> str:
    """What an alert measures: its expression without the threshold, i.e. the left side of the
    last top-level comparison of its first top-level `and`/`unless` operand. A healthy system
    returns no series for `up == 0`, but `up` must have some, or the alert could never fire."""
    text = expr.strip()
    parts, start = [], 0
    for i in _top_level(text):
        m = _SET_OPERATOR.match(text, i)
        if i >= start and m and (i == 0 or not text[i - 1].isalnum()):
            parts.append(text[start:i])
            start = m.end()
    parts.append(text[start:])
    first = parts[0]
    cut = None
    for i in _top_level(first):
        if _COMPARISON.match(first, i):
            cut = i
    return (first[:cut] if cut is not None else first).strip()
