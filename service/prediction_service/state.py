"""What the handlers share: settings, models, cache, writer — created once per application."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .auth import Authenticator
from .cache import PredictionCache, RedisTier
from .config import Settings
from .deadlines import Deadlines
from .models import ModelRegistry
from .repeats import Repeats


@dataclass
class ServiceState:
    settings: Settings
    registry: ModelRegistry
    auth: Authenticator
    cache: PredictionCache
    openapi_body: bytes  # the document for clients of this instance
    openapi_gateway_body: bytes  # ... and for clients of the nginx gateway (see openapi.py)
    deadlines: Deadlines  # the per-request timeout of API requests (middleware.py)
    repeats: Repeats  # answers to exact repeats of a request, remembered (repeats.py)
    redis: RedisTier | None = None
    writer: object | None = None  # storage.PredictionWriter when PREDICTION_DB_LOGGING is on
    in_flight: int = 0
    shutting_down: bool = False  # set when SIGTERM starts the graceful shutdown


STATE = web.AppKey("state", ServiceState)
