"""Typed configuration, validated once at start-up (cold start on Lambda).

Everything that varies between environments comes from environment variables with the
``SMARTGRID_`` prefix. Domain code receives a ``Settings`` object; it never reads
``os.environ`` itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL_DIR = PACKAGE_DIR / "engine" / "models" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTGRID_", extra="ignore")

    model_dir: Path = Field(default=BUNDLED_MODEL_DIR, description="Directory of ONNX models")
    holiday_country: str = Field(default="US", min_length=2, max_length=3)
    holiday_subdivision: str | None = None
    # onnxruntime: one intra-op thread beat the default on 2 shared cores (1000 rows through a
    # 200-tree prototype model: 4.0 ms against 8.0 ms).
    ort_threads: int = Field(default=1, ge=1, le=64)
    # LightGBM threads when training. OpenMP threads spin while waiting: on a machine whose
    # cores are busy (parallel test workers, other jobs) more threads than free cores made
    # training 30x slower, so tests run with 1.
    train_threads: int = Field(default=2, ge=1, le=64)
    # Readings that repeat the same value this long are a flatline (bad meter data).
    flatline_hours: float = Field(default=6.0, gt=0)
    anomaly_threshold: float = Field(default=0.5, gt=0, lt=1)
    # Readings stamped later than the server's clock by more than this are refused (422, or a
    # rejected meter file): a meter or client clock set wrong, or a local time east of UTC sent
    # as UTC, would otherwise be forecast "from the future" and stored as actuals retraining
    # learns from (a zone west of UTC lands in the past and cannot be told from old data).
    # 15 minutes absorbs ordinary clock drift and a reading of a 15-minute interval stamped at
    # its end; an hourly reading of an interval not yet over is refused.
    max_clock_skew_s: int = Field(default=900, ge=0, le=86_400)

    # --- AWS: every client honours AWS_ENDPOINT_URL (moto in-process, a moto server, or AWS)
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    aws_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    predictions_table: str = "smartgrid-predictions"
    actuals_table: str = "smartgrid-actuals"
    cache_table: str = "smartgrid-cache"
    idempotency_table: str = "smartgrid-idempotency"
    # S3 buckets and SNS topics (the CDK app sets their deployed names).
    models_bucket: str = "smartgrid-models"
    backups_bucket: str = "smartgrid-backups"
    meter_data_bucket: str = "smartgrid-meter-data"
    alert_topics: dict[str, str] = Field(default_factory=dict)  # escalation level (L1..L3) -> topic ARN
    api_url: str | None = None  # the deployed API's base URL (the health probe calls its /health)

    # --- Incident notifications (docs/requirements.md#incidents)
    incidents_table: str = "smartgrid-incidents"
    chat_webhook_parameter: str | None = None  # SSM parameter (SecureString) holding a chat webhook URL
    runbook_url: str = "docs/runbook.md"  # where the runbook is read; notices link to `<runbook_url>#<alarm id>`
    service_display_name: str = "SmartGrid API"  # the SERVICE field of incident notices

    # --- Jobs (backup, retraining, ingestion, usage report). Key prefixes inside the buckets:
    # models bucket: model sets under ``models/<set id>/`` and the champion pointer and
    # retraining decisions under ``registry/``; backups bucket: ``backups/<backup id>/``;
    # meter-data bucket: files arrive under ``incoming/`` (catalog.METER_DATA_PREFIX), accepted
    # readings are stored under ``accepted/``, rejected files moved to ``rejected/``.
    model_refresh_s: int = Field(default=300, ge=0)  # API containers check the champion pointer this often
    model_cache_dir: Path = Path("/tmp/smartgrid-models")  # where a container keeps downloaded model sets
    retrain_holdout_days: int = Field(default=14, ge=1, le=90)  # champion and challenger scored on these
    # Retraining trains on at most this many days of readings before the holdout (the newest);
    # older accepted files are not read.
    retrain_max_days: int = Field(default=730, ge=1, le=36_500)
    # DynamoDB calls from the API: short timeouts so a slow dependency degrades, not hangs.
    dynamodb_connect_timeout_s: float = Field(default=1.0, gt=0, le=10)
    dynamodb_read_timeout_s: float = Field(default=2.0, gt=0, le=30)
    dynamodb_max_retries: int = Field(default=2, ge=0, le=10)

    # --- API (limits: docs/requirements.md#performance)
    # "keys": x-api-key is checked against api_keys (user id -> sha256 of the key), for the
    # local run and tests. "api_gateway": API Gateway has already checked the key against its
    # usage plan; the user id is the key's id from the request context.
    auth_mode: Literal["keys", "api_gateway"] = "keys"
    api_keys: dict[str, str] = Field(default_factory=dict)
    max_batch_size: int = Field(default=1000, ge=1, le=10_000)  # docs/requirements.md#performance
    # Lambda's synchronous payload limit is 6 MB; refuse bigger bodies before parsing.
    max_body_bytes: int = Field(default=6_000_000, ge=1024)
    cache_ttl_s: int = Field(default=300, ge=0)  # 5 minutes: docs/requirements.md#performance
    cache_retry_after_s: float = Field(default=30.0, ge=0)  # after a cache failure, skip it this long
    prediction_retention_days: int = Field(default=400, ge=1)
    idempotency_ttl_s: int = Field(default=86_400, ge=60)
    idempotency_in_progress_s: int = Field(default=60, ge=1)
    health_timeout_s: float = Field(default=0.8, gt=0, lt=1)  # /health answers within a second


def env_var(setting: str) -> str:
    """The environment variable that sets a Settings field (what the CDK app sets)."""
    field = Settings.model_fields[setting]
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{setting}".upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
