"""Request and response bodies (pydantic models). Requests are strict: unknown fields, wrong
types and non-finite numbers are refused with the field named. Responses are the routes'
``response_model``: FastAPI validates what a route returns against them before writing it
(GET /models only documents ``ModelList``: see ``api/routers/models.py``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from smartgrid.engine.data import MAX_LOAD_MW, MAX_READINGS, MAX_TEMPERATURE_C, MIN_TEMPERATURE_C, parse_timestamp

# ISO 8601 from 1900 to 2199 (date, optional time with seconds and fraction, optional zone).
TIMESTAMP_PATTERN = (
    r"^(19|20|21)[0-9]{2}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
    r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?$"
)
Timestamp = Annotated[
    str,
    StringConstraints(min_length=10, max_length=40, pattern=TIMESTAMP_PATTERN),
    Field(description="ISO 8601; naive means UTC, offsets are converted", examples=["2026-11-27T23:00:00Z"]),
]
Load = Annotated[float, Field(ge=0, le=MAX_LOAD_MW, description="MW")]
Temperature = Annotated[float, Field(ge=MIN_TEMPERATURE_C, le=MAX_TEMPERATURE_C, description="deg C")]


def _whole(value: Any) -> Any:
    """JSON has one number type: 15.0 is the integer 15, as JSON Schema says (15.5 is not)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds go before the validator: after it, pydantic writes them as "ge"/"le", which are not JSON Schema.
StepMinutes = Annotated[int, Field(ge=5, le=60), BeforeValidator(_whole)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Parallel(Strict):
    """A body of parallel arrays (``parallel_fields``) that must have the same length."""

    parallel_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _same_lengths(self) -> Self:
        _same_length(self, *self.parallel_fields)
        return self


def _same_length(model: BaseModel, *names: str) -> None:
    values = {n: getattr(model, n) for n in names if getattr(model, n) is not None}
    lengths = {n: len(v) for n, v in values.items()}
    if len(set(lengths.values())) > 1:
        text = ", ".join(f"{n} has {k}" for n, k in lengths.items())
        raise ValueError(f"{' and '.join(lengths)} must have the same length ({text})")


class History(Parallel):
    """Readings, either with a timestamp each, or compact: ``start`` and
    ``resolution_minutes`` with one load per step (a third of the bytes; batches of 1000
    sites with two weeks of history fit Lambda's 6 MB request limit only this way)."""

    timestamps: list[Timestamp] | None = Field(default=None, min_length=2, max_length=MAX_READINGS)
    start: Timestamp | None = Field(default=None, description="compact form: time of the first load")
    resolution_minutes: StepMinutes | None = Field(default=None, description="compact form: minutes per step")
    load: list[Load] = Field(min_length=2, max_length=MAX_READINGS)
    temperature: list[Temperature | None] | None = Field(
        default=None, max_length=MAX_READINGS, description="optional; null where unknown"
    )

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_timestamp(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a valid ISO 8601 time") from None
        return value

    parallel_fields = ("timestamps", "load", "temperature")

    @model_validator(mode="after")
    def _form(self) -> History:
        compact = self.start is not None or self.resolution_minutes is not None
        if compact and self.timestamps is not None:
            raise ValueError("give either timestamps, or start and resolution_minutes, not both")
        if not compact and self.timestamps is None:
            raise ValueError("timestamps are required (or start and resolution_minutes)")
        if compact and (self.start is None or self.resolution_minutes is None):
            raise ValueError("the compact form needs both start and resolution_minutes")
        return self

    def timestamp_list(self) -> list[str] | np.ndarray:
        if self.timestamps is not None:
            return self.timestamps
        assert self.start is not None and self.resolution_minutes is not None
        t0 = parse_timestamp(self.start)  # checked by the validator
        return t0 + np.arange(len(self.load)) * np.timedelta64(self.resolution_minutes * 60, "s")


class TemperatureForecast(Parallel):
    parallel_fields = ("timestamps", "temperature")

    timestamps: list[Timestamp] = Field(min_length=1, max_length=288)
    temperature: list[Temperature] = Field(min_length=1, max_length=288)


class PredictRequest(Strict):
    """One site's recent history. The forecast covers the day after the last reading. The
    primary model needs 14 whole days ending at midnight UTC without gaps in the last 28; with
    less the fallback answers (and says why)."""

    site_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    history: History
    temperature_forecast: TemperatureForecast | None = None


class BatchRequest(Strict):
    requests: list[Any] = Field(
        min_length=1,
        description="PredictRequest bodies; each is validated on its own, so one bad item does not sink the others",
        json_schema_extra={"items": {"$ref": "#/components/schemas/PredictRequest"}},
    )


class DetectRequest(Parallel):
    parallel_fields = ("timestamps", "load")

    timestamps: list[Timestamp] = Field(min_length=2, max_length=MAX_READINGS)
    load: list[Load] = Field(min_length=2, max_length=MAX_READINGS)
    threshold: float | None = Field(default=None, gt=0, lt=1)


class ActualsRequest(Parallel):
    parallel_fields = ("timestamps", "load")

    prediction_id: Annotated[str, StringConstraints(min_length=26, max_length=26, pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")]
    timestamps: list[Timestamp] = Field(min_length=1, max_length=288)
    load: list[Load] = Field(min_length=1, max_length=288)


# ---------------------------------------------------------------- responses
class ForecastStep(BaseModel):
    timestamp: str
    p10: float
    p50: float
    p90: float


class Prediction(BaseModel):
    prediction_id: str | None = Field(
        description="null when the prediction was served but not stored (stored: false): no id to quote"
    )
    stored: bool = Field(
        description="false when the predictions table was down: the forecast is served but not recorded, so "
        "it cannot take actuals or appear in /predictions; send an Idempotency-Key to get a 503 instead"
    )
    created_at: str
    site_id: str | None
    model: str
    model_kind: Literal["primary", "fallback"]
    model_version: str
    fallback_reason: str | None
    resolution_minutes: int
    cached: bool
    forecast: list[ForecastStep]


class FieldError(BaseModel):
    field: str | None
    code: str
    message: str
    rows: list[int] = []


class ProblemDetails(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []
    correlation_id: str | None = None


class BatchItem(BaseModel):
    index: int
    status: Literal["ok", "error"]
    prediction: Prediction | None = None
    error: ProblemDetails | None = None


class BatchResponse(BaseModel):
    succeeded: int
    failed: int
    results: list[BatchItem]


class PredictionPage(BaseModel):
    items: list[Prediction]
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded", "critical"]
    uptime: int
    models_loaded: int
    database: Literal["connected", "disconnected"]
    cache: Literal["connected", "disconnected"]
    timestamp: str


class ModelInfo(BaseModel):
    name: str
    loaded: bool
    version: str | None = None
    created_at: str | None = None
    training_window: dict[str, Any] | None = None
    resolution_minutes: int | None = None
    metrics: dict[str, Any] | None = None
    sha256: str | None = None
    error: str | None = None


class ModelList(BaseModel):
    set_id: str | None = Field(
        default=None, description="The registry's model set serving (null: the models bundled with the code)"
    )
    models: list[ModelInfo]


class AnomalyReading(BaseModel):
    timestamp: str
    load: float | None
    score: float
    label: str
    anomaly: bool


class DetectResponse(BaseModel):
    model_version: str
    threshold: float
    flagged: int
    readings: list[AnomalyReading]


class ActualPoint(BaseModel):
    timestamp: str
    actual: float
    p10: float
    p50: float
    p90: float
    abs_error: float
    within_interval: bool


class ActualsResponse(BaseModel):
    prediction_id: str
    model: str
    model_version: str
    count: int
    mae: float
    points: list[ActualPoint]
