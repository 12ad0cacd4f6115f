"""The images the stacks run, checked against the contracts the Pulumi program relies on: the local
stand-ins of the upstream images (the entrypoint contract of the TimescaleDB image above all) and
the service image built offline from service/Dockerfile."""
import io
import tarfile
import time

import docker
import pytest

from docker_support import exec_lines

from stack_emulator.images import LOCAL_BUILD, RECIPES

PINNED = {f"{repository}:{tag}" for repository, recipe in RECIPES.items() for tag in recipe.tags}


@pytest.fixture(scope="module")
def images(docker_engine, dev):
    """Every image of the dev stack (started once, so every image is built)."""
    return {ref: docker_engine.images.get(image_id) for ref, image_id in dev.run.images().items()}


def _run(client, image, command, stderr: bool = False, **kwargs) -> str:
    """``docker run --rm``: the output, ContainerError on a non-zero exit. Removed with its anonymous
    volumes (redis, TimescaleDB and Prometheus declare VOLUMEs), which ``containers.run(remove=True)``
    leaves behind."""
    c = client.containers.run(image, command, detach=True, **kwargs)
    try:
        status = c.wait(timeout=120)["StatusCode"]
        out = c.logs(stdout=True, stderr=stderr)
        if status != 0:
            raise docker.errors.ContainerError(c, status, command, image, c.logs(stdout=False, stderr=True))
        return out.decode()
    finally:
        c.remove(v=True, force=True)


def test_every_stand_in_is_labelled_as_a_local_build(images):
    stand_ins = {ref for ref, image in images.items() if (image.labels or {}).get(LOCAL_BUILD)}
    assert stand_ins == PINNED & set(images), "local builds must say so (label com.prediction.local-build)"
    for ref in stand_ins:
        assert images[ref].labels[LOCAL_BUILD] == ref


@pytest.mark.parametrize("ref, user, expected", [
    ("timescale/timescaledb:2.17.2-pg15", "postgres", "uid=70(postgres) gid=70(postgres)"),
    ("redis:7.4.1", "redis", "uid=999(redis) gid=999(redis)"),
    ("nginx:1.27.3", "nginx", "uid=101(nginx) gid=101(nginx)"),
    ("prom/prometheus:v2.55.1", "nobody", "uid=65534(nobody)"),
    ("prometheuscommunity/postgres-exporter:v0.11.1", "nobody", "uid=65534(nobody)"),
])
def test_stand_ins_have_the_upstream_users(docker_engine, images, ref, user, expected):
    out = _run(docker_engine, ref, ["id", user], entrypoint=[])
    assert out.startswith(expected)


def test_gateway_image_is_nginx_1_27_3(docker_engine, images):
    out = _run(docker_engine, "nginx:1.27.3", ["nginx", "-V"], stderr=True)
    assert "nginx/1.27.3" in out and "--with-http_ssl_module" in out


def _put(container, path: str, content: str, mode: int = 0o644):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        data = content.encode()
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    container.put_archive("/", buf.getvalue())


def test_timescaledb_image_honours_the_postgres_entrypoint_contract(docker_engine, images):
    c = docker_engine.containers.create(
        "timescale/timescaledb:2.17.2-pg15", environment={
            "POSTGRES_USER": "owner", "POSTGRES_PASSWORD": "s3cret-pw", "POSTGRES_DB": "appdb",
            "TIMESCALEDB_TELEMETRY": "off"})
    try:
        _put(c, "/docker-entrypoint-initdb.d/010_table.sql", "CREATE TABLE seen (x int); INSERT INTO seen VALUES (1);")
        _put(c, "/docker-entrypoint-initdb.d/020_script.sh",
             'psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "INSERT INTO seen VALUES (2)"\n', 0o755)
        c.start()
        deadline = time.monotonic() + 90
        while "ready for start up" not in c.logs().decode() and time.monotonic() < deadline:
            time.sleep(0.5)

        def sql(query: str) -> str:
            # Over TCP with the password: what the service and the ops roles do.
            return "\n".join(exec_lines(c, ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "owner",
                                            "-d", "appdb", "-c", query], environment={"PGPASSWORD": "s3cret-pw"}))

        for _ in range(60):
            if c.exec_run(["pg_isready", "-h", "127.0.0.1", "-U", "owner", "-d", "appdb"]).exit_code == 0:
                break
            time.sleep(0.5)
        assert sql("SELECT string_agg(x::text, ',' ORDER BY x) FROM seen") == "1,2"  # both init scripts, in order
        assert sql("SHOW shared_preload_libraries") == "timescaledb"
        assert sql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'") == "2.17.2"
        assert sql("SHOW timescaledb.telemetry_level") == "off"
        assert sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'") == "t"
        wrong = c.exec_run(["psql", "-h", "127.0.0.1", "-U", "owner", "-d", "appdb", "-c", "SELECT 1"],
                           environment={"PGPASSWORD": "wrong"})
        assert wrong.exit_code != 0 and "password authentication failed" in wrong.output.decode()
        pid1 = exec_lines(c, ["sh", "-c", "stat -c %U /proc/1; cat /proc/1/comm"])
        assert pid1 == ["postgres", "postgres"]  # PID 1 is the server, as the postgres user
        mode = exec_lines(c, ["stat", "-c", "%a %U", "/var/lib/postgresql/data"])
        assert mode == ["700 postgres"]
    finally:
        c.remove(force=True, v=True)


def test_timescaledb_image_refuses_to_initialise_without_a_password(docker_engine, images):
    c = docker_engine.containers.run("timescale/timescaledb:2.17.2-pg15", detach=True)
    try:
        assert c.wait(timeout=60)["StatusCode"] != 0
        assert "POSTGRES_PASSWORD is not set" in c.logs().decode()
    finally:
        c.remove(force=True, v=True)


def test_service_image_runs_unprivileged_without_build_leftovers(docker_engine, dev):
    image = dev.run.images()["prediction-service:dev"]
    out = _run(docker_engine, image, ["sh", "-c", "id -u; ls /wheelhouse 2>&1; command -v gcc || echo no-gcc; "
                                                  "python -c 'import onnxruntime, aiohttp, psycopg2; print(1)'"])
    uid, wheelhouse, gcc, imports = out.strip().splitlines()
    assert uid == "10001"
    assert "No such file" in wheelhouse  # the offline wheels stayed in the build stage
    assert gcc == "no-gcc"
    assert imports == "1"
    config = docker_engine.images.get(image).attrs["Config"]
    assert config["Healthcheck"]["Test"][0] == "CMD-SHELL" and "/health" in config["Healthcheck"]["Test"][1]
    assert config["StopSignal"] == "SIGTERM"
