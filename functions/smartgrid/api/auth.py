"""Authentication: the ``Authenticator`` that turns an API key (or, behind API Gateway, the
gateway's identity) into a user id, the ``x-api-key`` security scheme the OpenAPI document
names, the ``current_user`` and ``docs_user`` dependencies, and ``hash_key``, the digest of a key
that SMARTGRID_API_KEYS stores. A missing key is a 401, a wrong one a 403 (``AuthError``)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Header, Query, Request, Security
from fastapi.security import APIKeyHeader

from smartgrid.config import Settings
from smartgrid.errors import AuthError


def hash_key(key: str) -> str:
    """The digest stored in SMARTGRID_API_KEYS for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth_mode
        self._by_digest = {d.lower(): user for user, d in settings.api_keys.items()}

    def __call__(self, request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
        if self.mode == "api_gateway":
            return self._from_gateway(request)
        if not x_api_key:
            raise AuthError(401, "missing API key: send it in the x-api-key header")
        d = hash_key(x_api_key)
        for known, user in self._by_digest.items():
            if hmac.compare_digest(known, d):
                return user
        raise AuthError(403, "invalid API key")

    @staticmethod
    def _from_gateway(request: Request) -> str:
        ctx = (request.scope.get("aws.event") or {}).get("requestContext") or {}
        key_id = (ctx.get("identity") or {}).get("apiKeyId")  # REST API with a usage plan
        if key_id:
            return str(key_id)
        auth = ctx.get("authorizer") or {}
        user = (auth.get("lambda") or {}).get("user_id") or ((auth.get("jwt") or {}).get("claims") or {}).get("sub")
        if user:
            return str(user)
        raise AuthError(401, "missing API key: send it in the x-api-key header")


# The OpenAPI document's security scheme; a missing key is the Authenticator's 401, not FastAPI's.
API_KEY = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    auto_error=False,
    description="The API key (missing: 401, not valid: 403). Behind API Gateway, the gateway checks it.",
)


async def current_user(request: Request, x_api_key: Annotated[str | None, Security(API_KEY)] = None) -> str:
    """The caller's user id, from the API key (never from the body). ``async``: FastAPI runs
    a plain ``def`` dependency in a worker thread, per request."""
    auth: Authenticator = request.app.state.authenticator
    return auth(request, x_api_key)


async def docs_user(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> str:
    """For /docs and /openapi.json only: the key may also come as ``?api_key=`` so that a
    browser can open the docs, which need an API key like every route but /health
    (test_docs_need_a_key)."""
    auth: Authenticator = request.app.state.authenticator
    return auth(request, x_api_key or api_key)
