"""Values as the emulator records them: JSON, with secrets wrapped as {"__secret__": v} (the engine's
secret marker) and values not known before apply as {"__unknown__": true} (the engine's unknown).

The id of a resource the run creates is known only once it exists: the program's mock run answers it
with a marker naming the resource's URN (``id_marker``), which apply.py replaces with the real id
before the resources that use it are created or updated, so the state records real ids (a Service's
secret and config references, a network id)."""
from __future__ import annotations

import re

UNKNOWN = {"__unknown__": True}
_ID_MARKER = re.compile(r"\{\{id of (.+?)\}\}")


def id_marker(urn: str) -> str:
    return "{{id of " + urn + "}}"


def resolve_ids(value, id_of):
    """``value`` with every id marker replaced by ``id_of(urn)`` (secret wrappers kept)."""
    if isinstance(value, str):
        return _ID_MARKER.sub(lambda m: id_of(m.group(1)), value)
    if isinstance(value, dict):
        return {k: resolve_ids(v, id_of) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_ids(v, id_of) for v in value]
    return value


def is_secret(value) -> bool:
    return isinstance(value, dict) and set(value) == {"__secret__"}


def is_unknown(value) -> bool:
    return isinstance(value, dict) and value.get("__unknown__") is True and len(value) == 1


def reveal(value):
    """The value with every secret wrapper removed (what the provider receives)."""
    if is_secret(value):
        return reveal(value["__secret__"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def has_unknown(value) -> bool:
    if is_unknown(value):
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def contains_secret(value) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_secret(v) for v in value)
    return False


def plain_strings(value):
    """Every string reachable in ``value`` without passing through a secret wrapper."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)
    elif isinstance(value, str):
        yield value
