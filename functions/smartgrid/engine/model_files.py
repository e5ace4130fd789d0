"""Model files: ONNX bytes plus a JSON metadata file, checked by sha256 before use.

A model directory holds ``<name>.onnx`` and ``<name>.json`` for each of the three models.
Loading refuses an ONNX file whose sha256 differs from its metadata. Only onnxruntime is
needed here; building models needs the ``train`` extra.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smartgrid.engine.atomic import atomic_write_bytes, atomic_write_text
from smartgrid.errors import ModelIntegrityError, ModelNotFoundError

LOAD_FORECAST = "load_forecast"
ANOMALY_DETECTOR = "anomaly_detector"
BASELINE_FORECAST = "baseline_forecast"
MODEL_NAMES: tuple[str, ...] = (LOAD_FORECAST, ANOMALY_DETECTOR, BASELINE_FORECAST)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ModelMetadata:
    name: str
    version: str
    created_at: str
    training_window: dict[str, str]  # {"start": iso, "end": iso}
    resolution_minutes: int
    features: list[str]
    metrics: dict[str, Any]
    sha256: str = ""
    onnx_file: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # model-specific settings for inference

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        missing = {
            "name",
            "version",
            "created_at",
            "training_window",
            "resolution_minutes",
            "features",
            "metrics",
            "sha256",
        } - set(known)
        if missing:
            raise ModelIntegrityError(f"model metadata lacks {sorted(missing)}")
        return cls(**known)


def new_version(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def save_model(directory: str | Path, meta: ModelMetadata, onnx_bytes: bytes) -> ModelMetadata:
    """Write ``<name>.onnx`` and ``<name>.json``; the JSON records the file's sha256."""
    directory = Path(directory)
    meta.sha256 = sha256_hex(onnx_bytes)
    meta.onnx_file = f"{meta.name}.onnx"
    atomic_write_bytes(directory / meta.onnx_file, onnx_bytes)
    atomic_write_text(directory / f"{meta.name}.json", meta.to_json() + "\n")
    return meta


@dataclass
class LoadedModel:
    meta: ModelMetadata
    session: Any  # onnxruntime.InferenceSession

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> list[Any]:
        result: list[Any] = self.session.run(outputs, feeds)
        return result


def read_model_bytes(directory: str | Path, name: str) -> tuple[ModelMetadata, bytes]:
    """Read one model and verify its checksum. Raises if missing or tampered with."""
    directory = Path(directory)
    meta_path = directory / f"{name}.json"
    if not meta_path.is_file():
        raise ModelNotFoundError(f"{name}: metadata {meta_path} not found")
    try:
        meta = ModelMetadata.from_dict(json.loads(meta_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelIntegrityError(f"{name}: metadata {meta_path} is not valid: {exc}") from exc
    onnx_path = directory / (meta.onnx_file or f"{name}.onnx")
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"{name}: model file {onnx_path} not found")
    data = onnx_path.read_bytes()
    actual = sha256_hex(data)
    if actual != meta.sha256:
        raise ModelIntegrityError(
            f"{name}: checksum mismatch for {onnx_path}: metadata says {meta.sha256}, "
            f"file is {actual}; refusing to load"
        )
    return meta, data


def make_session(onnx_bytes: bytes, threads: int = 1) -> Any:
    """An onnxruntime session on the CPU with ``threads`` intra-op threads, quiet logging."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def load_model(directory: str | Path, name: str, threads: int = 1) -> LoadedModel:
    meta, data = read_model_bytes(directory, name)
    try:
        session = make_session(data, threads)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelIntegrityError(f"{name}: onnxruntime could not load the model: {exc}") from exc
    return LoadedModel(meta, session)
