"""The prediction service: one locally built image and N replica containers."""
from __future__ import annotations

import os

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from cache import Cache
from config import REPO_ROOT, PlatformConfig
from database import APP_ROLE, Database
from network import Networks

SERVICE_DIR = REPO_ROOT / "service"
DOCKERFILE = SERVICE_DIR / "Dockerfile"
STOP_TIMEOUT_SECONDS = 45


class PredictionService(pulumi.ComponentResource):
    """Builds ``service/Dockerfile`` (context ``service/``, not pushed) and runs ``service.replicas``
    containers on the app network (gateway, Prometheus) and the data network (database, Redis).

    Outputs: ``replica_names`` (container names, also their DNS names), ``port``, ``api_key`` (secret).
    """

    def __init__(self, name: str, cfg: PlatformConfig, networks: Networks, database: Database, cache: Cache,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:service:PredictionService", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        s = cfg.service

        if not DOCKERFILE.is_file():
            raise FileNotFoundError(
                f"{DOCKERFILE} not found: the service image is built from service/Dockerfile "
                f"(docs/CONTRACTS.md); check out a revision that has it")

        self.api_key = self._secret_or_generated(cfg.secrets.apiKey, f"{name}-api-key", child_opts)
        self.jwt_secret = self._secret_or_generated(cfg.secrets.jwtSecret, f"{name}-jwt-secret", child_opts)

        # Paths relative to the working directory (infra/, where the CLI runs the program) keep the
        # image's inputs identical on every checkout, so moving the repo does not rebuild.
        context = os.path.relpath(SERVICE_DIR, os.getcwd())
        self.image = docker.Image(
            f"{name}-image",
            image_name=f"{s.imageName}:{cfg.stack}",
            build=docker.DockerBuildArgs(context=context, dockerfile=os.path.join(context, "Dockerfile"),
                                         platform="linux/amd64"),
            skip_push=True,
            build_on_preview=s.buildOnPreview,
            opts=child_opts,
        )

        # The image ships no models (service/Dockerfile): they come from a host folder or from the
        # stack's named volume, which operators fill (docs/pulumi.md). Replicas only read them.
        if s.modelsHostPath is not None:
            models_mount = docker.ContainerVolumeArgs(host_path=str(REPO_ROOT / s.modelsHostPath),
                                                      container_path=s.modelPath, read_only=True)
        else:
            models_volume = docker.Volume(f"{name}-models", name=cfg.physical("models"), opts=child_opts)
            models_mount = docker.ContainerVolumeArgs(volume_name=models_volume.name, container_path=s.modelPath,
                                                      read_only=True)

        # The schema before any replica: the image's migrations, applied as the owner, then
        # prediction_app given LOGIN and its password (a rotated appDbPassword takes effect on the
        # next `pulumi up`). One-shot: attach waits for the exit; the replicas' database URL exists
        # only once the exit code is 0, so a failed migration fails the deployment before them.
        self.migrate = docker.Container(
            f"{name}-migrate",
            name=cfg.physical("migrate"),
            image=self.image.repo_digest,
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
            labels=[docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
                    docker.ContainerLabelArgs(label="com.prediction.component", value="migrate")],
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        app_db_url = pulumi.Output.all(database.url(app=True), self.migrate.exit_code, self.migrate.name).apply(
            lambda args: _after_migration(*args))

        common_env = [
            pulumi.Output.secret(pulumi.Output.format("PREDICTION_TIMESCALE_URL={0}", app_db_url)),
            pulumi.Output.format("PREDICTION_REDIS_URL={0}", cache.url()),
            f"PREDICTION_MODEL_PATH={s.modelPath}",
            pulumi.Output.format("PREDICTION_API_KEY={0}", self.api_key),
            pulumi.Output.format("PREDICTION_JWT_SECRET={0}", self.jwt_secret),
            "PREDICTION_HOST=0.0.0.0",
            f"PREDICTION_PORT={s.port}",
            f"PREDICTION_LOG_LEVEL={s.logLevel.upper()}",
        ] + [f"{k}={v}" for k, v in sorted(s.env.items())]

        health_probe = ("import urllib.request; "
                        f"urllib.request.urlopen('http://127.0.0.1:{s.port}/health', timeout=3)")
        self.replicas: list[docker.Container] = []
        for i in range(1, s.replicas + 1):
            replica = cfg.physical(f"service-{i}")
            self.replicas.append(docker.Container(
                f"{name}-{i}",
                name=replica,
                hostname=replica,
                image=self.image.repo_digest,
                envs=common_env + [f"PREDICTION_INSTANCE={replica}"],
                networks_advanced=[
                    docker.ContainerNetworksAdvancedArgs(name=networks.app.name),
                    docker.ContainerNetworksAdvancedArgs(name=networks.data.name),
                ],
                volumes=[models_mount],
                healthcheck=docker.ContainerHealthcheckArgs(
                    tests=["CMD", "python", "-c", health_probe],
                    interval="10s", timeout="5s", retries=3, start_period="20s"),
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
                labels=[docker.ContainerLabelArgs(label="com.prediction.stack", value=cfg.stack),
                        docker.ContainerLabelArgs(label="com.prediction.component", value="service")],
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            ))

        self.port = s.port
        self.replica_names = pulumi.Output.all(*[r.name for r in self.replicas])
        self.register_outputs({"replica_names": self.replica_names, "image": self.image.repo_digest,
                               "api_key": self.api_key})

    @staticmethod
    def _secret_or_generated(value: pulumi.Output[str] | None, resource_name: str,
                             opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        if value is not None:
            return pulumi.Output.secret(value)
        return pulumi.Output.secret(random.RandomPassword(resource_name, length=48, special=False, opts=opts).result)


def _after_migration(app_url: str, exit_code: int | None, container: str) -> str:
    """The service's database URL, once the migrate job has exited 0 (None: not known yet, as in a
    preview)."""
    if exit_code not in (None, 0):
        raise RuntimeError(f"the migrate job {container} exited {exit_code}: read `docker logs {container}`, "
                           f"fix the database or the migration, then run pulumi up again")
    return app_url
