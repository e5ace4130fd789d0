"""Real-shaped API Gateway events (REST v1 and HTTP API v2) and a small client that calls
the Lambda handler with them, as API Gateway would."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.helpers.env import API_KEYS


@dataclass
class LambdaContext:
    function_name: str = "smartgrid-api"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:smartgrid-api"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"


def rest_event(
    method: str, path: str, body: str | None, headers: dict[str, str], query: dict[str, str] | None
) -> dict[str, Any]:
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": "/prod" + path,
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": 1795860000000,
            "protocol": "HTTP/1.1",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest", "apiKey": headers.get("x-api-key")},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def http_event(
    method: str, path: str, body: str | None, headers: dict[str, str], query: dict[str, str] | None
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": headers,
        "queryStringParameters": query or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "def456",
            "domainName": "def456.execute-api.us-east-1.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795860000000,
        },
        "body": body,
        "isBase64Encoded": False,
    }


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Client:
    """Calls a Lambda handler with API Gateway events; ``kind`` is "rest" or "http"."""

    def __init__(self, handler: Any, kind: str = "rest", user: str | None = "alice") -> None:
        self.handler = handler
        self.kind = kind
        self.user = user

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        user: str | None = "default",
    ) -> Response:
        h = {"content-type": "application/json", "host": "api.smartgrid.test"}
        who = self.user if user == "default" else user
        if who is not None:
            h["x-api-key"] = API_KEYS[who]
        h.update(headers or {})
        text = raw if raw is not None else (None if body is None else json.dumps(body))
        make = rest_event if self.kind == "rest" else http_event
        out = self.handler(make(method, path, text, h, query), LambdaContext())
        hdrs = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
        for k, v in (out.get("multiValueHeaders") or {}).items():
            hdrs[k.lower()] = v[-1]
        text = out.get("body") or ""
        if out.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        return Response(out["statusCode"], hdrs, text)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)


def app_client(settings: Any, service: Any, kind: str = "rest") -> Client:
    """A Client for an app this test makes (``create_app(settings, service)``: other settings,
    models or store than the module-level handler's), behind Mangum configured as in
    smartgrid/api/handler.py."""
    from mangum import Mangum
    from mangum.adapter import DEFAULT_TEXT_MIME_TYPES

    from smartgrid.api.app import create_app
    from smartgrid.catalog import PROBLEM_JSON

    types = [*DEFAULT_TEXT_MIME_TYPES, PROBLEM_JSON]
    return Client(Mangum(create_app(settings, service), lifespan="off", text_mime_types=types), kind)
