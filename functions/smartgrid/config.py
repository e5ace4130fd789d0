"""Typed configuration, validated once at start-up (cold start on Lambda).

Everything that varies between environments comes from environment variables with the
``SMARTGRID_`` prefix. Domain code receives a ``Settings`` object; it never reads
``os.environ`` itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL_DIR = PACKAGE_DIR / "models" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTGRID_", extra="ignore")

    model_dir: Path = Field(default=BUNDLED_MODEL_DIR, description="Directory of ONNX models")
    holiday_country: str = Field(default="US", min_length=2, max_length=3)
    holiday_subdivision: str | None = None
    # onnxruntime: one intra-op thread beat the default on 2 shared cores (shared/notes).
    ort_threads: int = Field(default=1, ge=1, le=64)
    # LightGBM threads when training. OpenMP threads spin while waiting: on a machine whose
    # cores are busy (parallel test workers, other jobs) more threads than free cores made
    # training 30x slower, so tests run with 1.
    train_threads: int = Field(default=2, ge=1, le=64)
    # Readings that repeat the same value this long are a flatline (bad meter data).
    flatline_hours: float = Field(default=6.0, gt=0)
    anomaly_threshold: float = Field(default=0.5, gt=0, lt=1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
