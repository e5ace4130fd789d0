"""Deployment settings: typed, validated, read from CDK context (``cdk.json`` or ``-c key=value``),
never from edits to code. Defaults come from ``smartgrid.catalog`` and docs/requirements.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from smartgrid.catalog import API, Level

ROOT = Path(__file__).resolve().parent.parent
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class DeploySettings(BaseModel):
    """One deployment (an environment). Context keys are the camelCase field names."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    env_name: str = Field(default="dev", pattern=r"^[a-z][a-z0-9-]{1,15}$")
    # prod: tables keep deletion protection and every data store is retained on stack deletion.
    production: bool = False
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    # Escalation level -> addresses subscribed to its topic (email). Empty: subscribe later.
    alert_emails: dict[Level, list[str]] = Field(default_factory=dict)
    # API function. The VM deployment's uvicorn ran 9 workers with limit_concurrency 1000
    # (docs/requirements.md#performance); Lambda runs one request per instance, and an account
    # starts with 1000 concurrent executions in all, so the API reserves 100 (~2000 single
    # forecasts/s at 50 ms, 25 full batches/s at 4 s).
    api_memory_mb: int = Field(default=API.memory_mb, ge=512, le=10_240)
    api_reserved_concurrency: int = Field(default=100, ge=1, le=1000)
    # Stage-wide throttling: limit_concurrency 1000 is the burst; the steady rate half of it.
    api_throttle_rate: float = Field(default=500, gt=0)
    api_throttle_burst: int = Field(default=1000, ge=1)
    # Per API key (usage plan): throttling and a monthly quota of requests.
    client_throttle_rate: float = Field(default=50, gt=0)
    client_throttle_burst: int = Field(default=100, ge=1)
    client_monthly_quota: int = Field(default=1_000_000, ge=1)
    # One API key per client name (the key's id becomes the user id in the API).
    api_clients: list[str] = Field(default_factory=lambda: ["operator"], min_length=1)
    # X-Ray on API Gateway and every function: worth its ~0.5 s of cold-start CPU (the SDK
    # import) for tracing a request through API Gateway, Lambda and DynamoDB.
    xray: bool = True
    # SnapStart: the API's initialised container (models loaded) is restored from a snapshot.
    snap_start: bool = True
    layers_dir: Path = ROOT / "build" / "layers"
    # Incident notices link to `<runbookUrl>#<alarm id>` (e.g. the repository's docs/runbook.md
    # on your Git host); an SSM parameter (SecureString) may hold a chat webhook URL.
    runbook_url: str = "docs/runbook.md"
    chat_webhook_parameter: str | None = Field(default=None, pattern=r"^/?[A-Za-z0-9_.\-/]+$")

    @field_validator("alert_emails", "api_clients", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("alert_emails")
    @classmethod
    def _emails(cls, value: dict[Level, list[str]]) -> dict[Level, list[str]]:
        for level, addresses in value.items():
            for address in addresses:
                if not re.match(EMAIL_PATTERN, address):
                    raise ValueError(f"alertEmails.{level}: {address!r} is not an email address")
        return value

    @field_validator("api_clients")
    @classmethod
    def _clients(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", name):
                raise ValueError(f"apiClients: {name!r} must be lower-case letters, digits and dashes")
        if len(set(value)) != len(value):
            raise ValueError("apiClients: names repeat")
        return value

    @classmethod
    def from_context(cls, node: Any) -> DeploySettings:
        """Every field that the context sets (``-c envName=prod``, ``cdk.json``)."""
        values = {}
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            value = node.try_get_context(alias)
            if value is not None:
                values[alias] = value
        return cls.model_validate(values)

    @property
    def prefix(self) -> str:
        return f"smartgrid-{self.env_name}"

    def layer_zip(self, name: str) -> Path:
        machine = {"x86_64": "x86_64", "arm64": "aarch64"}[self.architecture]  # layers/build.py's names
        path = self.layers_dir / f"{machine}-{name}.zip"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: build the layers first with "
                f"`python3 -m uv run --frozen python layers/build.py --arch {self.architecture}`"
            )
        return path

    def contacts(self, level: Level) -> list[str]:
        return self.alert_emails.get(level, [])
