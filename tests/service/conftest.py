"""Fixtures of the service tests: demo models, settings, the app in-process.

Everything runs against the real throwaway PostgreSQL and Redis of tests/conftest.py; helpers and
constants live in service_support.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from prediction_service.config import Settings, load_settings
from service_support import load_training_module, service_env


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """The demo models, trained once per session into a temp folder (same code as `make model`)."""
    out = tmp_path_factory.mktemp("models")
    load_training_module().train(out)
    return out


@pytest.fixture
def make_settings(demo_models, redis_server, postgres):
    """Settings for the in-process app; each call may override variables (short names)."""
    redis_server.client().flushall()

    def make(**overrides) -> Settings:
        overrides.setdefault("timescale_url", postgres.dsn())
        overrides.setdefault("redis_url", redis_server.url)
        overrides.setdefault("model_path", demo_models)
        env = service_env(overrides.pop("model_path"), overrides.pop("redis_url"),
                          overrides.pop("timescale_url"), **overrides)
        return load_settings(env)

    return make


@pytest.fixture
async def client(aiohttp_client, make_settings):
    """The app (DB logging off) on a real local port, with a client; Redis flushed first."""
    from prediction_service.app import create_app

    return await aiohttp_client(create_app(make_settings()))
