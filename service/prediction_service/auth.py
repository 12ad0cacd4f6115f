"""Authentication of ``/api/v1/*``: ``X-API-Key`` or ``Authorization: Bearer <HS256 JWT with exp>``.

The API key is compared in constant time. JWTs must be HS256, signed with PREDICTION_JWT_SECRET,
and carry an ``exp`` claim (checked, no leeway beyond 10 s of clock skew). Anything else is a 401
JSON error whose message says what is missing or wrong — never which part of a key matched.
"""
from __future__ import annotations

import hmac

import jwt

from .errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="prediction-service"'}
LEEWAY_SECONDS = 10


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers=_CHALLENGE)


class Authenticator:
    """Checks one request's credentials against the configured API key and JWT secret."""

    __slots__ = ("_key", "_secret")

    def __init__(self, api_key: str, jwt_secret: str):
        self._key = api_key.encode()
        self._secret = jwt_secret

    def check(self, headers) -> None:
        """Return when the request is authenticated; raise a 401 ApiError otherwise."""
        key = headers.get("X-API-Key")
        if key is not None:
            # Header values may carry any byte; surrogateescape keeps the comparison total.
            if hmac.compare_digest(key.encode("utf-8", "surrogateescape"), self._key):
                return
            raise _unauthorized("invalid API key")
        auth = headers.get("Authorization")
        if auth is None:
            raise _unauthorized("missing credentials: send header X-API-Key or Authorization: Bearer <JWT>")
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("Authorization header must be 'Bearer <JWT>'")
        try:
            jwt.decode(token.strip(), self._secret, algorithms=["HS256"], leeway=LEEWAY_SECONDS,
                       options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.MissingRequiredClaimError:
            raise _unauthorized("token has no exp claim; tokens must expire") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized("token must be signed with HS256") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {str(exc)[:120]}") from None
        except Exception:  # noqa: BLE001 — malformed input must stay a 401, never a 500
            raise _unauthorized("invalid token") from None
