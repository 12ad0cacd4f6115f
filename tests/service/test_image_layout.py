"""service/Dockerfile without a Docker daemon: assemble /app exactly as its COPY lines do, then run
the image's commands (migrate, serve, HEALTHCHECK) from that tree."""
from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2

from service_support import SERVICE_DIR, ServiceProcess, service_env

DOCKERFILE = (SERVICE_DIR / "Dockerfile").read_text()


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
                return True
        elif fnmatch.fnmatch(parts[0], pat) or fnmatch.fnmatch(rel, pat):
            return True
    return False


def assemble_app(dest):
    """Copy what the Dockerfile copies from the build context (minus .dockerignore) into dest."""
    patterns = [line.strip() for line in (SERVICE_DIR / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for src, target in re.findall(r"^COPY\s+(\S+)\s+(\S+)\s*$", DOCKERFILE, flags=re.M):
        source = SERVICE_DIR / src
        if source.is_file():
            shutil.copy(source, dest / (source.name if target == "." else target))
            continue
        for path in source.rglob("*"):
            rel = str(path.relative_to(SERVICE_DIR))
            if path.is_file() and not _ignored(rel, patterns):
                out = dest / target / path.relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, out)
    return dest


def test_dockerfile_basics():
    assert re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.M) == ["python:3.11-slim"]
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, flags=re.M)
    assert 'CMD ["python", "-m", "prediction_service"]' in DOCKERFILE


def test_image_tree_migrates_serves_and_passes_its_healthcheck(tmp_path, demo_models, redis_server, fresh_db):
    app_dir = assemble_app(tmp_path)
    assert sorted(p.name for p in app_dir.iterdir()) == ["migrations", "prediction_service", "requirements.txt"]
    assert not list(app_dir.rglob("__pycache__"))

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(app_dir), "PREDICTION_TIMESCALE_URL": fresh_db}
    proc = subprocess.run([sys.executable, "-m", "prediction_service", "migrate"], cwd=app_dir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('predictions') IS NOT NULL")
        assert cur.fetchone()[0]

    svc = ServiceProcess(service_env(demo_models, redis_server.url, fresh_db, db_logging="true"), app_dir=app_dir)
    try:
        healthcheck = re.search(r'CMD (python -c ".*")$', DOCKERFILE, flags=re.M).group(1)
        check = subprocess.run(healthcheck, shell=True, env={**env, "PREDICTION_PORT": str(svc.port)},
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    finally:
        svc.stop()
