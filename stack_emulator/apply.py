"""Carry out a plan on the engine the way Pulumi's step executor does.

- Steps run in parallel wherever the dependency graph allows: a resource's step starts once the
  steps of everything it depends on (``dependsOn`` and property dependencies) have finished
  (pulumi/pulumi ``pkg/resource/deploy/step_executor.go``).
- A delete-before-replace deletes the dependents it condemned, then the old resource, then creates
  the new one; a create-before-delete creates the new one and leaves the old one for the delete
  phase (``NewCreateReplacementStep`` … ``NewDeleteReplacementStep``).
- The delete phase runs after every other step has finished, dependents before their dependencies
  (``deployment_executor.go``: ``GenerateDeletes`` then ``ScheduleDeletes``).
- When a step fails, no further step starts and the delete phase does not run; what did happen is
  in the state (old copies of create-before-delete replacements stay, marked to be deleted by the
  next run, as Pulumi keeps them ``pending-delete``). Nothing is rolled back: volumes and data stay.
  An update that failed part-way (a Swarm service rolled back) is recorded with its new inputs and
  the error as init errors (``StatusPartialFailure``, step.go UpdateStep.Apply): the next run updates
  it again.
- A resource's inputs that use the id of a resource created in this run (values.id_marker) get the
  real id before its step runs, as the engine hands a created resource's id to its dependents.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .docker_provider import CreateFailed, DockerProvider, ProviderError, UpdateFailed
from .plan import Plan, Step
from .program import CONTAINER, NETWORK, SECRET, SERVICE, SERVICE_CONFIG, VOLUME, Resource
from .state import StackState, StateResource
from .values import resolve_ids

PARALLEL = 8
# Resources that exist on the engine (the others only compute values, or group children).
ENGINE_TYPES = {CONTAINER, NETWORK, VOLUME, SERVICE, SECRET, SERVICE_CONFIG}


class ApplyFailed(Exception):
    """One or more steps failed; the message lists each with the provider's reason."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _record(r: Resource, resource_id: str, outputs: dict, init_errors: list | None = None) -> StateResource:
    return StateResource(r.urn, r.type, r.name, r.custom, r.parent, resource_id, r.inputs, outputs, r.options,
                         init_errors or [])


@dataclass
class _Group:
    step: Step
    deps: set = field(default_factory=set)


def apply(plan: Plan, state: StackState, provider: DockerProvider) -> dict[str, float]:
    """Run ``plan``; returns seconds per step URN for the steps that touched the engine."""
    timings: dict[str, float] = {}
    groups = {s.urn: _Group(s) for s in plan.steps}
    for g in groups.values():
        if g.step.new is not None:
            opts = g.step.new.options
            deps = set(opts.get("dependsOn", []))
            for urns in opts.get("propertyDependencies", {}).values():
                deps.update(urns)
            g.deps = {d for d in deps if d in groups}
    _run_dag(groups, lambda g: _run_step(g.step, state, provider, timings))
    deletes = {f"{i}:{s.urn}": _Group(s) for i, s in enumerate(plan.deletes)}
    # A delete waits for the deletes of everything that depends on it.
    for key, g in deletes.items():
        for other_key, other in deletes.items():
            if other is not g and g.step.urn in other.step.old.dependencies:
                g.deps.add(other_key)
    _run_dag(deletes, lambda g: _delete(g.step, state, provider, timings))
    return timings


def _run_dag(groups: dict[str, _Group], work) -> None:
    done: set[str] = set()
    failures: list[str] = []
    running = {}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        pending = dict(groups)
        while pending or running:
            if not failures:
                for key, g in list(pending.items()):
                    if g.deps <= done:
                        running[pool.submit(work, g)] = key
                        del pending[key]
            if not running:
                if pending and not failures:
                    cycle = ", ".join(sorted(pending))
                    raise ApplyFailed(f"steps wait on each other: {cycle}")
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                key = running.pop(fut)
                try:
                    fut.result()
                    with lock:
                        done.add(key)
                except (ProviderError, ApplyFailed) as exc:
                    failures.append(f"{groups[key].step.name}: {exc}")
                except Exception as exc:  # noqa: BLE001 — an engine error is a failed step like any other
                    failures.append(f"{groups[key].step.name}: {type(exc).__name__}: {exc}")
            if failures and not running:
                break
    if failures:
        raise ApplyFailed("; ".join(failures))


def with_ids(r: Resource, state: StackState) -> Resource:
    """``r`` with the ids of the resources it uses, now that they exist (values.id_marker)."""
    def id_of(urn: str) -> str:
        found = state.get(urn)
        if found is None or not found.id:
            raise ApplyFailed(f"{r.name} uses the id of {urn.rsplit('::', 1)[-1]}, which does not exist")
        return found.id
    return dataclasses.replace(r, inputs=resolve_ids(r.inputs, id_of), outputs=resolve_ids(r.outputs, id_of))


def _run_step(step: Step, state: StackState, provider: DockerProvider, timings: dict) -> None:
    r = step.new
    started = time.monotonic()
    if step.op == "same":
        state.put(_record(r, step.old.id, step.old.outputs, []))
        return
    r = with_ids(r, state)
    if step.op == "update":
        try:
            outputs = provider.update(step.old, r, step.diff.update_keys if step.diff else [])
        except UpdateFailed as exc:
            state.put(_record(r, step.old.id, exc.outputs, [str(exc)]))
            raise
        state.put(_record(r, step.old.id, outputs))
        timings[step.urn] = time.monotonic() - started
        log(f" ~  {step.name}: updated" + (f" in {timings[step.urn]:.1f}s" if step.engine_update else " (state only)"))
        return
    if step.op == "replace" and not step.cascaded_by:
        if step.delete_before_replace:
            for dependent in reversed(step.cascade):
                _delete_now(dependent, state, provider, f"before the replacement of {step.name}")
            _delete_now(step.old, state, provider, "delete-before-replace")
        else:
            state.mark_pending_delete(step.old)
    _create(r, state, provider)
    timings[step.urn] = time.monotonic() - started
    if r.type in ENGINE_TYPES:
        log(f" {'+' if step.op == 'create' else '+-'}  {step.name}: {step.op}d in {timings[step.urn]:.1f}s")


def _create(r: Resource, state: StackState, provider: DockerProvider) -> None:
    try:
        resource_id, outputs = provider.create(r)
    except CreateFailed as exc:
        # The object exists; Pulumi keeps it with its init errors (a later run may replace it).
        state.put(_record(r, exc.resource_id, r.inputs, [str(exc)]))
        raise
    state.put(_record(r, resource_id, outputs))


def _delete_now(old: StateResource, state: StackState, provider: DockerProvider, why: str) -> None:
    started = time.monotonic()
    if not old.options.get("retainOnDelete"):
        provider.delete(old)
    state.remove(old)
    if old.type in ENGINE_TYPES:
        log(f" -  {old.name}: deleted ({why}) in {time.monotonic() - started:.1f}s")


def _delete(step: Step, state: StackState, provider: DockerProvider, timings: dict) -> None:
    started = time.monotonic()
    if not step.retain:
        provider.delete(step.old)
    state.remove(step.old)
    timings[step.urn + "#delete"] = time.monotonic() - started
    if step.type in ENGINE_TYPES:
        log(f" -  {step.name}: deleted in {timings[step.urn + '#delete']:.1f}s" + (" (retained)" if step.retain else ""))
