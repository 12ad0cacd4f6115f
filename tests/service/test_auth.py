"""Auth on /api/v1/*: X-API-Key or a Bearer HS256 JWT with exp; everything else is a JSON 401."""
from __future__ import annotations

import time

import jwt
import pytest

from service_support import API_KEY, IRIS, JWT_SECRET


def token(secret=JWT_SECRET, exp_in=300, algorithm="HS256", **claims):
    payload = {"sub": "tester", **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time()) + exp_in
    return jwt.encode(payload, secret, algorithm=algorithm)


CASES = [
    # id, headers (made at test time: a JWT minted at collection could expire before its test runs),
    # expected status, message fragment (for 401s)
    ("valid api key", lambda: {"X-API-Key": API_KEY}, 200, None),
    ("valid jwt", lambda: {"Authorization": f"Bearer {token()}"}, 200, None),
    ("missing credentials", lambda: {}, 401, "missing credentials"),
    ("wrong api key", lambda: {"X-API-Key": API_KEY[:-1] + "x"}, 401, "invalid API key"),
    ("empty api key", lambda: {"X-API-Key": ""}, 401, "invalid API key"),
    ("api key prefix", lambda: {"X-API-Key": API_KEY[:8]}, 401, "invalid API key"),
    ("expired jwt", lambda: {"Authorization": f"Bearer {token(exp_in=-3600)}"}, 401, "token expired"),
    ("jwt without exp", lambda: {"Authorization": f"Bearer {token(exp_in=None)}"}, 401, "no exp claim"),
    ("jwt wrong secret", lambda: {"Authorization": f"Bearer {token(secret='another-secret-0123456789abcdef0123')}"}, 401,
     "signature is invalid"),
    ("jwt HS512", lambda: {"Authorization": f"Bearer {token(secret=JWT_SECRET * 2, algorithm='HS512')}"}, 401, "HS256"),
    ("garbage token", lambda: {"Authorization": "Bearer not.a.jwt"}, 401, "invalid token"),
    ("basic scheme", lambda: {"Authorization": "Basic dXNlcjpwdw=="}, 401, "Bearer <JWT>"),
    ("bearer without token", lambda: {"Authorization": "Bearer "}, 401, "Bearer <JWT>"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_predict_auth(client, case):
    _, headers, status, fragment = case
    resp = await client.post("/api/v1/models/iris/predict", json=IRIS, headers=headers())
    assert resp.status == status, await resp.text()
    if status == 401:
        error = (await resp.json())["error"]
        assert error["code"] == "unauthorized"
        assert fragment in error["message"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_models_listing_auth(client, case):
    _, headers, status, _ = case
    resp = await client.get("/api/v1/models", headers=headers())
    assert resp.status == status


async def test_auth_is_checked_before_the_model_is_looked_up(client):
    """An unauthenticated caller learns nothing about which models exist."""
    resp = await client.post("/api/v1/models/secret-model/predict", json=IRIS)
    assert resp.status == 401
