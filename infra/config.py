"""Typed, validated stack configuration, read once from ``pulumi.Config``.

Every difference between dev, staging and prod lives in ``Pulumi.<stack>.yaml`` and arrives here;
the component modules never look at the stack name. Structured keys (``database``, ``cache``,
``service``, ``gateway``, ``monitoring``, ``network``) map onto the dataclasses below; unknown keys
are rejected so a typo in a stack file fails loudly instead of silently using a default.

Secrets are separate top-level keys that must be set with ``pulumi config set --secret``; each one
is optional and generated with pulumi-random when absent (see ``SECRET_KEYS``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pulumi
from pulumi.runtime.config import is_config_secret

PROJECT = "prediction-platform"
REPO_ROOT = Path(__file__).resolve().parent.parent

# config key -> human description; all optional, all must be stored encrypted.
SECRET_KEYS = {
    "dbPassword": "password of prediction_user, the database's owner (superuser of the container; ops playbooks)",
    "appDbPassword": "password of prediction_app, the least-privilege role the service logs in as",
    "apiKey": "PREDICTION_API_KEY clients send as X-API-Key",
    "jwtSecret": "PREDICTION_JWT_SECRET (HS256)",
    "grafanaAdminPassword": "Grafana admin password",
    "tlsCert": "PEM certificate chain served by the gateway",
    "tlsKey": "PEM private key of tlsCert",
}

_UNPINNED_TAG = re.compile(r"^(latest|.*-latest|latest-.*|main|master|nightly)$")


class ConfigError(Exception):
    """A stack file value is missing or invalid; the message says which key and how to fix it."""


@dataclass(frozen=True)
class OrchestratorConfig:
    """Where the workloads run (infra/runtime.py): "engine" = containers on one Docker engine;
    "swarm" = services on a Docker Swarm, whose manager the provider talks to."""
    kind: str = "engine"
    # Swarm: how a service name resolves: "vip" (one virtual IP, IPVS balances) or "dnsrr" (every
    # task's address; where the kernel has no IPVS, as on the machine the tests run on).
    endpointMode: str = "vip"
    # Swarm: encrypt the overlay networks' traffic between nodes (IPsec).
    encryptOverlay: bool = False
    # Swarm: the node label (value "true") of the node that keeps the database and its volume.
    databaseNodeLabel: str = "prediction.database"
    # Swarm: how long `pulumi up` waits for a service to converge before reporting it failed.
    convergeTimeout: str = "5m"


@dataclass(frozen=True)
class NetworkConfig:
    # Docker cannot publish ports of a container attached only to an internal network, so a stack
    # that publishes the database or Redis on the host must turn this off (validated below).
    dataInternal: bool = True


@dataclass(frozen=True)
class DatabaseConfig:
    tag: str
    image: str = "timescale/timescaledb"
    user: str = "prediction_user"
    name: str = "prediction_db"
    # No in-container port setting: PostgreSQL listens on the image's 5432; hostPort publishes it.
    hostPort: Optional[int] = None
    hostBindAddress: str = "127.0.0.1"
    memoryMb: Optional[int] = None
    # No PostgreSQL tuning here on purpose: `postgres -c` flags would override ALTER SYSTEM, and the
    # settings have one owner, roles/timescaledb_tuning (playbooks/db-tune.yml, sized from memoryMb).
    protectVolume: bool = False


@dataclass(frozen=True)
class CacheConfig:
    tag: str
    image: str = "redis"
    port: int = 6379
    maxmemory: str = "256mb"
    maxmemoryPolicy: str = "allkeys-lru"
    timeout: int = 300
    tcpKeepalive: int = 60
    hostPort: Optional[int] = None
    hostBindAddress: str = "127.0.0.1"
    memoryMb: Optional[int] = None


@dataclass(frozen=True)
class ServiceConfig:
    replicas: int
    imageName: str = "prediction-service"
    # A released image to run (e.g. prediction-service:2026.11.29 or registry.example.com/prediction:1.4)
    # instead of building service/: deploying a release is setting it, rolling back is setting the
    # previous one. Unset: `pulumi up` builds service/Dockerfile as <imageName>:<stack>.
    image: Optional[str] = None
    port: int = 8000
    # The Open Inference Protocol over gRPC on each replica (PREDICTION_GRPC_PORT); the gateway carries it
    # on its HTTPS port (HTTP/2).
    grpcPort: int = 8001
    cpus: Optional[float] = None
    memoryMb: Optional[int] = None
    logLevel: str = "INFO"
    modelPath: str = "/app/models"
    # When set, bind-mount this folder as the models folder instead of the named models volume:
    # relative paths are under the repo root (dev, local Docker: `make model` writes service/models),
    # absolute paths are on the Docker host.
    modelsHostPath: Optional[str] = None
    maxRetryCount: int = 5
    # Swarm: what each replica's task reserves on its node (the scheduler places by reservations).
    cpusReserved: Optional[float] = None
    memoryReservedMb: Optional[int] = None
    buildOnPreview: bool = False
    # How long `pulumi up` waits for the migrate job to report the database migrated (its create
    # fails after that, and the next `pulumi up` runs it again).
    migrateTimeoutSeconds: int = 300
    # Further PREDICTION_* variables from docs/CONTRACTS.md (cache TTL, limits, ...).
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayConfig:
    tag: str
    image: str = "nginx"
    serverName: str = "localhost"
    httpsPort: int = 443
    httpPort: int = 80
    bindAddress: str = "0.0.0.0"
    upstreamKeepalive: int = 32
    nextUpstreamTries: int = 0  # 0: every replica
    clientMaxBodySize: str = "2m"
    proxyReadTimeout: str = "30s"
    selfSignedValidityHours: int = 8760


@dataclass(frozen=True)
class MonitoringConfig:
    prometheusTag: str
    grafanaTag: str
    prometheusImage: str = "prom/prometheus"
    grafanaImage: str = "grafana/grafana"
    scrapeInterval: str = "15s"
    evaluationInterval: str = "15s"
    retention: str = "15d"
    bindAddress: str = "127.0.0.1"
    prometheusHostPort: int = 9090
    grafanaHostPort: int = 3000
    # Host metrics of the Docker host (the brief's CPU/memory/disk checklist), from a node-exporter
    # container reading the host's /proc, /sys and root filesystem read-only.
    nodeExporterTag: str = "v1.8.2"
    nodeExporterImage: str = "prom/node-exporter"
    # Further node-exporters to scrape (host:port), e.g. other machines.
    nodeExporterTargets: list[str] = field(default_factory=list)
    datasourceUid: str = "prometheus"


@dataclass(frozen=True)
class Secrets:
    """Secret config values as secret Outputs, or None when the stack should generate them."""

    dbPassword: Optional[pulumi.Output[str]] = None
    appDbPassword: Optional[pulumi.Output[str]] = None
    apiKey: Optional[pulumi.Output[str]] = None
    jwtSecret: Optional[pulumi.Output[str]] = None
    grafanaAdminPassword: Optional[pulumi.Output[str]] = None
    tlsCert: Optional[pulumi.Output[str]] = None
    tlsKey: Optional[pulumi.Output[str]] = None


@dataclass(frozen=True)
class PlatformConfig:
    stack: str
    namePrefix: str
    orchestrator: OrchestratorConfig
    network: NetworkConfig
    database: DatabaseConfig
    cache: CacheConfig
    service: ServiceConfig
    gateway: GatewayConfig
    monitoring: MonitoringConfig
    secrets: Secrets
    requirePinnedImages: bool = False

    def physical(self, suffix: str) -> str:
        """Docker-level name of a stack object, unique per stack on a shared Docker host."""
        return f"{self.namePrefix}-{suffix}"


# ---------------------------------------------------------------------------------------------
# Parsing

def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"unsupported config type {typ!r} at {where}")


def _section(cls: type, raw: Any, key: str) -> Any:
    """Build dataclass ``cls`` from the stack file's object ``key``, rejecting unknown fields."""
    where = f"{PROJECT}:{key}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object in the stack file, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; known fields: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name} is required: set it in Pulumi.<stack>.yaml")
    return cls(**values)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _validate(cfg: PlatformConfig) -> None:
    p = PROJECT
    _check(re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", cfg.namePrefix) is not None,
           f"{p}:namePrefix {cfg.namePrefix!r} is not a valid Docker name prefix (lowercase letters, digits, . _ -)")
    o = cfg.orchestrator
    _check(o.kind in ("engine", "swarm"), f"{p}:orchestrator.kind must be engine or swarm, got {o.kind!r}")
    _check(o.endpointMode in ("vip", "dnsrr"), f"{p}:orchestrator.endpointMode must be vip or dnsrr, got {o.endpointMode!r}")
    _check(re.fullmatch(r"\d+(s|m|h)", o.convergeTimeout) is not None,
           f"{p}:orchestrator.convergeTimeout must look like 300s or 5m, got {o.convergeTimeout!r}")
    if o.kind == "swarm":
        for name, port in (("database.hostPort", cfg.database.hostPort), ("cache.hostPort", cfg.cache.hostPort)):
            _check(port is None, f"{p}:{name} is set but orchestrator.kind is swarm: the data layer is reached on the "
                                 f"overlay network (through the ops toolbox), never published; remove {name}")
        _check(cfg.service.modelsHostPath is not None and cfg.service.modelsHostPath.startswith("/"),
               f"{p}:service.modelsHostPath must be an absolute folder present on every node of the swarm (a "
               f"named volume would be a different, empty one on each node), got {cfg.service.modelsHostPath!r}")
    s = cfg.service
    _check(1 <= s.replicas <= 20, f"{p}:service.replicas must be between 1 and 20, got {s.replicas}")
    _check(1 <= s.grpcPort <= 65535 and s.grpcPort != s.port,
           f"{p}:service.grpcPort must be a TCP port other than service.port ({s.port}), got {s.grpcPort}")
    _check(s.migrateTimeoutSeconds >= 10, f"{p}:service.migrateTimeoutSeconds must be at least 10, got "
                                          f"{s.migrateTimeoutSeconds}")
    _check(s.cpus is None or s.cpus > 0, f"{p}:service.cpus must be > 0, got {s.cpus}")
    for section, mem in (("service", s.memoryMb), ("database", cfg.database.memoryMb), ("cache", cfg.cache.memoryMb)):
        # Container.memory is in MB; a value like 1073741824 means someone typed bytes.
        _check(mem is None or 64 <= mem <= 262144,
               f"{p}:{section}.memoryMb is in megabytes and must be 64..262144, got {mem}")
    _check(s.logLevel.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
           f"{p}:service.logLevel must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {s.logLevel!r}")
    wired = {"PREDICTION_TIMESCALE_URL", "PREDICTION_REDIS_URL", "PREDICTION_MODEL_PATH", "PREDICTION_API_KEY",
             "PREDICTION_JWT_SECRET", "PREDICTION_HOST", "PREDICTION_PORT", "PREDICTION_GRPC_PORT", "PREDICTION_INSTANCE",
             "PREDICTION_LOG_LEVEL"}
    for k in s.env:
        _check(k.startswith("PREDICTION_"), f"{p}:service.env.{k}: only PREDICTION_* variables belong here")
        _check(k not in wired, f"{p}:service.env.{k} is set by the program from other config; remove it")
    _check(s.modelsHostPath is None or s.modelsHostPath.strip() != "",
           f"{p}:service.modelsHostPath is empty: remove it to use the named models volume")
    for name, port in (("database.hostPort", cfg.database.hostPort), ("cache.hostPort", cfg.cache.hostPort),
                       ("gateway.httpsPort", cfg.gateway.httpsPort), ("gateway.httpPort", cfg.gateway.httpPort),
                       ("monitoring.prometheusHostPort", cfg.monitoring.prometheusHostPort),
                       ("monitoring.grafanaHostPort", cfg.monitoring.grafanaHostPort)):
        _check(port is None or 1 <= port <= 65535, f"{p}:{name} must be a TCP port 1..65535, got {port}")
    published = [("database.hostPort", cfg.database.hostPort), ("cache.hostPort", cfg.cache.hostPort)]
    for name, port in published:
        _check(port is None or not cfg.network.dataInternal,
               f"{p}:{name} is set but network.dataInternal is true: Docker cannot publish ports of a container "
               f"that is only on an internal network. Remove {name} or set network.dataInternal: false")
    host_ports = [x for x in (cfg.database.hostPort, cfg.cache.hostPort, cfg.gateway.httpsPort, cfg.gateway.httpPort,
                              cfg.monitoring.prometheusHostPort, cfg.monitoring.grafanaHostPort) if x is not None]
    _check(len(host_ports) == len(set(host_ports)), f"{p}: two components publish the same host port: {host_ports}")
    _check(cfg.cache.maxmemoryPolicy in ("allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu",
                                         "allkeys-random", "volatile-random", "volatile-ttl", "noeviction"),
           f"{p}:cache.maxmemoryPolicy {cfg.cache.maxmemoryPolicy!r} is not a Redis eviction policy")
    _check(re.fullmatch(r"\d+(b|k|kb|m|mb|g|gb)?", cfg.cache.maxmemory.lower()) is not None,
           f"{p}:cache.maxmemory must look like 256mb or 2gb, got {cfg.cache.maxmemory!r}")
    if cfg.requirePinnedImages:
        for name, tag in (("database.tag", cfg.database.tag), ("cache.tag", cfg.cache.tag),
                          ("gateway.tag", cfg.gateway.tag), ("monitoring.prometheusTag", cfg.monitoring.prometheusTag),
                          ("monitoring.grafanaTag", cfg.monitoring.grafanaTag),
                          ("monitoring.nodeExporterTag", cfg.monitoring.nodeExporterTag)) + (
                             (("service.image", _tag_of(cfg.service.image)),) if cfg.service.image else ()):
            _check(not _UNPINNED_TAG.match(tag) and re.search(r"\d", tag) is not None,
                   f"{p}:{name} is {tag!r} but requirePinnedImages is true: pin a versioned tag such as 2.17.2-pg15")
    sec = cfg.secrets
    _check((sec.tlsCert is None) == (sec.tlsKey is None),
           f"{p}: set both tlsCert and tlsKey (pulumi config set --secret tlsCert < cert.pem) or neither "
           f"(a self-signed certificate is generated)")


def _tag_of(ref: str) -> str:
    """The tag of an image reference (``latest`` when it has none)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def _secret(config: pulumi.Config, key: str) -> Optional[pulumi.Output[str]]:
    full = f"{PROJECT}:{key}"
    if config.get(key) is None:
        return None
    if not is_config_secret(full):
        raise ConfigError(
            f"{full} ({SECRET_KEYS[key]}) is stored in plain text in Pulumi.{pulumi.get_stack()}.yaml; "
            f"remove it and run: pulumi config set --secret {key} <value>")
    return config.require_secret(key)


SECTIONS = {"orchestrator": OrchestratorConfig, "network": NetworkConfig, "database": DatabaseConfig, "cache": CacheConfig,
            "service": ServiceConfig, "gateway": GatewayConfig, "monitoring": MonitoringConfig}


def stack_file_section(stack: str, key: str) -> Any:
    """One section of Pulumi.<stack>.yaml as ``load()`` reads it, defaults filled in, without the
    Pulumi engine: for the tools that check a deployed stack (tests/host) against its stack file."""
    import yaml

    raw = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return _section(SECTIONS[key], raw.get(f"{PROJECT}:{key}"), key)


def load() -> PlatformConfig:
    """Read and validate the stack's configuration; raises ConfigError with the key to fix."""
    config = pulumi.Config(PROJECT)
    stack = pulumi.get_stack()

    def obj(key: str) -> Any:
        raw = config.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"{PROJECT}:{key} must be an object in Pulumi.{stack}.yaml, got {raw!r}") from None

    cfg = PlatformConfig(
        stack=stack,
        namePrefix=config.get("namePrefix") or f"prediction-{stack}",
        requirePinnedImages=_coerce(config.get("requirePinnedImages") or "false", bool,
                                    f"{PROJECT}:requirePinnedImages"),
        orchestrator=_section(OrchestratorConfig, obj("orchestrator"), "orchestrator"),
        network=_section(NetworkConfig, obj("network"), "network"),
        database=_section(DatabaseConfig, obj("database"), "database"),
        cache=_section(CacheConfig, obj("cache"), "cache"),
        service=_section(ServiceConfig, obj("service"), "service"),
        gateway=_section(GatewayConfig, obj("gateway"), "gateway"),
        monitoring=_section(MonitoringConfig, obj("monitoring"), "monitoring"),
        secrets=Secrets(**{k: _secret(config, k) for k in SECRET_KEYS}),
    )
    _validate(cfg)
    return cfg
