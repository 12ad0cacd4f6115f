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
STOP_TIMEOUT_SECONDS = 45


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
    Prometheus) and the data network (database, Redis), after a one-shot migrate job.

    The image is ``service.image`` when set (a released tag: rolling back is setting the previous one)
    and otherwise built from ``service/Dockerfile``. Each replica answers on a stable network alias,
    ``<prefix>-service-N``, which the gateway and Prometheus use; its container name adds a digest of
    its inputs, so a changed replica is replaced create-before-delete: the new one is healthy before
    the old one stops, and the gateway never runs out of replicas.

    Outputs: ``replica_names`` (the aliases), ``port``, ``api_key`` (secret), ``image``.
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
        # The service's database URL exists only once the migrate job exited 0, so a failed
        # migration fails the deployment before any replica is touched.
        app_db_url = pulumi.Output.all(database.url(app=True), self.migrate.exit_code, self.migrate.name).apply(
            lambda args: _after_migration(*args))
        env = [
            pulumi.Output.secret(pulumi.Output.format("PREDICTION_TIMESCALE_URL={0}", app_db_url)),
            pulumi.Output.format("PREDICTION_REDIS_URL={0}", cache.url()),
            f"PREDICTION_MODEL_PATH={s.modelPath}",
            pulumi.Output.format("PREDICTION_API_KEY={0}", self.api_key),
            pulumi.Output.format("PREDICTION_JWT_SECRET={0}", self.jwt_secret),
            "PREDICTION_HOST=0.0.0.0",
            f"PREDICTION_PORT={s.port}",
            f"PREDICTION_LOG_LEVEL={s.logLevel.upper()}",
        ] + [f"{k}={v}" for k, v in sorted(s.env.items())]

        self.aliases = [cfg.physical(f"service-{i}") for i in range(1, s.replicas + 1)]
        self.replicas = [self._replica(f"{name}-{i}", alias, cfg, networks, env, models_mount)
                         for i, alias in enumerate(self.aliases, start=1)]
        self.port = s.port
        self.replica_names = pulumi.Output.from_input(self.aliases)
        self.register_outputs({"replica_names": self.replica_names, "image": self.image_ref,
                               "api_key": self.api_key})

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
        password (a rotated appDbPassword takes effect on the next `pulumi up`). One-shot: attach
        waits for the exit."""
        return docker.Container(
            f"{name}-migrate",
            name=cfg.physical("migrate"),
            image=self.image_ref,
            command=["python", "-m", "prediction_service", "migrate", "--app-role", APP_ROLE],
            envs=[
                pulumi.Output.secret(pulumi.Output.format("PREDICTION_TIMESCALE_URL={0}", database.url())),
                pulumi.Output.format("PREDICTION_APP_DB_PASSWORD={0}", database.app_password),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.data.name)],
            must_run=False,
            attach=True,
            logs=True,
            restart="no",
            labels=labels(cfg, "migrate"),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True)),
        )

    def _replica(self, resource_name: str, alias: str, cfg: PlatformConfig, networks: Networks,
                 env: list, models_mount: docker.ContainerVolumeArgs) -> docker.Container:
        s = cfg.service
        env = env + [f"PREDICTION_INSTANCE={alias}"]
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{s.port}/health', timeout=3)"
        # Every setting below in plain values: the container name carries a digest of them (and of
        # the image and environment), so whatever changes a replica also renames it, and Pulumi's
        # default create-before-delete replacement applies instead of a name collision.
        plain = dict(
            hostname=alias,
            healthcheck=dict(tests=["CMD", "python", "-c", probe], interval="10s", timeout="5s", retries=3,
                             start_period="20s"),
            restart="on-failure",
            max_retry_count=s.maxRetryCount,
            # Docker's default 10 s before SIGKILL is shorter than a graceful stop: in-flight
            # requests (PREDICTION_REQUEST_TIMEOUT_SECONDS + 1 s), then the prediction writer's
            # flush (up to 30 s) — rows still queued at a SIGKILL would be lost.
            stop_timeout=STOP_TIMEOUT_SECONDS,
            cpus=None if s.cpus is None else f"{s.cpus:g}",
            memory=s.memoryMb,
            wait=True,
            wait_timeout=120,
        )
        mounts = {"models": s.modelsHostPath or cfg.physical("models"), "path": s.modelPath}
        digest = pulumi.Output.unsecret(pulumi.Output.all(self.image_ref, env).apply(
            lambda parts: _digest([parts, plain, mounts, cfg.stack])))
        return docker.Container(
            resource_name,
            name=pulumi.Output.concat(alias, "-", digest),
            image=self.image_ref,
            envs=env,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=networks.app.name, aliases=[alias]),
                               docker.ContainerNetworksAdvancedArgs(name=networks.data.name, aliases=[alias])],
            volumes=[models_mount],
            labels=labels(cfg, "service") + [docker.ContainerLabelArgs(label="com.prediction.instance", value=alias)],
            **{**plain, "healthcheck": docker.ContainerHealthcheckArgs(**plain["healthcheck"])},
            opts=pulumi.ResourceOptions(parent=self),
        )


def labels(cfg: PlatformConfig, component: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
            docker.ContainerLabelArgs(label="com.prediction.component", value=component)]


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def _after_migration(app_url: str, exit_code: int | None, container: str) -> str:
    """The service's database URL, once the migrate job has exited 0 (None: not known yet, as in a
    preview)."""
    if exit_code not in (None, 0):
        raise RuntimeError(f"the migrate job {container} exited {exit_code}: read `docker logs {container}`, "
                           f"fix the database or the migration, then run pulumi up again")
    return app_url
