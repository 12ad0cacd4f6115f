"""The prediction service: its image (built from service/, or a released tag) and N replica containers."""
from __future__ import annotations

import os

import pulumi
import pulumi_docker as docker

from cache import Cache
from config import REPO_ROOT, PlatformConfig
from database import APP_ROLE, MONITOR_ROLE, Database
from network import Networks
from passwords import secret_or_generated
from runtime import Health, Mount, Workload

SERVICE_DIR = REPO_ROOT / "service"
DOCKERFILE = SERVICE_DIR / "Dockerfile"
# What a replica needs to stop cleanly: in-flight requests (PREDICTION_REQUEST_TIMEOUT_SECONDS + 1 s),
# then the prediction writer's flush (up to 30 s). Docker's `docker stop` uses stop_timeout; a Pulumi
# delete uses destroy_grace_seconds (pulumi-docker: 0 when unset, i.e. SIGKILL at once, and every
# queued row lost), so both are set to it.
SHUTDOWN_BUDGET_SECONDS = 45
# Where `python -m prediction_service migrate --stay-up` marks the database migrated.
MIGRATED_MARKER = "/tmp/migrated"
SERVICE_UID = 10001  # service/Dockerfile's user app, who reads the secret files


def build_args(target: str | None = None) -> docker.DockerBuildArgs:
    """service/Dockerfile as Pulumi builds it (``target``: a stage, e.g. the ops toolbox).

    Paths relative to the working directory (infra/, where the CLI runs the program) keep the
    image's inputs identical on every checkout, so moving the repo does not rebuild."""
    if not DOCKERFILE.is_file():
        raise FileNotFoundError(f"{DOCKERFILE} not found: the service image is built from service/Dockerfile "
                                f"(docs/CONTRACTS.md); check out a revision that has it")
    context = os.path.relpath(SERVICE_DIR, os.getcwd())
    return docker.DockerBuildArgs(context=context, dockerfile=os.path.join(context, "Dockerfile"),
                                  platform="linux/amd64", target=target)


def health_probe(port: int) -> list[str]:
    """The replicas' healthcheck: GET /health answered 200 on ``port``. Plain sockets under ``python -I -S``
    (no site-packages, no urllib): about 20 ms a run instead of 70, since it runs every few seconds in
    every replica. Any Python 3 image can run it, so an older image tag rolled back to still passes."""
    code = (f"import socket; s = socket.create_connection(('127.0.0.1', {port}), 3); "
            "s.sendall(b'GET /health HTTP/1.0\\r\\n\\r\\n'); "
            "raise SystemExit(s.makefile('rb').readline().split()[1:2] != [b'200'])")
    return ["CMD", "python", "-I", "-S", "-c", code]


class PredictionService(pulumi.ComponentResource):
    """Runs ``service.replicas`` containers of the service image on the app network (gateway,
    Prometheus) and the data network (database, Redis), after the migrate job.

    The image is ``service.image`` when set (a released tag: rolling back is setting the previous one)
    and otherwise built from ``service/Dockerfile``. Every replica answers on the shared network
    alias ``<prefix>-service`` (the gateway and Prometheus resolve it to every replica, so scaling
    changes neither) and on its own, ``<prefix>-service-N``. Its container name adds a digest of
    the inputs that force a replacement, so a changed replica is replaced create-before-delete: the
    new one is healthy before the old one is stopped, with its shutdown budget, in the delete phase.

    Outputs: ``replica_names`` (the per-replica aliases), ``service_alias``, ``port``, ``api_key``
    (secret), ``image``.
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks, database: Database,
                 cache: Cache, opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:service:PredictionService", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        s = cfg.service
        self.api_key = secret_or_generated(cfg.secrets.apiKey, f"{name}-api-key", 48, child_opts)
        self.jwt_secret = secret_or_generated(cfg.secrets.jwtSecret, f"{name}-jwt-secret", 48, child_opts)
        self.image_ref = self._image(name, cfg, child_opts)
        self.models_volume, models_mount = self._models(name, cfg, runtime, child_opts)
        self.migrate = self._migrate_job(name, cfg, runtime, networks, database, child_opts)
        self.service_alias = cfg.physical("service")
        self.aliases = [f"{self.service_alias}-{i}" for i in range(1, s.replicas + 1)]
        # The URLs are built from plain names, not from the database's and Redis's outputs: a property
        # dependency on a container that is replaced delete-before-replace (every docker.Container, by
        # pulumi-docker's choice) would make Pulumi delete every replica first (step_generator.go
        # calculateDependentReplacements). depends_on orders them without that.
        workload = Workload(
            name=name,
            host=self.service_alias,
            component="service",
            image=self.image_ref,
            env=[f"PREDICTION_REDIS_URL={cache.url()}", f"PREDICTION_MODEL_PATH={s.modelPath}",
                 "PREDICTION_HOST=0.0.0.0", f"PREDICTION_PORT={s.port}", f"PREDICTION_GRPC_PORT={s.grpcPort}",
                 f"PREDICTION_LOG_LEVEL={s.logLevel.upper()}"] + [f"{k}={v}" for k, v in sorted(s.env.items())],
            secret_env={"PREDICTION_TIMESCALE_URL": database.url(app=True), "PREDICTION_API_KEY": self.api_key,
                        "PREDICTION_JWT_SECRET": self.jwt_secret},
            secret_uid=SERVICE_UID,
            networks=[(networks.app, []), (networks.data, [])],
            mounts=[models_mount],
            # Every 2 s (the probe costs ~20 ms), so a new replica is found healthy (and a roll-out
            # moves on) soon after it starts; one that never answers fails after 15 + 3 × 2 = 21 s,
            # which the Swarm update's monitor window is sized from (runtime.py).
            health=Health(health_probe(s.port), interval="2s", timeout="2s", retries=3, start_period="15s"),
            memory_mb=s.memoryMb,
            cpus=s.cpus,
            memory_reserved_mb=s.memoryReservedMb,
            cpus_reserved=s.cpusReserved,
            stop_timeout=SHUTDOWN_BUDGET_SECONDS,
            stop_grace_seconds=SHUTDOWN_BUDGET_SECONDS,
            restart="on-failure",
            max_retry_count=s.maxRetryCount,
            wait_timeout=120,
        )
        self.replicas = runtime.replicas(workload, s.replicas, pulumi.ResourceOptions(
            parent=self, depends_on=[database.container, cache.container, self.migrate]))
        self.port = s.port
        self.grpc_port = s.grpcPort
        self.replica_names = pulumi.Output.from_input(self.aliases)
        self.register_outputs({"replica_names": self.replica_names, "service_alias": self.service_alias,
                               "image": self.image_ref, "api_key": self.api_key})

    def _image(self, name: str, cfg: PlatformConfig, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        s = cfg.service
        if s.image:
            return docker.RemoteImage(f"{name}-image", name=s.image, keep_locally=True, opts=opts).image_id
        return docker.Image(f"{name}-image", image_name=f"{s.imageName}:{cfg.stack}", build=build_args(),
                            skip_push=True, build_on_preview=s.buildOnPreview, opts=opts).repo_digest

    @staticmethod
    def _models(name: str, cfg: PlatformConfig, runtime, opts: pulumi.ResourceOptions):
        """The image ships no models: a host folder (dev; on a Swarm, one present on every node) or the
        stack's named volume, which playbooks/models.yml fills. Replicas only read them."""
        s = cfg.service
        if s.modelsHostPath is not None:
            return None, Mount(target=s.modelPath, host_path=str(REPO_ROOT / s.modelsHostPath), read_only=True)
        volume_name = cfg.physical("models")
        volume = runtime.volume(f"{name}-models", volume_name, opts)
        return volume, Mount(target=s.modelPath, volume=volume, volume_name=volume_name, read_only=True)

    def _migrate_job(self, name: str, cfg: PlatformConfig, runtime, networks: Networks, database: Database,
                     opts: pulumi.ResourceOptions):
        """The image's migrations, applied as the owner, then prediction_app and prediction_monitor (the
        PostgreSQL exporter's) given LOGIN and their passwords; the container then stays up, healthy, and `pulumi up` waits for that (``wait``).

        Why not a one-shot job: pulumi-docker records a finished container's exit code and never runs
        it again while its inputs stay the same, so a failed migration would stay failed. A job that
        never turns healthy fails its create instead; Pulumi keeps it with init errors, and
        ``replace_on_changes=["*"]`` makes the next plain `pulumi up` replace it (run it again)
        (step_generator.go applyReplaceOnChanges, "#initerror"). A new image (new migrations) or a
        rotated password changes its inputs, which replaces it too. (On a Swarm it is a one-task service
        whose failed create the provider deletes: the next `pulumi up` creates it again.)"""
        return runtime.job(Workload(
            name=f"{name}-migrate",
            host=cfg.physical("migrate"),
            component="migrate",
            image=self.image_ref,
            command=["python", "-m", "prediction_service", "migrate", "--app-role", APP_ROLE,
                     "--monitor-role", MONITOR_ROLE, "--stay-up"],
            secret_env={"PREDICTION_TIMESCALE_URL": database.url(),
                        "PREDICTION_APP_DB_PASSWORD": database.app_password,
                        "PREDICTION_MONITOR_DB_PASSWORD": database.monitor_password},
            secret_uid=SERVICE_UID,
            networks=[(networks.data, [])],
            health=Health(["CMD", "test", "-f", MIGRATED_MARKER], interval="1s", timeout="2s", retries=1,
                          start_period="0s"),
            wait_timeout=cfg.service.migrateTimeoutSeconds,
            restart="no",
            stop_grace_seconds=15,  # idle after the migration; nothing to drain (but a slow machine is slow to stop it)
        ), pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            delete_before_replace=True, replace_on_changes=["*"], depends_on=[database.container])))
