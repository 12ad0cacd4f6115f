"""What `pulumi up` would do: compare the stack's state with what the program registers now.

The rules are Pulumi's engine rules (pulumi/pulumi ``pkg/resource/deploy/step_generator.go`` unless
noted), applied with each provider's schema (schema.py):

- A URN the state does not have is created; one the program no longer registers is deleted, in
  the delete phase after every other step, dependents first (``GenerateDeletes``/``ScheduleDeletes``).
- ``ignoreChanges`` paths keep their old value before diffing (``processIgnoreChanges``).
- A changed input the provider marks ForceNew replaces the resource; so does any change under a
  ``replaceOnChanges`` path, a changed ``replacementTrigger`` or the replacement of a resource named
  in ``replaceWith`` (``diff``, ``applyReplaceOnChanges``, ``shouldTriggerReplace``). A resource whose
  create or update failed part-way (init errors) is replaced when ``replaceOnChanges`` covers ``#initerror`` (``*`` does),
  and otherwise updated (``continueStepsFromDiff``).
- Other changes update in place (``NewUpdateStep``); what the provider then does to the live object
  is the provider's business (schema.py: UPDATE or RECORD).
- A replacement is create-before-delete unless the provider asks for delete-before-replace (every
  docker.Container does; services, secrets, configs and networks do not: pulumi-docker
  provider/resources.go sets DeleteBeforeReplace for docker_container only) or the resource's ``deleteBeforeReplace`` option says so; the option, when
  set, overrides the provider either way.
- Delete-before-replace first deletes every dependent that the replacement would force to be
  replaced: a dependent whose input has a property dependency on a resource being replaced is diffed
  with that input unknown, and replaced if the provider says so; a plain ``dependsOn`` never cascades
  (``calculateDependentReplacements``). The old create-before-delete copies are deleted in the delete
  phase, after every new resource exists.
- ``protect``: a protected resource is never replaced or deleted; the run stops saying so.
- ``retainOnDelete``: deleting (or replacing) forgets the resource without touching the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import schema
from .program import Graph, Resource
from .state import StackState, StateResource
from .values import UNKNOWN, reveal

# Resource options the emulator models; any other option set on a resource stops the plan.
# (additionalSecretOutputs only marks outputs secret, which the recorded values already show.)
MODELLED_OPTIONS = {"protect", "dependsOn", "propertyDependencies", "deleteBeforeReplace", "ignoreChanges",
                    "replaceOnChanges", "retainOnDelete", "replaceWith", "replacementTrigger", "aliases",
                    "additionalSecretOutputs", "version"}
_OPTION_DEFAULTS = {"deletedWith": "", "importId": "", "provider": "", "customTimeouts": {}, "hooks": False,
                    "hideDiffs": []}
# The provider releases whose rules schema.py and docker_provider.py carry (requirements.txt pins them).
PROVIDER_VERSIONS = {"docker": "5.2.0", "random": "4.21.4", "tls": "5.6.2"}


class PlanError(Exception):
    """The plan cannot be made (an unmodelled option, a protected resource in the way)."""


@dataclass
class Step:
    op: str  # create | same | update | replace | delete
    urn: str
    type: str
    name: str
    new: Resource | None = None
    old: StateResource | None = None
    diff: schema.Diff | None = None
    delete_before_replace: bool = False
    # DBR: the dependents deleted before the old resource (and created again when they register).
    cascade: list[StateResource] = field(default_factory=list)
    cascaded_by: str = ""  # this replace is forced by the delete-before-replace of that URN
    reasons: list[str] = field(default_factory=list)
    retain: bool = False  # delete = forget (retainOnDelete)

    @property
    def engine_update(self) -> bool:
        """Does this update change the live object (or only the state)?"""
        return self.op == "update" and self.diff is not None and bool(self.diff.update_keys)

    def line(self) -> str:
        sym = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " "}[self.op]
        label = {"replace": "replace" + (" (delete-before-replace)" if self.delete_before_replace else
                                         " (create-before-delete)"),
                 "update": "update" if self.engine_update else "update (state only)"}.get(self.op, self.op)
        why = f"  [{'; '.join(self.reasons)}]" if self.reasons else ""
        return f" {sym:<2} {short_type(self.type):<28} {self.name:<34} {label}{why}"


@dataclass
class Plan:
    steps: list[Step]  # registration order (creates, updates, replacements, sames)
    deletes: list[Step]  # the delete phase, in the order the engine may run them
    stack: str = ""

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.op != "same"] + self.deletes

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.steps + self.deletes:
            if s.op == "delete" and s.old is not None and any(
                    x.op == "replace" and x.urn == s.urn for x in self.steps):
                continue  # the old copy of a create-before-delete replacement
            counts[s.op] = counts.get(s.op, 0) + 1
        return counts

    def render(self) -> str:
        if not self.changes:
            same = sum(1 for s in self.steps if s.op == "same")
            return f"stack {self.stack}: no changes ({same} resources unchanged)"
        lines = [f"stack {self.stack}: plan", f"    {'type':<28} {'name':<34} plan"]
        lines += [s.line() for s in self.steps if s.op != "same"]
        lines += [s.line() for s in self.deletes]
        c = self.counts()
        lines.append("Resources: " + ", ".join(
            f"{c[k]} to {k}" if k != "same" else f"{c[k]} unchanged"
            for k in ("create", "update", "replace", "delete", "same") if c.get(k)))
        return "\n".join(lines)


def short_type(typ: str) -> str:
    """docker:index/container:Container -> docker:Container."""
    pkg, _, rest = typ.partition(":")
    return f"{pkg}:{rest.rsplit(':', 1)[-1]}" if rest else typ


def _check_options(r: Resource) -> None:
    package = r.type.split(":", 1)[0]
    version = r.options.get("version")
    if r.custom and version and PROVIDER_VERSIONS.get(package) not in (None, version):
        raise PlanError(f"{r.name} uses pulumi-{package} {version}; the stack emulator models "
                        f"{PROVIDER_VERSIONS[package]} (requirements.txt pins it)")
    for key, value in r.options.items():
        if key in MODELLED_OPTIONS or value in (None, _OPTION_DEFAULTS.get(key)) or value == _OPTION_DEFAULTS.get(key):
            continue
        raise PlanError(f"{r.name} ({short_type(r.type)}) sets the resource option {key} = {value!r}, which the "
                        f"stack emulator does not model (stack_emulator/plan.py); remove it or model it first")


def _apply_ignore_changes(old: dict, new: dict, paths: list[str]) -> dict:
    """processIgnoreChanges: each ignored path takes its old value (top-level keys and a.b paths)."""
    result = dict(new)
    for path in paths:
        keys = path.replace("[", ".").replace("]", "").split(".")
        src, dst = old, result
        for k in keys[:-1]:
            if isinstance(src, dict) and k in src and isinstance(dst, dict) and k in dst:
                dst[k] = dict(dst[k]) if isinstance(dst[k], dict) else dst[k]
                src, dst = src[k], dst[k]
            else:
                break
        else:
            if isinstance(src, dict) and isinstance(dst, dict) and keys[-1] in src:
                dst[keys[-1]] = src[keys[-1]]
    return result


def _covered(paths: list[str], key: str) -> bool:
    """A replaceOnChanges path covers an input key: ``*`` covers every key (and ``#initerror``)."""
    return any(p == "*" or p == key or p.split(".")[0].split("[")[0] == key for p in paths)


def _provider_dbr(typ: str) -> bool:
    try:
        return schema.rules_for(typ).delete_before_replace
    except KeyError:
        return False


def dependents(root: StateResource, state: StackState, ignore: set[str]) -> list[StateResource]:
    """Every resource of the state that depends on ``root``, directly or through others, in state
    order (which is creation order, so dependencies come first): DependencyGraph.DependingOn."""
    found: set[str] = {root.urn}
    out = []
    for r in state.live():
        if r.urn in ignore or r.urn == root.urn:
            continue
        deps = r.dependencies | ({r.options["deletedWith"]} if r.options.get("deletedWith") else set())
        if deps & found:
            found.add(r.urn)
            out.append(r)
    return out


def cascade_replacements(root: StateResource, state: StackState, ignore: set[str]) -> list[StateResource]:
    """calculateDependentReplacements: the dependents a delete-before-replace of ``root`` forces out."""
    replace_set = {root.urn}
    out = []
    for d in dependents(root, state, ignore):
        if not d.custom:
            continue
        keys = [k for k, urns in d.options.get("propertyDependencies", {}).items() if set(urns) & replace_set]
        keys = [k for k in keys if k in d.inputs]
        if not keys:
            continue  # dependsOn only, or no input from the replaced resource: it stays
        changed = schema.diff(d.type, d.inputs, {**d.inputs, **{k: UNKNOWN for k in keys}})
        roc = d.options.get("replaceOnChanges", [])
        if changed.replace_keys or any(_covered(roc, k) for k in changed.changed):
            replace_set.add(d.urn)
            out.append(d)
    return out


def make_plan(state: StackState, graph: Graph, replace: set[str] = frozenset()) -> Plan:
    """The steps `pulumi up` takes to go from ``state`` to what ``graph`` registers. ``replace``:
    logical names or URNs to replace whatever their diff (`pulumi up --replace`: isTargetedReplace)."""
    unknown_targets = set(replace) - {r.name for r in graph.resources} - {r.urn for r in graph.resources}
    if unknown_targets:
        raise PlanError(f"--replace {', '.join(sorted(unknown_targets))}: no such resource in the program")
    steps: list[Step] = []
    replaced: set[str] = set()
    condemned: dict[str, str] = {}  # URN deleted by a DBR cascade -> the URN whose replacement did it
    processed: set[str] = set()
    for r in graph.resources:
        _check_options(r)
        old = state.get(r.urn)
        processed.add(r.urn)
        if old is None:
            steps.append(Step("create", r.urn, r.type, r.name, new=r))
            continue
        if r.urn in condemned:
            steps.append(Step("replace", r.urn, r.type, r.name, new=r, old=old, cascaded_by=condemned[r.urn],
                              delete_before_replace=True,
                              reasons=[f"deleted first by the replacement of {condemned[r.urn].rsplit('::', 1)[-1]}"]))
            replaced.add(r.urn)
            continue
        if not r.custom:
            steps.append(Step("same", r.urn, r.type, r.name, new=r, old=old))
            continue
        new_inputs = _apply_ignore_changes(old.inputs, r.inputs, r.options.get("ignoreChanges", []))
        d = schema.diff(r.type, old.inputs, new_inputs)
        roc = r.options.get("replaceOnChanges", [])
        reasons = []
        must_replace = bool(d.replace_keys)
        if must_replace:
            reasons.append(", ".join(d.replace_keys) + " (forces replacement)")
        if r.name in replace or r.urn in replace:
            must_replace = True
            reasons.append("--replace")
        roc_keys = [k for k in d.changed if _covered(roc, k) and k not in d.replace_keys]
        if roc_keys:
            must_replace = True
            reasons.append(", ".join(sorted(roc_keys)) + " (replaceOnChanges)")
        if old.init_errors and "*" in roc:
            must_replace = True
            reasons.append("its last create or update failed (replaceOnChanges ['*'] covers #initerror)")
        trigger_old, trigger_new = old.options.get("replacementTrigger"), r.options.get("replacementTrigger")
        if trigger_new is not None and trigger_old is not None and trigger_new != trigger_old:
            must_replace = True
            reasons.append("replacementTrigger changed")
        hit = [u for u in r.options.get("replaceWith", []) if u in replaced]
        if hit:
            must_replace = True
            reasons.append(f"replaceWith {', '.join(u.rsplit('::', 1)[-1] for u in hit)}")
        if must_replace:
            if r.options.get("protect") and old.options.get("protect"):
                raise PlanError(f"{r.name} ({short_type(r.type)}) is protected and would be replaced "
                                f"[{'; '.join(reasons)}]: remove protect first (pulumi state unprotect)")
            dbr = r.options.get("deleteBeforeReplace")
            if dbr is None:
                dbr = _provider_dbr(r.type)
            step = Step("replace", r.urn, r.type, r.name, new=r, old=old, diff=d, delete_before_replace=dbr,
                        reasons=reasons)
            if dbr:
                step.cascade = cascade_replacements(old, state, processed)
                for c in step.cascade:
                    if c.options.get("protect"):
                        raise PlanError(f"{c.name} is protected and would be deleted by the delete-before-replace "
                                        f"of {r.name}: remove protect first (pulumi state unprotect)")
                    condemned[c.urn] = r.urn
            replaced.add(r.urn)
            steps.append(step)
        elif d.changed or old.init_errors:
            words = [f"~{k}" + ("" if v == schema.UPDATE else " (recorded only)") for k, v in sorted(d.changed.items())]
            if old.init_errors:
                words.append("its last create or update failed: update to continue")
            steps.append(Step("update", r.urn, r.type, r.name, new=r, old=old, diff=d, reasons=words))
        else:
            steps.append(Step("same", r.urn, r.type, r.name, new=r, old=old))

    deletes = _delete_phase(state, steps, processed, condemned)
    return Plan(steps, deletes, state.stack)


def _delete_phase(state: StackState, steps: list[Step], registered: set[str], condemned: dict) -> list[Step]:
    """Resources no longer registered, pending deletes of an earlier failed run, and the old copies of
    create-before-delete replacements: dependents before what they depend on."""
    doomed: list[StateResource] = []
    for r in state.resources:
        if r.pending_delete:
            doomed.append(r)
        elif r.urn not in registered and r.urn not in condemned:
            doomed.append(r)
    cbd_old = {s.old.urn: s.old for s in steps if s.op == "replace" and not s.delete_before_replace and s.old}
    for r in doomed:
        if not r.pending_delete and r.options.get("protect"):
            raise PlanError(f"{r.name} ({short_type(r.type)}) is protected and the program no longer declares it: "
                            f"it would be deleted; unprotect it first (pulumi state unprotect)")
    order = [r for r in state.resources if r in doomed or r.urn in cbd_old and not r.pending_delete]
    # Reverse creation order: every dependent goes before what it depends on.
    return [Step("delete", r.urn, r.type, r.name, old=r, retain=bool(r.options.get("retainOnDelete")),
                 reasons=(["replaced: the old copy goes last"] if r.urn in cbd_old and not r.pending_delete else
                          ["left over from a failed run"] if r.pending_delete else []))
            for r in reversed(order)]


def destroy_plan(state: StackState, *, exclude: set[str] = frozenset()) -> Plan:
    """`pulumi destroy`: every resource, dependents first. ``exclude``: URNs kept (and everything they
    depend on, as ``--exclude-protected`` keeps the dependencies of what it keeps)."""
    keep = set(exclude)
    for r in reversed(state.resources):
        if r.urn in keep:
            keep |= r.dependencies
            if r.parent:
                keep.add(r.parent)
    protected = [r for r in state.live() if r.options.get("protect") and r.urn not in keep]
    if protected:
        raise PlanError("protected, so not destroyed: " + ", ".join(r.name for r in protected)
                        + " (EXCLUDE_PROTECTED=1 keeps them, like pulumi destroy --exclude-protected; "
                          "UNPROTECT=1 destroys them too, like pulumi state unprotect)")
    return Plan([], [Step("delete", r.urn, r.type, r.name, old=r, retain=bool(r.options.get("retainOnDelete")))
                     for r in reversed(state.resources) if r.urn not in keep], state.stack)


def inputs_equal(a: dict, b: dict) -> bool:
    return reveal(a) == reveal(b)
