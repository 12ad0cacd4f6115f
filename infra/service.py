"""The prediction service: its image (built from service/, or a released tag) and N replica containers."""
from __future__ import annotations

import hashlib
import json
import os

import pulumi
import pulumi_docker as docker

from cache import Cache
from config import REPO_ROOT, PlatformConfig
from database import APP_ROLE, Database
from network import Networks
from passwords import secret_or_generated

SERVICE_DIR = REPO_ROOT / "service"
DOCKERFILE = SERVICE_DIR / "Dockerfile"
# What a replica needs to stop cleanly: in-flight requests (PREDICTION_REQUEST_TIMEOUT_SECONDS + 1 s),
# then the prediction writer's flush (up to 30 s). Docker's `docker stop` uses stop_timeout; a Pulumi
# delete uses destroy_grace_seconds (pulumi-docker: 0 when unset, i.e. SIGKILL at once, and every
# queued row lost), so both are set to it.
SHUTDOWN_BUDGET_SECONDS = 45
# Where `python -m prediction_service migrate --stay-up` marks the database migrated.
MIGRATED_MARKER = "/tmp/migrated"


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

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks, database: Database, cache: Cache,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:service:PredictionService", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        s = cfg.service
        self.api_key = secret_or_generated(cfg.secrets.apiKey, f"{name}-api-key", 48, child_opts)
        self.jwt_secret = secret_or_generated(cfg.secrets.jwtSecret, f"{name}-jwt-secret", 48, child_opts)
        self.image_ref = self._image(name, cfg, child_opts)
        self.models_volume, models_mount = self._models(name, cfg, child_opts)
        self.migrate = self._migrate_job(name, cfg, networks, database, child_opts)
        # The URLs are built from plain names, not from the database's and Redis's container outputs:
        # a property dependency on a container that is replaced delete-before-replace (every
        # docker.Container by default) would make Pulumi delete every replica first
        # (step_generator.go calculateDependentReplacements). depends_on orders them without that.
        env = [
            pulumi.Output.secret(pulumi.Output.format("PREDICTION_TIMESCALE_URL={0}", database.url(app=True))),
            f"PREDICTION_REDIS_URL={cache.url()}",
            f"PREDICTION_MODEL_PATH={s.modelPath}",
            pulumi.Output.format("PREDICTION_API_KEY={0}", self.api_key),
            pulumi.Output.format("PREDICTION_JWT_SECRET={0}", self.jwt_secret),
            "PREDICTION_HOST=0.0.0.0",
            f"PREDICTION_PORT={s.port}",
            f"PREDICTION_LOG_LEVEL={s.logLevel.upper()}",
        ] + [f"{k}={v}" for k, v in sorted(s.env.items())]

        self.service_alias = cfg.physical("service")
        self.aliases = [cfg.physical(f"service-{i}") for i in range(1, s.replicas + 1)]
        after = [database.container, cache.container, self.migrate]
        self.replicas = [self._replica(f"{name}-{i}", alias, cfg, networks, env, models_mount, after)
                         for i, alias in enumerate(self.aliases, start=1)]
        self.port = s.port
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
    def _models(name: str, cfg: PlatformConfig, opts: pulumi.ResourceOptions):
        """The image ships no models: a host folder (dev) or the stack's named volume, which
        playbooks/models.yml fills. Replicas only read them."""
        s = cfg.service
        if s.modelsHostPath is not None:
            return None, docker.ContainerVolumeArgs(host_path=str(REPO_ROOT / s.modelsHostPath),
                                                    container_path=s.modelPath, read_only=True)
        volume = docker.Volume(f"{name}-models", name=cfg.physical("models"), opts=opts)
        return volume, docker.ContainerVolumeArgs(volume_name=volume.name, container_path=s.modelPath,
                                                  read_only=True)

    def _migrate_job(self, name: str, cfg: PlatformConfig, networks: Networks, database: Database,
                     opts: pulumi.ResourceOptions) -> docker.Container:
        """The image's migrations, applied as the owner, then prediction_app given LOGIN and its
        password; the container then stays up, healthy, and `pulumi up` waits for that (``wait``).

        Why not a one-shot job: pulumi-docker records a finished container's exit code and never runs
        it again while its inputs stay the same, so a failed migration would stay failed. A job that
        never turns healthy fails its create instead; Pulumi keeps it with init errors, and
        ``replace_on_changes=["*"]`` makes the next plain `pulumi up` replace it (run it again)
        (step_generator.go applyReplaceOnChanges, "#initerror"). A new image (new migrations) or a
        rotated password changes its inputs, which replaces it too."""
        s = cfg.service
        return docker.Container(
            f"{name}-migrate",
            name=cfg.physical("migrate"),
            image=self.image_ref,
            command=["python", "-m", "prediction_service", "migrate", "--app-role", APP_ROLE, "--stay-up"],
            envs=[
                pulumi.Output.secret(pulumi.Output.format("PREDICTION_TIMESCALE_URL={0}", database.url())),
                pulumi.Output.format("PREDICTION_APP_DB_PASSWORD={0}", database.app_password),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.data.name)],
            healthcheck=docker.ContainerHealthcheckArgs(tests=["CMD", "test", "-f", MIGRATED_MARKER],
                                                        interval="1s", timeout="2s", retries=1, start_period="0s"),
            wait=True,
            wait_timeout=s.migrateTimeoutSeconds,
            restart="no",
            # Idle after the migration; nothing to drain.
            destroy_grace_seconds=5,
            labels=labels(cfg, "migrate"),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                delete_before_replace=True, replace_on_changes=["*"], depends_on=[database.container])),
        )

    def _replica(self, resource_name: str, alias: str, cfg: PlatformConfig, networks: Networks,
                 env: list, models_mount: docker.ContainerVolumeArgs, after: list) -> docker.Container:
        s = cfg.service
        env = env + [f"PREDICTION_INSTANCE={alias}"]
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{s.port}/health', timeout=3)"
        # The inputs a change of which replaces a container (ForceNew in the provider's schema), in
        # plain values: the container name carries their digest (with the image and environment),
        # so a replacement gets a new name and create-before-delete works. Memory and the restart
        # policy are updated in place by the provider (ContainerUpdate): not in the digest. The
        # healthcheck is: the provider only records a changed one (the container keeps its old one).
        replacing = dict(
            hostname=alias,
            healthcheck=dict(tests=["CMD", "python", "-c", probe], interval="10s", timeout="5s", retries=3,
                             start_period="20s"),
            stop_timeout=SHUTDOWN_BUDGET_SECONDS,
            cpus=None if s.cpus is None else f"{s.cpus:g}",
        )
        mounts = {"models": s.modelsHostPath or cfg.physical("models"), "path": s.modelPath}
        aliases = {"app": [alias, self.service_alias], "data": [alias]}
        digest = pulumi.Output.unsecret(pulumi.Output.all(self.image_ref, env).apply(
            lambda parts: _digest([parts, replacing, mounts, aliases, cfg.stack])))
        return docker.Container(
            resource_name,
            name=pulumi.Output.concat(alias, "-", digest),
            image=self.image_ref,
            envs=env,
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=networks.app.name, aliases=aliases["app"]),
                docker.ContainerNetworksAdvancedArgs(name=networks.data.name, aliases=aliases["data"])],
            volumes=[models_mount],
            labels=labels(cfg, "service") + [docker.ContainerLabelArgs(label="com.prediction.instance", value=alias)],
            **{**replacing, "healthcheck": docker.ContainerHealthcheckArgs(**replacing["healthcheck"])},
            restart="on-failure",
            max_retry_count=s.maxRetryCount,
            memory=s.memoryMb,
            # Swap limit = memory limit (no swap), set with it: Docker refuses an in-place memory update
            # (pulumi-docker's ContainerUpdate) that leaves the old swap limit below the new memory.
            memory_swap=s.memoryMb,
            wait=True,
            wait_timeout=120,
            destroy_grace_seconds=SHUTDOWN_BUDGET_SECONDS,
            # pulumi-docker asks for delete-before-replace on every container (provider/resources.go);
            # the replicas' unique names let Pulumi's default create-before-delete work instead.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=False, depends_on=after),
        )


def labels(cfg: PlatformConfig, component: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
            docker.ContainerLabelArgs(label="com.prediction.component", value=component)]


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
