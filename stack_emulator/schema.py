"""The providers' rules for a changed input: replace the resource, update it in place, or only record
the new value — per resource type, taken from the providers' own schemas.

pulumi-docker 5.2.0 bundles terraform-provider-docker v4.5.0 (pulumi/pulumi-docker: the `upstream`
submodule at commit 5074970, "Prepare release v4.5.0"). In a Terraform schema an attribute with
``ForceNew: true`` makes any change a replacement; any other change is an update, which the
resource's Update function may or may not carry out on the live object. Citations name the file
under kreuzwerker/terraform-provider-docker ``internal/provider/`` (or the pulumi-docker file).

Each rule carries what the plan needs to diff like the provider does: the schema ``Default`` (an
unset input and its default are the same), ``Computed`` (an input the program stops setting keeps
the value in the state: no diff), and ``TypeSet`` (element order does not matter). Inside a block
the terraform-plugin-sdk also reads an unset attribute as its zero value ("", 0, false: helper/schema
schema.go diffString), so a nested attribute left out and one set to its zero value are the same.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Callable

from .values import is_unknown, reveal

REPLACE = "replace"  # ForceNew: delete and create
UPDATE = "update"    # the provider's Update changes the live object
RECORD = "record"    # an update that only the state sees: the live object keeps what it had

_MISSING = object()


@dataclass(frozen=True)
class Attr:
    on_change: str
    default: object = _MISSING
    computed: bool = False
    is_set: bool = False
    # Defaults inside each element of a block (a list/set of objects, or a one-item block).
    element_defaults: dict = field(default_factory=dict)
    # A block whose nested attributes do not all share its rule: the rule of each nested key (keys not
    # named take ``on_change``), and whether a change in the number of elements forces a new resource
    # (the terraform-plugin-sdk applies a block's ForceNew to its element count only:
    # helper/schema/schema.go diffList/diffSet, countSchema).
    nested: dict | None = None
    count_forces_new: bool = False
    # How the provider compares two values when it is not plain equality (a DiffSuppressFunc).
    canon: Callable | None = None


@dataclass(frozen=True)
class Rules:
    type: str
    attrs: dict
    source: str
    # The provider's own choice of replacement order; a resource's deleteBeforeReplace option
    # overrides it (pulumi/pulumi pkg/resource/deploy/step_generator.go, continueStepsFromDiff:
    # "The user can override the provider's decision by setting the deleteBeforeReplace field").
    delete_before_replace: bool = False
    dbr_source: str = ""
    # Inputs not in ``attrs``: "replace" for providers whose every input forces a new resource.
    others: str | None = None
    # What the provider's Read leaves in the state for the recorded inputs, where it differs from
    # them (the plan diffs the new inputs against the state, as the provider does).
    read_back: Callable[[dict], dict] | None = None


def _a(on_change, **kw) -> Attr:
    return Attr(on_change, **kw)


R, U, S = REPLACE, UPDATE, RECORD

CONTAINER = Rules(
    "docker:index/container:Container",
    source="resource_docker_container.go (schema), resource_docker_container_funcs.go "
           "(resourceDockerContainerUpdate: ContainerUpdate of restart, max_retry_count, cpu_shares, memory, "
           "memory_reservation, cpu_set, memory_swap, device_*; must_run false->true starts the container)",
    # pulumi-docker provider/resources.go: "docker_container": {DeleteBeforeReplace: true, ...}
    delete_before_replace=True,
    dbr_source="pulumi-docker provider/resources.go: docker_container DeleteBeforeReplace: true",
    attrs={
        "name": _a(R), "image": _a(R), "hostname": _a(R, computed=True), "domainname": _a(R),
        "command": _a(R, computed=True), "entrypoint": _a(R, computed=True), "user": _a(R),
        "dns": _a(R, is_set=True), "dnsOpts": _a(R, is_set=True), "dnsSearches": _a(R, is_set=True),
        "publishAllPorts": _a(R), "workingDir": _a(R), "capabilities": _a(R),
        "securityOpts": _a(R, computed=True, is_set=True), "runtime": _a(R, computed=True),
        "platform": _a(R, computed=True), "stopSignal": _a(R, computed=True), "stopTimeout": _a(R, computed=True),
        # mounts is ForceNew, but of its nested attributes only tmpfs_options and volume_options.subpath
        # are: another mount forces a new container, a changed source or target is only recorded.
        "mounts": _a(S, is_set=True, count_forces_new=True,
                     nested={"tmpfsOptions": _a(R), "volumeOptions": _a(S, nested={"subpath": _a(R)})}),
        "volumes": _a(R, is_set=True),
        "ports": _a(R, element_defaults={"ip": "0.0.0.0", "protocol": "tcp"}),
        "hosts": _a(R, is_set=True), "ulimits": _a(R, is_set=True), "envs": _a(R, computed=True, is_set=True),
        "privileged": _a(R), "devices": _a(R, is_set=True), "deviceRequests": _a(R),
        "labels": _a(R, computed=True, is_set=True), "shmSize": _a(R, computed=True),
        "logDriver": _a(R, computed=True), "logOpts": _a(R), "networkMode": _a(R, default="bridge"),
        "networksAdvanced": _a(R, is_set=True), "pidMode": _a(R), "usernsMode": _a(R),
        "uploads": _a(R, is_set=True, element_defaults={"executable": False}),
        "sysctls": _a(R), "ipcMode": _a(R, computed=True), "groupAdds": _a(R, is_set=True),
        "tty": _a(R, default=False), "stdinOpen": _a(R, default=False), "storageOpts": _a(R), "gpus": _a(R),
        "cpus": _a(R), "cgroupnsMode": _a(R), "cgroupParent": _a(R), "readOnly": _a(R, default=False),
        # resourceDockerContainerUpdate: ContainerUpdate(RestartPolicy, Resources)
        "restart": _a(U, default="no"), "maxRetryCount": _a(U), "cpuShares": _a(U), "memory": _a(U),
        "memoryReservation": _a(U, default=0), "cpuSet": _a(U), "memorySwap": _a(U),
        "deviceReadBps": _a(U, is_set=True), "deviceReadIops": _a(U, is_set=True),
        "deviceWriteBps": _a(U, is_set=True), "deviceWriteIops": _a(U, is_set=True),
        "mustRun": _a(U, default=True),
        # Not ForceNew and not handled by resourceDockerContainerUpdate: recorded, the container
        # keeps what it was created with (its healthcheck, tmpfs and init among them).
        "rm": _a(S, default=False), "start": _a(S, default=True), "wait": _a(S, default=False),
        "waitTimeout": _a(S, default=60), "attach": _a(S, default=False), "logs": _a(S, default=False),
        "removeVolumes": _a(S, default=True), "destroyGraceSeconds": _a(S),
        "healthcheck": _a(S, computed=True, element_defaults={"interval": "0s", "timeout": "0s", "startPeriod": "0s",
                                                              "startInterval": "0s", "retries": 0}),
        "tmpfs": _a(S), "init": _a(S, computed=True), "cpuPeriod": _a(S), "cpuQuota": _a(S),
        "containerReadRefreshTimeoutMilliseconds": _a(S, default=15000),
    },
)

NETWORK = Rules(
    "docker:index/network:Network",
    source="resource_docker_network.go (every attribute ForceNew, overlay ones too: driver, attachable, ingress, "
           "options such as encrypted; no UpdateContext)",
    attrs={"labels": _a(R, is_set=True), "ipamDriver": _a(R, default="default"), "driver": _a(R, computed=True),
           "options": _a(R, computed=True), "ipamConfigs": _a(R, computed=True, is_set=True),
           "internal": _a(R, computed=True), "attachable": _a(R), "ingress": _a(R), "ipv6": _a(R),
           "ipamOptions": _a(R), "checkDuplicate": _a(R)},
    others=REPLACE,
)

VOLUME = Rules(
    "docker:index/volume:Volume",
    source="resource_docker_volume.go (name, labels, driver, driver_opts ForceNew; Update only for cluster "
           "volumes' availability)",
    attrs={"name": _a(R, computed=True), "labels": _a(R, is_set=True), "driver": _a(R, computed=True),
           "driverOpts": _a(R)},
    others=REPLACE,
)

REMOTE_IMAGE = Rules(
    "docker:index/remoteImage:RemoteImage",
    source="resource_docker_image.go (name, pull_triggers, triggers, platform, build ForceNew; keep_locally and "
           "force_remove only recorded: resourceDockerImageUpdate re-reads the image)",
    attrs={"name": _a(R), "pullTriggers": _a(R, is_set=True), "triggers": _a(R), "platform": _a(R, default=""),
           "build": _a(R), "keepLocally": _a(S), "forceRemove": _a(S)},
    others=REPLACE,
)

# pulumi-docker's own Image resource (provider/provider.go): Check adds build.contextDigest; Diff
# reports any changed input as an update (DIFF_SOME without replace keys); Update rebuilds.
IMAGE = Rules(
    "docker:index/image:Image",
    source="pulumi-docker provider/provider.go (Check: build.contextDigest; Diff: every change an update; "
           "Update: build again; Delete: nothing)",
    attrs={},
    others=UPDATE,
)

# hashicorp/terraform-provider-random and -tls (which pulumi-random and pulumi-tls bundle): every
# argument has a RequiresReplace plan modifier, so any change generates a new value — except the
# certificate's early_renewal_hours, which is only recorded. (Not modelled: the certificate's
# ready_for_renewal, which makes a later run replace it inside the early renewal window.)
RANDOM_PASSWORD = Rules("random:index/randomPassword:RandomPassword",
                        source="terraform-provider-random internal/provider/resource_password.go (RequiresReplace)",
                        attrs={}, others=REPLACE)
PRIVATE_KEY = Rules("tls:index/privateKey:PrivateKey",
                    source="terraform-provider-tls internal/provider/resource_private_key.go (RequiresReplace)",
                    attrs={}, others=REPLACE)
SELF_SIGNED_CERT = Rules("tls:index/selfSignedCert:SelfSignedCert",
                         source="terraform-provider-tls internal/provider/resource_self_signed_cert.go "
                                "(RequiresReplace; early_renewal_hours without it)",
                         attrs={"earlyRenewalHours": _a(S, default=0)}, others=REPLACE)


# -- Swarm -----------------------------------------------------------------------------------------
# resource_docker_service.go. A service has an UpdateContext for every attribute that is not ForceNew:
# resourceDockerServiceUpdate sends the whole spec again in one ServiceUpdate, and the engine rolls
# the tasks when the task template changed. ForceNew: name, auth, mode's element count (not
# mode.replicated.replicas), container_spec.hosts and .sysctl, task_spec.networks_advanced (its
# name, id, aliases and driver_opts are ForceNew, so any change of the set replaces).
def _block(on_change: str = UPDATE, **kw) -> Attr:
    return Attr(on_change, nested=kw.pop("nested", {}), **kw)


_LABELS = _block(is_set=True)
_FILE_REFERENCE = {"fileUid": "0", "fileGid": "0", "fileMode": 0o444}
# update_config / rollback_config: the schema's defaults, and max_failure_ratio compared as a number
# (suppressEquivalentFloatRatio).
_UPDATE_DEFAULTS = {"parallelism": 1, "delay": "0s", "failureAction": "pause", "monitor": "5s",
                    "maxFailureRatio": "0.0", "order": "stop-first"}
_UPDATE_CONFIG = _block(element_defaults=_UPDATE_DEFAULTS, nested={"maxFailureRatio": _a(U, canon=float)})

_CONTAINER_SPEC = _block(nested={
    "labels": _LABELS,
    "privileges": _block(nested={"credentialSpec": _block(), "seLinuxContext": _block()}),
    "mounts": _block(is_set=True, nested={
        "bindOptions": _block(element_defaults={"propagation": "rprivate"}),
        "volumeOptions": _block(nested={"labels": _LABELS}),
        "tmpfsOptions": _block()}),
    "stopGracePeriod": _a(U, computed=True),
    "healthcheck": _block(computed=True, element_defaults={"interval": "0s", "timeout": "0s", "startPeriod": "0s",
                                                           "retries": 0}),
    "hosts": _block(REPLACE, is_set=True),
    "dnsConfig": _block(computed=True),
    "secrets": _block(is_set=True, element_defaults=_FILE_REFERENCE),
    "configs": _block(is_set=True, element_defaults=_FILE_REFERENCE),
    "isolation": _a(U, default="default"),
    "sysctl": _a(R),
    "init": _a(U, computed=True),
})


def _service_read_back(inputs: dict) -> dict:
    """resourceDockerServiceReadRefreshFunc: the state holds the service's mode even when the program
    left it out (flattenServiceMode: one block; the engine's default is one replica), and each network
    attachment by the id the engine resolved its target to, never by name (flattenTaskNetworksAdvanced
    sets ``id`` only; the engine stores network ids: moby daemon/cluster populateNetworkID). So a
    networks_advanced given by ``name`` differs from the state on every run and replaces the service —
    the schema's own warning ("Using the name attribute ... will lead to constant replacements")."""
    out = dict(inputs)
    if not out.get("mode"):
        out["mode"] = {"replicated": {"replicas": 1}}
    task = out.get("taskSpec")
    if isinstance(task, dict) and task.get("networksAdvanceds"):
        out["taskSpec"] = {**task, "networksAdvanceds": [
            {**{k: v for k, v in n.items() if k != "name"}, "id": n.get("id") or f"(id of network {n['name']})"}
            if isinstance(n, dict) and n.get("name") else n for n in task["networksAdvanceds"]]}
    return out


SERVICE = Rules(
    "docker:index/service:Service",
    source="resource_docker_service.go (schema), resource_docker_service_funcs.go (resourceDockerServiceUpdate: any "
           "change not ForceNew is one ServiceUpdate of the whole spec)",
    read_back=_service_read_back,
    attrs={
        "name": _a(R),
        "auth": _block(REPLACE),
        "labels": _block(computed=True, is_set=True),
        "taskSpec": _block(nested={
            "containerSpec": _CONTAINER_SPEC,
            "resources": _block(computed=True, nested={
                "limits": _block(),
                "reservation": _block(nested={"genericResources": _block(nested={
                    "namedResourcesSpecs": _a(U, is_set=True), "discreteResourcesSpecs": _a(U, is_set=True)})})}),
            "restartPolicy": _block(computed=True),
            "placement": _block(computed=True, nested={
                "constraints": _a(U, is_set=True), "prefs": _a(U, is_set=True),
                "platforms": _block(is_set=True)}),
            "forceUpdate": _a(U, computed=True),
            "runtime": _a(U, computed=True),
            "networksAdvanceds": _block(REPLACE, is_set=True, nested={
                "aliases": _a(R, is_set=True), "driverOpts": _a(R, is_set=True)}),
            "logDriver": _block(),
        }),
        # ForceNew on the block: only a change in its number of elements replaces (schema.go diffList).
        "mode": _block(computed=True, count_forces_new=True, nested={
            "replicated": _block(computed=True, element_defaults={"replicas": 1}),
            "global": _a(U, default=False)}),
        "updateConfig": _UPDATE_CONFIG,
        "rollbackConfig": _UPDATE_CONFIG,
        "endpointSpec": _block(computed=True, nested={
            "mode": _a(U, computed=True),
            "ports": _block(element_defaults={"protocol": "tcp", "publishMode": "ingress"},
                            nested={"publishedPort": _a(U, computed=True)})}),
        "convergeConfig": _block(element_defaults={"delay": "7s", "timeout": "3m"}),
    },
)

# Secrets and configs are immutable in Swarm: every attribute ForceNew, no UpdateContext.
SECRET = Rules(
    "docker:index/secret:Secret",
    source="resource_docker_secret.go (name, data, labels ForceNew; no UpdateContext)",
    attrs={"name": _a(R), "data": _a(R), "labels": _a(R, is_set=True)},
    others=REPLACE,
)
SERVICE_CONFIG = Rules(
    "docker:index/serviceConfig:ServiceConfig",
    source="resource_docker_config.go (name, data, data_raw, labels ForceNew; no UpdateContext)",
    attrs={"name": _a(R), "data": _a(R), "dataRaw": _a(R), "labels": _a(R, is_set=True)},
    others=REPLACE,
)

RULES = {r.type: r for r in (CONTAINER, NETWORK, VOLUME, REMOTE_IMAGE, IMAGE, RANDOM_PASSWORD, PRIVATE_KEY,
                             SELF_SIGNED_CERT, SERVICE, SECRET, SERVICE_CONFIG)}


def rules_for(typ: str) -> Rules:
    try:
        return RULES[typ]
    except KeyError:
        raise KeyError(f"resource type {typ} is not modelled by the stack emulator (stack_emulator/schema.py)") \
            from None


@dataclass
class Diff:
    """The provider's answer for one resource: which inputs changed and what each change means."""
    changed: dict  # input key -> REPLACE | UPDATE | RECORD
    unknown: set = field(default_factory=set)  # keys whose new value is known only after apply

    @property
    def replace_keys(self) -> list[str]:
        return sorted(k for k, v in self.changed.items() if v == REPLACE)

    @property
    def update_keys(self) -> list[str]:
        return sorted(k for k, v in self.changed.items() if v == UPDATE)

    @property
    def record_keys(self) -> list[str]:
        return sorted(k for k, v in self.changed.items() if v == RECORD)


_EMPTY = (None, "", 0, False, [], {})


def _is_block(attr: Attr | None) -> bool:
    return attr is not None and (attr.nested is not None or bool(attr.element_defaults))


def _norm(value, attr: Attr | None):
    """A value as the provider compares it: secrets revealed, whole floats as ints (the engine's
    numbers are doubles), each block element with its defaults filled and its zero values dropped,
    sets unordered."""
    value = reveal(value)
    if attr is not None and attr.canon is not None and value is not None and not is_unknown(value):
        value = attr.canon(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if _is_block(attr):
        if isinstance(value, list):
            value = [_norm_element(v, attr) for v in value]
        elif isinstance(value, dict):
            value = _norm_element(value, attr)
    elif isinstance(value, list):
        value = [_norm(v, None) for v in value]
    elif isinstance(value, dict):
        value = {k: _norm(v, None) for k, v in value.items()}
    if attr is not None and attr.is_set and isinstance(value, list):
        value = sorted(value, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _norm_element(element, attr: Attr):
    if not isinstance(element, dict) or is_unknown(element):
        return _norm(element, None)
    nested = attr.nested or {}
    defaults = {**attr.element_defaults, **{k: a.default for k, a in nested.items() if a.default is not _MISSING}}
    out = {}
    for k in set(element) | set(defaults):
        v = _norm(element.get(k, defaults.get(k)), nested.get(k))
        if v not in _EMPTY:  # unset and zero are the same inside a block (diffString)
            out[k] = v
    return out


def _canonical(value, attr: Attr | None):
    return json.dumps(_norm(value, attr), sort_keys=True)


def diff(typ: str, old: dict, new: dict) -> Diff:
    """Compare old and new inputs of one resource of type ``typ`` as its provider does."""
    rules = rules_for(typ)
    if rules.read_back is not None:
        old = rules.read_back(reveal(old))
    result = Diff({})
    for key in sorted(set(old) | set(new)):
        attr = rules.attrs.get(key)
        on_change = attr.on_change if attr is not None else rules.others
        if on_change is None:
            raise KeyError(f"{typ}: input {key!r} is not in the emulator's schema (stack_emulator/schema.py)")
        default = attr.default if attr is not None else _MISSING
        has_old, has_new = key in old, key in new
        if not has_new and attr is not None and attr.computed:
            continue  # Optional+Computed: the provider keeps the value it has
        old_v = old[key] if has_old else (None if default is _MISSING else default)
        new_v = new[key] if has_new else (None if default is _MISSING else default)
        unknown = is_unknown(new_v) or _has_unknown(new_v)
        if unknown and (attr is None or attr.nested is None or is_unknown(new_v)):
            result.changed[key] = on_change
            result.unknown.add(key)
            continue
        if old_v in (None, [], {}) and new_v in (None, [], {}):
            continue
        kind = _change(attr, old_v, new_v) if attr is not None else (
            on_change if _canonical(old_v, None) != _canonical(new_v, None) else None)
        if kind is not None:
            result.changed[key] = kind
            if unknown:  # a value inside the block is known only after apply
                result.unknown.add(key)
    return result


_SEVERITY = {None: 0, RECORD: 1, UPDATE: 2, REPLACE: 3}


def _elements(value) -> list:
    if isinstance(value, list):
        return value
    return [] if value in (None, {}) else [value]


def _change(attr: Attr, old, new) -> str | None:
    """What a difference between ``old`` and ``new`` of one attribute means (None: no difference).
    A block is compared element by element with each nested attribute's own rule, and a change in
    its number of elements is its own ForceNew (helper/schema schema.go diffList/diffSet)."""
    if _canonical(old, attr) == _canonical(new, attr):
        return None
    if _norm(old, attr) in _EMPTY and _norm(new, attr) in _EMPTY:
        return None  # unset and zero are the same (diffString)
    if attr.nested is None:
        return attr.on_change
    olds, news = _elements(old), _elements(new)
    worst = None
    if len(olds) != len(news):
        worst = REPLACE if attr.count_forces_new else attr.on_change
    if attr.is_set:  # the elements that left and came, paired in a stable order
        key = lambda v: _canonical(v, attr)  # noqa: E731
        new_keys, old_keys = {key(n) for n in news}, {key(o) for o in olds}
        gone = sorted((o for o in olds if key(o) not in new_keys), key=key)
        came = sorted((n for n in news if key(n) not in old_keys), key=key)
        pairs = zip_longest(gone, came, fillvalue={})
    else:
        pairs = zip_longest(olds, news, fillvalue={})
    for o, n in pairs:
        o, n = (o if isinstance(o, dict) else {}), (n if isinstance(n, dict) else {})
        for k in set(o) | set(n):
            sub = attr.nested.get(k, Attr(attr.on_change))
            if k not in n and sub.computed:
                continue  # Optional+Computed inside the block: the state keeps its value
            default = None if sub.default is _MISSING else sub.default
            kind = _change(sub, o.get(k, default), n.get(k, default))
            if _SEVERITY[kind] > _SEVERITY[worst]:
                worst = kind
    return worst


def _has_unknown(value) -> bool:
    from .values import has_unknown
    return has_unknown(value)
