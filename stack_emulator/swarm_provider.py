"""Create, update and delete Swarm services, secrets and configs the way pulumi-docker 5.2.0 does.

pulumi-docker bundles terraform-provider-docker v4.5.0; each function names the provider function it
follows (kreuzwerker/terraform-provider-docker ``internal/provider/…``). The engine is the one the
provider talks to: a Swarm manager (``docker:host``). DockerProvider hands these three types here, so
one provider object serves a stack as one pulumi-docker provider serves a program.

- ``service_spec`` is createServiceSpec (resource_docker_service_structures.go): the ServiceSpec the
  provider sends, in the Engine API's JSON. The provider reads every nested attribute of a block it
  was given, so an unset one is sent as its zero value where the API takes a pointer: an unset
  ``stop_grace_period`` is a grace period of 0 (tasks are killed at once), a ``restart_policy``
  block without ``delay`` restarts at once, ``init`` is false. The schema's defaults apply where
  the program leaves an attribute of a given block unset (update_config: parallelism 1,
  failure_action pause, monitor 5s, order stop-first — not docker-py's parallelism 0, continue).
- Durations are Go duration strings, sent as nanoseconds; secret values arrive revealed.
- ``converge_config``: create waits until every replica runs (resourceDockerServiceCreateRefreshFunc)
  and, when it does not in time, deletes the service and reports DidNotConvergeError; update waits
  for the update to complete and reports Swarm's rollback, a pause or a timeout as an error — the
  service is kept with the new inputs and init errors, so the next run updates it again.
- Secrets and configs: ``data`` is standard base64 (the schema validates it); the engine gets the
  decoded bytes.

Every input the program sets, at every depth, is translated here or stops the run naming its path.
"""
from __future__ import annotations

import base64
import binascii
import re
import time

import docker
import docker.errors
import requests

from .outputs import NOT_AVAILABLE, NOT_RUN
from .program import SECRET, SERVICE, SERVICE_CONFIG, Resource
from .values import reveal

SWARM_TYPES = {SERVICE, SECRET, SERVICE_CONFIG}


class SwarmError(Exception):
    """What the provider would report (or an input it cannot translate: its path)."""


class ServiceCreateFailed(SwarmError):
    """The service exists but its create did not finish (its read-back failed): Pulumi records it with
    init errors."""

    def __init__(self, message: str, service_id: str):
        super().__init__(message)
        self.service_id = service_id


class ServiceUpdateFailed(SwarmError):
    """The update failed (refused, rolled back, paused, timed out). The SDK's Apply returns the planned
    state with the error (helper/schema Resource.Apply: data.State()), so Pulumi keeps the new inputs
    with this error as init errors (pulumi-terraform-bridge Update: initializationError) and its next
    run updates the resource again."""


# -- Go's time.ParseDuration ---------------------------------------------------------------------------
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
          "h": 3600 * 10**9}
_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """Nanoseconds of a Go duration string ("1m30s", "500ms", "0"); SwarmError if Go would refuse it."""
    if text in ("0", "+0", "-0"):
        return 0
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise SwarmError(f"'{text}' is not a valid duration")
    return sign * round(sum(float(n) * _UNITS[u] for n, u in parts))


def _ns(text) -> int:
    """time.ParseDuration with the error ignored, as the provider does (validation ran first)."""
    try:
        return parse_duration(text) if text else 0
    except SwarmError:
        return 0


def go_duration(ns: int) -> str:
    """time.Duration.String (for messages)."""
    if ns == 0:
        return "0s"
    out, rest = "", ns
    hours, rest = divmod(rest, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    seconds = rest / 10**9
    return out + (f"{seconds:g}s")


def decode_base64(value: str, what: str) -> bytes:
    """validateStringIsBase64Encoded / base64.StdEncoding.DecodeString (which skips newlines)."""
    try:
        return base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise SwarmError(f"{what}: the value is not base64 decodeable (docker.Secret and docker.ServiceConfig "
                         f"take base64: base64.b64encode(data).decode())") from None


# -- what the emulator translates, per input path (anything else stops the run) ----------------------
_SERVICE_PATHS = {
    "": {"name", "labels", "taskSpec", "mode", "updateConfig", "rollbackConfig", "endpointSpec", "convergeConfig"},
    "labels": {"label", "value"},
    "taskSpec": {"containerSpec", "resources", "restartPolicy", "placement", "forceUpdate", "runtime",
                 "networksAdvanceds", "logDriver"},
    "taskSpec.containerSpec": {"image", "labels", "commands", "args", "hostname", "env", "dir", "user", "groups",
                               "privileges", "readOnly", "mounts", "stopSignal", "stopGracePeriod", "healthcheck",
                               "hosts", "dnsConfig", "secrets", "configs", "isolation", "sysctl", "capAdds",
                               "capDrops", "init"},
    "taskSpec.containerSpec.labels": {"label", "value"},
    "taskSpec.containerSpec.privileges": {"seLinuxContext"},
    "taskSpec.containerSpec.privileges.seLinuxContext": {"disable", "user", "role", "type", "level"},
    "taskSpec.containerSpec.mounts": {"target", "source", "type", "readOnly", "bindOptions", "volumeOptions",
                                      "tmpfsOptions"},
    "taskSpec.containerSpec.mounts.bindOptions": {"propagation"},
    "taskSpec.containerSpec.mounts.volumeOptions": {"noCopy", "labels", "driverName", "driverOptions"},
    "taskSpec.containerSpec.mounts.volumeOptions.labels": {"label", "value"},
    "taskSpec.containerSpec.mounts.tmpfsOptions": {"sizeBytes", "mode"},
    "taskSpec.containerSpec.healthcheck": {"tests", "interval", "timeout", "startPeriod", "retries"},
    "taskSpec.containerSpec.hosts": {"host", "ip"},
    "taskSpec.containerSpec.dnsConfig": {"nameservers", "searches", "options"},
    "taskSpec.containerSpec.secrets": {"secretId", "secretName", "fileName", "fileUid", "fileGid", "fileMode"},
    "taskSpec.containerSpec.configs": {"configId", "configName", "fileName", "fileUid", "fileGid", "fileMode"},
    "taskSpec.resources": {"limits", "reservation"},
    "taskSpec.resources.limits": {"nanoCpus", "memoryBytes"},
    "taskSpec.resources.reservation": {"nanoCpus", "memoryBytes", "genericResources"},
    "taskSpec.resources.reservation.genericResources": {"namedResourcesSpecs", "discreteResourcesSpecs"},
    "taskSpec.restartPolicy": {"condition", "delay", "maxAttempts", "window"},
    "taskSpec.placement": {"constraints", "prefs", "maxReplicas", "platforms"},
    "taskSpec.placement.platforms": {"architecture", "os"},
    "taskSpec.networksAdvanceds": {"name", "id", "aliases", "driverOpts"},
    "taskSpec.logDriver": {"name", "options"},
    "mode": {"replicated", "global"},
    "mode.replicated": {"replicas"},
    "updateConfig": {"parallelism", "delay", "failureAction", "monitor", "maxFailureRatio", "order"},
    "rollbackConfig": {"parallelism", "delay", "failureAction", "monitor", "maxFailureRatio", "order"},
    "endpointSpec": {"mode", "ports"},
    "endpointSpec.ports": {"name", "protocol", "targetPort", "publishedPort", "publishMode"},
    "convergeConfig": {"delay", "timeout"},
}
# Blocks whose value is a map (any key), not an object of known attributes.
_MAPS = {"taskSpec.containerSpec.env", "taskSpec.containerSpec.sysctl", "taskSpec.logDriver.options",
         "taskSpec.containerSpec.mounts.volumeOptions.driverOptions"}
_SECRET_PATHS = {"": {"name", "data", "labels"}, "labels": {"label", "value"}}
_CONFIG_PATHS = {"": {"name", "data", "dataRaw", "labels"}, "labels": {"label", "value"}}
# Inputs the emulator refuses with a reason rather than a bare "not translated".
_REFUSED = {
    "auth": "registry credentials for the service's image pull: no registry is reachable here, so the "
            "emulator cannot show what they would do",
    "taskSpec.containerSpec.privileges.credentialSpec": "a Windows-only credential spec",
}
# validateStringMatchesPattern of the schema, by path.
_PATTERNS = {
    "taskSpec.containerSpec.mounts.type": r"^(bind|volume|tmpfs)$",
    "taskSpec.containerSpec.mounts.bindOptions.propagation": r"^(private|rprivate|shared|rshared|slave|rslave)$",
    "taskSpec.containerSpec.isolation": r"^(default|process|hyperv)$",
    "taskSpec.restartPolicy.condition": r"^(none|on-failure|any)$",
    "taskSpec.runtime": r"^(container|plugin)$",
    "updateConfig.failureAction": r"^(pause|continue|rollback)$",
    "updateConfig.order": r"^(stop-first|start-first)$",
    "rollbackConfig.failureAction": r"(pause|continue)",
    "rollbackConfig.order": r"(stop-first|start-first)",
    "endpointSpec.mode": r"^(vip|dnsrr)$",
    "endpointSpec.ports.protocol": r"^(tcp|udp|sctp)$",
    "endpointSpec.ports.publishMode": r"^(host|ingress)$",
}
# validateDurationGeq0 of the schema, by path.
_DURATIONS = {"taskSpec.containerSpec.stopGracePeriod", "taskSpec.containerSpec.healthcheck.interval",
              "taskSpec.containerSpec.healthcheck.timeout", "taskSpec.containerSpec.healthcheck.startPeriod",
              "taskSpec.restartPolicy.delay", "taskSpec.restartPolicy.window", "updateConfig.delay",
              "updateConfig.monitor", "rollbackConfig.delay", "rollbackConfig.monitor", "convergeConfig.delay",
              "convergeConfig.timeout"}


def _walk(where: str, value, paths: dict, prefix: str = "", shown: str = "") -> None:
    """Every key of ``value`` is a translated path; patterns and durations as the schema validates.
    ``prefix`` is the schema path ("a.b"), ``shown`` the same with list indices ("a[0].b")."""
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        at = f"{shown}[{i}]" if isinstance(value, list) else shown
        for key, sub in item.items():
            path = f"{prefix}.{key}" if prefix else key
            name = f"{at}.{key}" if at else key
            if path in _REFUSED:
                raise SwarmError(f"{where}: input {name} is not translated by the stack emulator: {_REFUSED[path]}")
            if key not in paths.get(prefix, set()):
                raise SwarmError(f"{where}: input {name} is not translated by the stack emulator "
                                 f"(stack_emulator/swarm_provider.py); translate it there first")
            if path in _PATTERNS and sub not in (None, "") and not re.search(_PATTERNS[path], str(sub)):
                raise SwarmError(f"{where}: {name} = {sub!r} does not match {_PATTERNS[path]}")
            if path in _DURATIONS and sub not in (None, ""):
                if parse_duration(str(sub)) < 0:
                    raise SwarmError(f"{where}: {name}: '{sub}' duration must not be negative")
            if path in paths and path not in _MAPS:
                _walk(where, sub, paths, path, name)


def check(r: Resource) -> None:
    """Every input of ``r`` is one the emulator carries to the engine, and valid as the provider's
    schema validates it (its ValidateDiagFunc, ConflictsWith, ExactlyOneOf), or SwarmError."""
    inputs = reveal(r.inputs)
    where = f"{r.name} ({r.type.rsplit(':', 1)[-1]})"
    if r.type == SERVICE:
        _walk(where, inputs, _SERVICE_PATHS)
        mode = inputs.get("mode") or {}
        if mode.get("global") and mode.get("replicated"):
            raise SwarmError(f"{where}: mode.global conflicts with mode.replicated")
        if mode.get("global") and inputs.get("convergeConfig") is not None:
            raise SwarmError(f"{where}: mode.global conflicts with convergeConfig (the provider converges "
                             f"replicated services only)")
        for i, n in enumerate((inputs.get("taskSpec") or {}).get("networksAdvanceds") or []):
            if not (n.get("id") or n.get("name")):
                raise SwarmError(f"{where}: taskSpec.networksAdvanceds[{i}]: network 'name' or 'id' must be specified")
        ratio_paths = [("updateConfig", inputs.get("updateConfig")), ("rollbackConfig", inputs.get("rollbackConfig"))]
        for name, block in ratio_paths:
            if block and block.get("maxFailureRatio") not in (None, ""):
                try:
                    ratio = float(block["maxFailureRatio"])
                except ValueError:
                    raise SwarmError(f"{where}: {name}.maxFailureRatio '{block['maxFailureRatio']}' is not a float") \
                        from None
                if not 0.0 <= ratio <= 1.0:
                    raise SwarmError(f"{where}: {name}.maxFailureRatio '{ratio}' has to be between 0.0 and 1.0")
    elif r.type == SECRET:
        _walk(where, inputs, _SECRET_PATHS)
        decode_base64(inputs.get("data", ""), f"{where}: data")
    elif r.type == SERVICE_CONFIG:
        _walk(where, inputs, _CONFIG_PATHS)
        if bool(inputs.get("data")) == bool(inputs.get("dataRaw")):
            raise SwarmError(f"{where}: exactly one of data and dataRaw must be set")
        if inputs.get("data"):
            decode_base64(inputs["data"], f"{where}: data")


# -- createServiceSpec ----------------------------------------------------------------------------
def _one(value) -> dict:
    """A MaxItems-1 block as the program registers it (an object, or a list of one)."""
    if isinstance(value, list):
        return value[0] if value else {}
    return value or {}


def _labels(items) -> dict:
    return {x["label"]: x["value"] for x in items or []}


def _int(value) -> int:
    return int(value or 0)


def _file_reference(ref: dict) -> dict:
    # fileUid/fileGid/fileMode: the schema's defaults "0", "0", 0o444.
    return {"Name": ref["fileName"], "UID": str(ref.get("fileUid", "0")), "GID": str(ref.get("fileGid", "0")),
            "Mode": _int(ref.get("fileMode", 0o444))}


def _container_spec(cs: dict) -> dict:
    """createContainerSpec."""
    spec = {"Image": cs.get("image", "")}
    if cs.get("labels"):
        spec["Labels"] = _labels(cs["labels"])
    for key, api in (("commands", "Command"), ("args", "Args"), ("groups", "Groups"), ("capAdds", "CapabilityAdd"),
                     ("capDrops", "CapabilityDrop")):
        if cs.get(key):
            spec[api] = list(cs[key])
    for key, api in (("hostname", "Hostname"), ("dir", "Dir"), ("user", "User"), ("stopSignal", "StopSignal")):
        if cs.get(key):
            spec[api] = cs[key]
    if cs.get("env"):
        spec["Env"] = [f"{k}={v}" for k, v in sorted(cs["env"].items())]
    privileges = _one(cs.get("privileges"))
    if privileges:
        se = _one(privileges.get("seLinuxContext"))
        spec["Privileges"] = {"SELinuxContext": {"Disable": bool(se.get("disable")), "User": se.get("user", ""),
                                                 "Role": se.get("role", ""), "Type": se.get("type", ""),
                                                 "Level": se.get("level", "")}} if se else {}
    if cs.get("readOnly"):
        spec["ReadOnly"] = True
    if cs.get("mounts"):
        spec["Mounts"] = [_mount(m) for m in cs["mounts"]]
    # stop_grace_period is read even when unset: ParseDuration("") -> 0, sent as a pointer to 0.
    spec["StopGracePeriod"] = _ns(cs.get("stopGracePeriod", ""))
    # healthcheck: always a HealthConfig, empty (the image's own) when the program sets none.
    hc = _one(cs.get("healthcheck"))
    health = {}
    if hc.get("tests"):
        health["Test"] = list(hc["tests"])
    for key, api in (("interval", "Interval"), ("timeout", "Timeout"), ("startPeriod", "StartPeriod")):
        if _ns(hc.get(key, "0s")):
            health[api] = _ns(hc[key])
    if _int(hc.get("retries")):
        health["Retries"] = _int(hc["retries"])
    spec["Healthcheck"] = health
    if cs.get("hosts"):
        # extraHostsSetToServiceExtraHosts: "IP HOSTNAME"
        spec["Hosts"] = [f"{h['ip']} {h['host']}" for h in cs["hosts"]]
    dns = _one(cs.get("dnsConfig"))
    spec["DNSConfig"] = {k: list(dns[key]) for key, k in (("nameservers", "Nameservers"), ("searches", "Search"),
                                                          ("options", "Options")) if dns.get(key)}
    if cs.get("secrets"):
        spec["Secrets"] = [{"SecretID": s["secretId"], "SecretName": s.get("secretName", ""),
                            "File": _file_reference(s)} for s in cs["secrets"]]
    if cs.get("configs"):
        spec["Configs"] = [{"ConfigID": c["configId"], "ConfigName": c.get("configName", ""),
                            "File": _file_reference(c)} for c in cs["configs"]]
    spec["Isolation"] = cs.get("isolation", "default")
    if cs.get("sysctl"):
        spec["Sysctls"] = {k: str(v) for k, v in cs["sysctl"].items()}
    # supportsServiceContainerInit (API >= 1.37): init is read even when unset, so false.
    spec["Init"] = bool(cs.get("init", False))
    return spec


def _mount(m: dict) -> dict:
    mount = {"Type": m["type"], "Target": m["target"], "Source": m.get("source", "")}
    if m.get("readOnly"):
        mount["ReadOnly"] = True
    if m.get("bindOptions") is not None:  # a given block: its propagation defaults to rprivate
        mount["BindOptions"] = {"Propagation": _one(m["bindOptions"]).get("propagation", "rprivate")}
    vol = _one(m.get("volumeOptions"))
    if vol:
        options = {}
        if vol.get("noCopy"):
            options["NoCopy"] = True
        if vol.get("labels"):
            options["Labels"] = _labels(vol["labels"])
        if vol.get("driverName") or vol.get("driverOptions"):
            options["DriverConfig"] = {"Name": vol.get("driverName", ""),
                                       **({"Options": dict(vol["driverOptions"])} if vol.get("driverOptions") else {})}
        mount["VolumeOptions"] = options
    tmpfs = _one(m.get("tmpfsOptions"))
    if tmpfs:
        mount["TmpfsOptions"] = {k: _int(tmpfs[key]) for key, k in (("sizeBytes", "SizeBytes"), ("mode", "Mode"))
                                 if _int(tmpfs.get(key))}
    return mount


_CPU_MEMORY = (("nanoCpus", "NanoCPUs"), ("memoryBytes", "MemoryBytes"))


def _resources(res: dict) -> dict:
    """createResources: always sent, {} when unset."""
    out = {}
    limits = _one(res.get("limits"))
    if limits:
        out["Limits"] = {k: _int(limits.get(key)) for key, k in _CPU_MEMORY if _int(limits.get(key))}
    reservation = _one(res.get("reservation"))
    if reservation:
        r = {k: _int(reservation.get(key)) for key, k in _CPU_MEMORY if _int(reservation.get(key))}
        generic = _one(reservation.get("genericResources"))
        kinds = [{"NamedResourceSpec": {"Kind": s.split("=")[0], "Value": s.split("=")[1]}}
                 for s in generic.get("namedResourcesSpecs") or []]
        kinds += [{"DiscreteResourceSpec": {"Kind": s.split("=")[0], "Value": int(s.split("=")[1])}}
                  for s in generic.get("discreteResourcesSpecs") or []]
        if kinds:
            r["GenericResources"] = kinds
        out["Reservations"] = r
    return out


def _restart_policy(rp: dict) -> dict:
    """createRestartPolicy: {} when unset (the engine's defaults: any, 5s); a given block is read
    whole, so its unset delay, max_attempts and window are sent as 0."""
    if not rp:
        return {}
    policy = {"Delay": _ns(rp.get("delay", "")), "MaxAttempts": _int(rp.get("maxAttempts")),
              "Window": _ns(rp.get("window", ""))}
    if rp.get("condition"):
        policy["Condition"] = rp["condition"]
    return policy


def _placement(p: dict) -> dict:
    out = {}
    if p.get("constraints"):
        out["Constraints"] = list(p["constraints"])
    if p.get("prefs"):
        out["Preferences"] = [{"Spread": {"SpreadDescriptor": s}} for s in p["prefs"]]
    if p.get("platforms"):
        out["Platforms"] = [{"Architecture": x["architecture"], "OS": x["os"]} for x in p["platforms"]]
    if _int(p.get("maxReplicas")):
        out["MaxReplicas"] = _int(p["maxReplicas"])
    return out


def _networks(networks: list) -> list:
    """createServiceAdvancedNetworks: the target is the id, else the name."""
    out = []
    for n in networks:
        attachment = {"Target": n.get("id") or n["name"]}
        if n.get("aliases"):
            attachment["Aliases"] = list(n["aliases"])
        if n.get("driverOpts"):
            # stringSetToMapStringString: "key=value" entries
            attachment["DriverOpts"] = dict(o.split("=", 1) if "=" in o else (o, "") for o in n["driverOpts"])
        out.append(attachment)
    return out


def _update_config(block: dict) -> dict:
    """createUpdateOrRollbackConfig, with the schema's defaults for what the program leaves unset."""
    return {"Parallelism": _int(block.get("parallelism", 1)), "Delay": _ns(block.get("delay", "0s")),
            "FailureAction": block.get("failureAction", "pause"), "Monitor": _ns(block.get("monitor", "5s")),
            "MaxFailureRatio": float(block.get("maxFailureRatio", "0.0") or 0),
            "Order": block.get("order", "stop-first")}


def _mode(mode: dict) -> dict:
    """createServiceMode: {} (the engine's default, one replica) when unset."""
    out = {}
    replicated = mode.get("replicated")
    if replicated is not None:
        out["Replicated"] = {"Replicas": _int(_one(replicated).get("replicas", 1))}
    if mode.get("global"):
        out["Global"] = {}
    return out


def service_spec(inputs: dict) -> dict:
    """createServiceSpec: the ServiceSpec of a docker.Service's inputs (secret values revealed), in the
    Engine API's JSON (durations in nanoseconds)."""
    inputs = reveal(inputs)
    task = _one(inputs.get("taskSpec"))
    template = {"ContainerSpec": _container_spec(_one(task.get("containerSpec"))),
                "Resources": _resources(_one(task.get("resources"))),
                "RestartPolicy": _restart_policy(_one(task.get("restartPolicy"))),
                "Placement": _placement(_one(task.get("placement"))),
                "ForceUpdate": _int(task.get("forceUpdate"))}
    if task.get("runtime"):
        template["Runtime"] = task["runtime"]
    if task.get("networksAdvanceds"):
        template["Networks"] = _networks(task["networksAdvanceds"])
    log_driver = _one(task.get("logDriver"))
    if log_driver:
        template["LogDriver"] = {"Name": log_driver.get("name", ""), "Options": dict(log_driver.get("options") or {})}
    endpoint = _one(inputs.get("endpointSpec"))
    spec = {
        "Name": inputs["name"],
        "Labels": _labels(inputs.get("labels")),
        "TaskTemplate": template,
        "Mode": _mode(_one(inputs.get("mode"))),
        # createServiceEndpointSpec: always sent; mode "" leaves the engine's default (vip).
        "EndpointSpec": {"Mode": endpoint.get("mode", ""), "Ports": [
            {"Name": p.get("name", ""), "Protocol": p.get("protocol", "tcp"), "TargetPort": _int(p["targetPort"]),
             "PublishedPort": _int(p.get("publishedPort")), "PublishMode": p.get("publishMode", "ingress")}
            for p in endpoint.get("ports") or []]},
    }
    if inputs.get("updateConfig") is not None:
        spec["UpdateConfig"] = _update_config(_one(inputs["updateConfig"]))
    if inputs.get("rollbackConfig") is not None:
        spec["RollbackConfig"] = _update_config(_one(inputs["rollbackConfig"]))
    return spec


# -- the state an update starts from -----------------------------------------------------------------
def _short(ns) -> str:
    """shortDur: time.Duration.String without a trailing "0s"/"0m" ("3m", "1h", "1m30s")."""
    text = go_duration(int(ns))
    if text.endswith("m0s"):
        text = text[:-2]
    if text.endswith("h0m"):
        text = text[:-2]
    return text


def read_state(service: dict) -> dict:
    """resourceDockerServiceReadRefreshFunc: the Optional+Computed attributes as the provider's Read
    records them from the engine (flattenTaskSpec, flattenContainerSpec, flattenServiceMode, …)."""
    spec = service["Spec"]
    task, cs = spec.get("TaskTemplate", {}), spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    container = {}
    if cs.get("StopGracePeriod") is not None:
        container["stopGracePeriod"] = _short(cs["StopGracePeriod"])
    if cs.get("Healthcheck") is not None:
        hc = cs["Healthcheck"]
        container["healthcheck"] = {**({"tests": hc["Test"]} if hc.get("Test") else {}),
                                    "interval": _short(hc.get("Interval", 0)), "timeout": _short(hc.get("Timeout", 0)),
                                    "startPeriod": _short(hc.get("StartPeriod", 0)), "retries": hc.get("Retries", 0)}
    if cs.get("DNSConfig") is not None:
        dns = cs["DNSConfig"]
        container["dnsConfig"] = {k: dns[api] for api, k in (("Nameservers", "nameservers"), ("Search", "searches"),
                                                             ("Options", "options")) if dns.get(api)}
    if cs.get("Init") is not None:
        container["init"] = cs["Init"]
    out_task = {"containerSpec": container, "forceUpdate": task.get("ForceUpdate", 0)}
    if task.get("Runtime"):
        out_task["runtime"] = task["Runtime"]
    if task.get("Resources") is not None:
        res = task["Resources"]
        out_task["resources"] = {
            **({"limits": {"nanoCpus": res["Limits"].get("NanoCPUs", 0),
                           "memoryBytes": res["Limits"].get("MemoryBytes", 0)}} if res.get("Limits") else {}),
            **({"reservation": {"nanoCpus": res["Reservations"].get("NanoCPUs", 0),
                                "memoryBytes": res["Reservations"].get("MemoryBytes", 0)}}
               if res.get("Reservations") else {})}
    if task.get("RestartPolicy") is not None:
        rp = task["RestartPolicy"]
        out_task["restartPolicy"] = {**({"condition": rp["Condition"]} if rp.get("Condition") else {}),
                                     **({"delay": _short(rp["Delay"])} if rp.get("Delay") is not None else {}),
                                     **({"maxAttempts": rp["MaxAttempts"]}
                                        if rp.get("MaxAttempts") is not None else {}),
                                     **({"window": _short(rp["Window"])} if rp.get("Window") is not None else {})}
    if task.get("Placement") is not None:
        pl = task["Placement"]
        out_task["placement"] = {
            **({"constraints": pl["Constraints"]} if pl.get("Constraints") else {}),
            **({"prefs": [x["Spread"]["SpreadDescriptor"] for x in pl["Preferences"]]}
               if pl.get("Preferences") else {}),
            **({"platforms": [{"architecture": x.get("Architecture", ""), "os": x.get("OS", "")}
                              for x in pl["Platforms"]]} if pl.get("Platforms") else {}),
            "maxReplicas": pl.get("MaxReplicas", 0)}
    mode = spec.get("Mode", {})
    endpoint = service.get("Endpoint", {}).get("Spec") or spec.get("EndpointSpec") or {}
    return {"labels": [{"label": k, "value": v} for k, v in sorted((spec.get("Labels") or {}).items())],
            "mode": {**({"replicated": {"replicas": mode["Replicated"].get("Replicas", 1)}}
                        if mode.get("Replicated") is not None else {}), "global": mode.get("Global") is not None},
            "endpointSpec": {"mode": endpoint.get("Mode", "")},
            "taskSpec": out_task}


# Optional+Computed attributes: unset in the program, the planned value is the state's (Terraform's
# ProposedNewState), so an update sends what the provider last read back.
_COMPUTED = {"": ("labels", "mode", "endpointSpec"), "endpointSpec": ("mode",),
             "taskSpec": ("resources", "restartPolicy", "placement", "forceUpdate", "runtime"),
             "taskSpec.containerSpec": ("stopGracePeriod", "healthcheck", "dnsConfig", "init")}


def planned_inputs(inputs: dict, state: dict, prefix: str = "") -> dict:
    """``inputs`` with every Optional+Computed attribute they leave unset taken from ``state``."""
    out = dict(inputs)
    for key in _COMPUTED.get(prefix, ()):
        if out.get(key) is None and key in state:
            out[key] = state[key]
    for key in ("endpointSpec", "taskSpec", "containerSpec"):
        path = f"{prefix}.{key}" if prefix else key
        if path in _COMPUTED and isinstance(out.get(key), dict) and isinstance(state.get(key), dict):
            out[key] = planned_inputs(out[key], state[key], path)
    return out


# -- converging (resource_docker_service_funcs.go) ----------------------------------------------------
# numberedStates: the order of a task's states.
_TASK_STATES = {s: i for i, s in enumerate(("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready",
                                            "starting", "running", "complete", "shutdown", "failed", "rejected"), 1)}


def running_replicas(tasks: list[dict], active_nodes: set[str]) -> int:
    """replicatedConsoleLogUpdater.update: per slot the task with the lowest desired (then observed)
    state, on an active node, counted when it is running and meant to run."""
    by_slot: dict = {}
    for t in tasks:
        desired, state = _TASK_STATES.get(t.get("DesiredState"), 0), _TASK_STATES.get(t["Status"]["State"], 0)
        if desired == 0 or state == 0:
            continue
        slot = t.get("Slot", 0)
        if slot in by_slot:
            held = by_slot[slot]
            held_desired = _TASK_STATES[held["DesiredState"]]
            if held_desired < desired:
                continue
            if held_desired == desired and _TASK_STATES[held["Status"]["State"]] <= state:
                continue
        if t.get("NodeID") and t["NodeID"] not in active_nodes:
            continue
        by_slot[slot] = t
    running = _TASK_STATES["running"]
    return sum(1 for t in by_slot.values()
               if _TASK_STATES[t["DesiredState"]] <= running and t["Status"]["State"] == "running")


class _Timeout(Exception):
    pass


def wait_for_state(refresh, *, delay: float, timeout: float, min_timeout: float = 5.0, sleep=time.sleep,
                   clock=time.monotonic) -> str:
    """helper/retry StateChangeConf.WaitForStateContext (terraform-plugin-sdk v2.40.1): wait ``delay``,
    refresh, then refresh again after max(backoff, MinTimeout) capped at 10 s (so 5 s, then 10 s, ...)
    until ``refresh`` returns a target state (True) or raises; _Timeout after ``timeout`` in all."""
    deadline = clock() + timeout
    sleep(min(delay, max(deadline - clock(), 0)))
    wait = 0.1
    while True:
        if clock() >= deadline:
            raise _Timeout()
        state, done = refresh()
        if done:
            return state
        wait = min(max(wait * 2, min_timeout), 10.0)
        sleep(min(wait, max(deadline - clock(), 0)))


class SwarmProvider:
    """The Swarm resources of pulumi-docker on ``client``'s engine (a Swarm manager)."""

    def __init__(self, client: docker.DockerClient, *, sleep=time.sleep):
        self.client = client
        self.sleep = sleep

    # -- create -------------------------------------------------------------------------------------
    def create(self, r: Resource) -> tuple[str, dict]:
        inputs = reveal(r.inputs)
        if r.type == SECRET:
            return self._create_secret(inputs), dict(r.inputs)
        if r.type == SERVICE_CONFIG:
            return self._create_config(inputs), dict(r.inputs)
        image = inputs["taskSpec"]["containerSpec"]["image"]
        if image.startswith(NOT_AVAILABLE):  # no local stand-in (Grafana): recorded as not run
            ref = image[len(NOT_AVAILABLE):]
            return "", {**r.inputs, NOT_RUN: f"no local stand-in of {ref}"}
        return self._create_service(inputs), dict(r.inputs)

    def _create_secret(self, inputs: dict) -> str:
        """resourceDockerSecretCreate: SecretCreate with the decoded data."""
        data = decode_base64(inputs["data"], f"secret {inputs['name']}: data")
        try:
            labels = _labels(inputs.get("labels")) or None
            return self.client.api.create_secret(inputs["name"], data, labels=labels)["ID"]
        except docker.errors.APIError as exc:
            raise SwarmError(f"secret {inputs['name']}: {exc.explanation or exc}") from None

    def _create_config(self, inputs: dict) -> str:
        """resourceDockerConfigCreate: ConfigCreate with data_raw, else the decoded data."""
        data = inputs["dataRaw"].encode() if inputs.get("dataRaw") else decode_base64(
            inputs["data"], f"config {inputs['name']}: data")
        try:
            labels = _labels(inputs.get("labels")) or None
            return self.client.api.create_config(inputs["name"], data, labels=labels)["ID"]
        except docker.errors.APIError as exc:
            raise SwarmError(f"config {inputs['name']}: {exc.explanation or exc}") from None

    def _create_service(self, inputs: dict) -> str:
        """resourceDockerServiceCreate: ServiceCreate; with converge_config, wait until every replica
        runs, else delete the service (deleteService) and report DidNotConvergeError."""
        spec = service_spec(inputs)
        try:
            service_id = self._send_create(spec)
        except docker.errors.APIError as exc:
            raise SwarmError(f"service {inputs['name']}: {exc.explanation or exc}") from None
        converge = _one(inputs.get("convergeConfig")) if inputs.get("convergeConfig") is not None else None
        if converge is not None:
            timeout = _ns(converge.get("timeout", "3m"))
            try:
                wait_for_state(lambda: self._create_refresh(service_id), delay=_ns(converge.get("delay", "7s")) / 1e9,
                               timeout=timeout / 1e9, sleep=self.sleep)
            except (_Timeout, SwarmError) as exc:
                tail = self._task_errors(service_id)
                self._delete_service(service_id, inputs)
                if isinstance(exc, _Timeout):
                    raise SwarmError(f"Service with ID ({service_id}) did not converge after {go_duration(timeout)} "
                                     f"(the provider deleted it){tail}") from None
                raise
        try:
            self._read(service_id)
        except (SwarmError, docker.errors.APIError) as exc:
            raise ServiceCreateFailed(f"service {inputs['name']}: {exc}", service_id) from None
        return service_id

    def _send_create(self, spec: dict) -> str:
        api = self.client.api
        return api.create_service(spec["TaskTemplate"], name=spec["Name"], labels=spec["Labels"] or None,
                                  mode=spec["Mode"], update_config=spec.get("UpdateConfig"),
                                  rollback_config=spec.get("RollbackConfig"),
                                  endpoint_spec=spec["EndpointSpec"])["ID"]

    def _tasks(self, service_id: str) -> list[dict]:
        return self.client.api.tasks(filters={"service": service_id, "desired-state": "running"})

    def _active_nodes(self) -> set[str]:
        """getActiveNodes: every node not down."""
        return {n["ID"] for n in self.client.api.nodes() if n["Status"]["State"] != "down"}

    def _replicas(self, service: dict) -> int:
        replicated = service["Spec"].get("Mode", {}).get("Replicated")
        if replicated is None or replicated.get("Replicas") is None:
            raise SwarmError("no replica count")
        return int(replicated["Replicas"])

    def _create_refresh(self, service_id: str) -> tuple[str, bool]:
        """resourceDockerServiceCreateRefreshFunc."""
        try:
            service = self.client.api.inspect_service(service_id)
        except docker.errors.APIError as exc:
            raise SwarmError(str(exc.explanation or exc)) from None
        running = running_replicas(self._tasks(service_id), self._active_nodes())
        return ("running", True) if running == self._replicas(service) else ("creating", False)

    def _update_refresh(self, service_id: str) -> tuple[str, bool]:
        """resourceDockerServiceUpdateRefreshFunc: the update's own state first (completed; a rollback
        or a pause is an error), then every replica running."""
        service = self.client.api.inspect_service(service_id)
        status = service.get("UpdateStatus") or {}
        state, message = status.get("State"), status.get("Message", "")
        rollback = False
        if state == "completed":
            return "completed", True
        if state == "rollback_started":
            rollback = True
        elif state == "rollback_completed":
            raise ServiceUpdateFailed(f"service rollback completed: {message}")
        elif state == "paused":
            raise ServiceUpdateFailed(f"service update paused: {message}")
        elif state == "rollback_paused":
            raise ServiceUpdateFailed(f"service rollback paused: {message}")
        running = running_replicas(self._tasks(service_id), self._active_nodes())
        if running == self._replicas(service):
            if rollback:
                raise ServiceUpdateFailed(f"service rollback completed: {message}")
            return "completed", True
        return "updating", False

    def _task_errors(self, service_id: str) -> str:
        """Why the tasks did not run (the engine's own words), for the error message."""
        try:
            tasks = self.client.api.tasks(filters={"service": service_id})
        except docker.errors.APIError:
            return ""
        errors = sorted({t["Status"].get("Err") or t["Status"].get("Message", "") for t in tasks
                         if t["Status"]["State"] != "running"} - {""})
        return f"; its tasks: {'; '.join(errors[:3])}" if errors else ""

    def _read(self, service_id: str) -> dict:
        """resourceDockerServiceRead: wait (2 s, then every 5 s, up to 30 s) until the engine exposes
        the endpoint's mode."""
        def refresh():
            service = self.client.api.inspect_service(service_id)
            ready = (service.get("Endpoint", {}).get("Spec", {}).get("Mode")
                     or service["Spec"].get("EndpointSpec", {}).get("Mode"))
            return service, bool(ready)
        try:
            return wait_for_state(refresh, delay=2, timeout=30, sleep=self.sleep)
        except _Timeout:
            raise SwarmError(f"service {service_id}: the engine did not expose its endpoint spec in 30s") from None

    # -- update -------------------------------------------------------------------------------------
    def update(self, old, new: Resource) -> dict:
        """resourceDockerServiceUpdate: ServiceUpdate with the whole spec (createServiceSpec of the
        planned values) at the service's current version; with converge_config, wait (7 s, then every
        5-10 s) until the update completed: a rollback or pause is an error, and so is a timeout
        (DidNotConvergeError)."""
        if new.type != SERVICE or not old.id:
            return dict(new.inputs)  # secrets and configs have no Update: every change replaces them
        inputs = reveal(new.inputs)
        try:
            current = self.client.api.inspect_service(old.id)
            # The attributes the program leaves to the provider are sent as it read them: a service
            # created without restart_policy gets the engine's policy back with an explicit delay 0s.
            spec = service_spec(planned_inputs(inputs, read_state(current)))
            self.client.api.update_service(
                old.id, current["Version"]["Index"], task_template=spec["TaskTemplate"], name=spec["Name"],
                labels=spec["Labels"], mode=spec["Mode"], update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"), endpoint_spec=spec["EndpointSpec"])
        except docker.errors.APIError as exc:
            raise ServiceUpdateFailed(f"service {inputs['name']}: {exc.explanation or exc}") from None
        try:
            if inputs.get("convergeConfig") is not None:
                timeout = _ns(_one(inputs["convergeConfig"]).get("timeout", "3m"))
                try:
                    wait_for_state(lambda: self._update_refresh(old.id), delay=7, timeout=timeout / 1e9,
                                   sleep=self.sleep)
                except _Timeout:
                    raise ServiceUpdateFailed(f"Service with ID ({old.id}) did not converge after "
                                              f"{go_duration(timeout)}") from None
            self._read(old.id)
        except docker.errors.APIError as exc:
            raise ServiceUpdateFailed(f"service {inputs['name']}: {exc.explanation or exc}") from None
        except SwarmError as exc:
            raise ServiceUpdateFailed(str(exc)) from None
        return dict(new.inputs)

    # -- delete -------------------------------------------------------------------------------------
    def delete(self, old) -> None:
        inputs = reveal(old.inputs)
        try:
            if old.type == SERVICE and old.id:
                self._delete_service(old.id, inputs)
            elif old.type == SECRET:
                self.client.api.remove_secret(old.id)  # resourceDockerSecretDelete
            elif old.type == SERVICE_CONFIG:
                self.client.api.remove_config(old.id)  # resourceDockerConfigDelete
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise SwarmError(f"{old.name}: {exc.explanation or exc}") from None

    def _delete_service(self, service_id: str, inputs: dict) -> None:
        """deleteService: with a stop_grace_period other than 0s, note the containers of the service's
        tasks first; ServiceRemove; then wait up to the grace period for each of those containers to
        be removed and force-remove it (on this engine: a container on another node is "No such
        container", which the provider ignores)."""
        grace = _one(_one(inputs.get("taskSpec")).get("containerSpec")).get("stopGracePeriod") or ""
        containers = []
        if grace not in ("", "0s"):
            for t in self.client.api.tasks(filters={"service": inputs["name"]}):
                cid = ((t.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID", "")
                if cid.strip() and t["Status"]["State"] != "shutdown":
                    containers.append(cid)
        try:
            self.client.api.remove_service(service_id)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise SwarmError(f"Error deleting service with ID '{service_id}': {exc.explanation or exc}") from None
        for cid in containers:
            try:
                self.client.api.wait(cid, timeout=_ns(grace) / 1e9, condition="removed")
            except docker.errors.NotFound:
                pass
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                raise SwarmError(f"error on wait for container with ID '{cid}': context deadline exceeded "
                                 f"(stop_grace_period {grace})") from None
            except docker.errors.APIError as exc:
                if "No such container" not in str(exc):
                    raise SwarmError(f"failed to wait for container with ID '{cid}': {exc}") from None
            try:
                self.client.api.remove_container(cid, v=True, force=True)
            except docker.errors.APIError as exc:
                if "No such container" not in str(exc) and "is already in progress" not in str(exc):
                    raise SwarmError(f"Error deleting container with ID '{cid}': {exc}") from None
