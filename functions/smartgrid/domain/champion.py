"""The model registry in the models bucket: model sets, the champion pointer, decisions.

Layout (``Settings.models_bucket``):

- ``models/<set id>/``: one model set, the three ``<name>.onnx`` + ``<name>.json`` (as in a
  local model directory, see ``smartgrid.engine.model_files``) and ``set.json`` (set id, created_at, training
  window, MAPE on its evaluation, source, and the sha256 of every object of the set). The
  three models' metadata carry the set id as their ``version``. Sets are immutable: each
  object is written only if absent.
- ``registry/champion.json``: ``{set_id, previous_set_id, promoted_at, reason}``, the set the
  API serves. Promotion is ONE PutObject of this pointer, made only after every object of
  the set is uploaded and re-read with matching sha256, and only if the pointer is still the
  one read before (a conditional write): a crash or a concurrent promotion at any earlier
  point leaves the champion serving.
- ``registry/decisions/<timestamp>.json``: why the pointer moved or did not (retraining,
  publish, rollback).

API containers follow the pointer with ``ChampionWatcher``. Only ``smartgrid.store.models_bucket``
talks to S3.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smartgrid.config import Settings
from smartgrid.engine.atomic import staged_directory
from smartgrid.engine.forecast import ModelSet
from smartgrid.engine.model_files import LOAD_FORECAST, MODEL_NAMES, ModelMetadata, read_model_bytes, sha256_hex
from smartgrid.errors import (
    ConflictError,
    DependencyUnavailableError,
    ModelIntegrityError,
    ModelNotFoundError,
    NotFoundError,
)
from smartgrid.observability import logger
from smartgrid.store import models_bucket as store

SETS_PREFIX = "models/"
CHAMPION_KEY = "registry/champion.json"
DECISIONS_PREFIX = "registry/decisions/"
SET_FILE = "set.json"
SET_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
# The API downloads a newly promoted set inside a request (API Gateway gives up at 29 s): with
# the quick client (1 s connect, 2 s read, 2 attempts) and at most this long in all; past it,
# the current models keep serving and the next poll tries again.
WATCHER_DOWNLOAD_BUDGET_S = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_now(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_prefix(set_id: str) -> str:
    return f"{SETS_PREFIX}{set_id}/"


def new_set_id(onnx_sha256: list[str], now: datetime) -> str:
    """``<UTC time>-<first 8 hex of the digest of the three models' sha256>``: sorts by
    creation, and says at a glance whether two sets hold the same models."""
    return f"{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{sha256_hex('|'.join(onnx_sha256).encode())[:8]}"


def _check_set_id(set_id: str) -> str:
    if not SET_ID_RE.match(set_id):
        raise ModelIntegrityError(f"{set_id!r} is not a model set id (expected e.g. 20261201T000012Z-1a2b3c4d)")
    return set_id


# ------------------------------------------------------------------------- records
@dataclass
class Champion:
    set_id: str
    previous_set_id: str | None
    promoted_at: str
    reason: str
    etag: str = field(default="", repr=False, compare=False)  # for the next conditional write

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("etag")
        return d

    @classmethod
    def parse(cls, data: bytes, etag: str = "") -> Champion:
        try:
            d = json.loads(data)
            return cls(str(d["set_id"]), d.get("previous_set_id"), str(d["promoted_at"]), str(d["reason"]), etag)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{CHAMPION_KEY} is not a valid champion pointer: {exc}") from exc


@dataclass
class SetInfo:
    """``set.json``: what a set is, where it came from, and how well it did."""

    set_id: str
    created_at: str
    training_window: dict[str, str]
    mape: float | None  # MAPE (%) of P50 on ``evaluation``
    evaluation: dict[str, Any]
    source: str
    objects: dict[str, str]  # file name -> sha256 of the object as stored
    models: dict[str, dict[str, Any]]  # model name -> its sha256 and original version

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> SetInfo:
        try:
            d = json.loads(data)
            known = {k: d[k] for k in cls.__dataclass_fields__}
            info = cls(**known)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{where} is not a valid set description: {exc}") from exc
        expected = {f"{n}.{ext}" for n in MODEL_NAMES for ext in ("onnx", "json")}
        if set(info.objects) != expected:
            raise ModelIntegrityError(f"{where} lists {sorted(info.objects)}, expected {sorted(expected)}")
        return info


@dataclass
class PreparedSet:
    """A set ready to upload: its objects' bytes and its ``set.json``."""

    info: SetInfo
    objects: dict[str, bytes]


def prepare_set(
    directory: str | Path,
    source: str,
    *,
    mape: float | None = None,
    evaluation: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> PreparedSet:
    """Read a local model directory (each ONNX checked against its metadata's sha256) and
    make it one set: the set id becomes every model's ``version``. Raises
    ``ModelNotFoundError``/``ModelIntegrityError`` if any of the three is missing or bad."""
    now = now or utcnow()
    read: dict[str, tuple[ModelMetadata, bytes]] = {n: read_model_bytes(directory, n) for n in MODEL_NAMES}
    set_id = new_set_id([read[n][0].sha256 for n in MODEL_NAMES], now)
    objects: dict[str, bytes] = {}
    models: dict[str, dict[str, Any]] = {}
    for name, (meta, onnx) in read.items():
        models[name] = {"sha256": meta.sha256, "version": meta.version, "created_at": meta.created_at}
        meta.version = set_id
        meta.onnx_file = f"{name}.onnx"
        objects[f"{name}.onnx"] = onnx
        objects[f"{name}.json"] = (meta.to_json() + "\n").encode()
    primary = read[LOAD_FORECAST][0]
    if mape is None and isinstance(primary.metrics.get("holdout_mape"), int | float):
        mape = float(primary.metrics["holdout_mape"])
        evaluation = evaluation or {"kind": f"{LOAD_FORECAST} holdout at training (its metadata's holdout_mape)"}
    info = SetInfo(
        set_id=set_id,
        created_at=iso_now(now),
        training_window=dict(primary.training_window),
        mape=None if mape is None else round(mape, 4),
        evaluation=evaluation or {},
        source=source,
        objects={k: sha256_hex(v) for k, v in objects.items()},
        models=models,
    )
    return PreparedSet(info, objects)


# ------------------------------------------------------------------------- S3 operations
def upload_set(settings: Settings, prepared: PreparedSet) -> SetInfo:
    """Upload the set's objects, ``set.json`` last, then re-read every object and compare
    its sha256. Does not touch the champion pointer. Raises ``ModelIntegrityError`` when a
    re-read object differs."""
    prefix = set_prefix(prepared.info.set_id)
    for name, data in prepared.objects.items():
        kind = "application/json" if name.endswith(".json") else "application/octet-stream"
        store.put(settings, prefix + name, data, kind, if_absent=True)
    store.put(settings, prefix + SET_FILE, prepared.info.to_bytes(), if_absent=True)
    verify_set(settings, prepared.info.set_id, expected=prepared.info)
    return prepared.info


def read_set_info(settings: Settings, set_id: str, quick: bool = False, deadline: float | None = None) -> SetInfo:
    key = set_prefix(_check_set_id(set_id)) + SET_FILE
    obj = store.get(settings, key, quick=quick, deadline=deadline)
    if obj is None:
        raise ModelNotFoundError(f"model set {set_id}: s3://{settings.models_bucket}/{key} not found")
    return SetInfo.parse(obj.data, f"s3://{settings.models_bucket}/{key}")


def fetch_set(
    settings: Settings,
    set_id: str,
    expected: SetInfo | None = None,
    *,
    quick: bool = False,
    deadline: float | None = None,
) -> tuple[SetInfo, dict[str, bytes]]:
    """A set's ``set.json`` and objects, each object's sha256 checked against it (and
    ``set.json`` against ``expected`` when given). ``quick``/``deadline``: the short-timeout
    client and a ``time.monotonic()`` by which every read must be done (the API's watcher);
    past it, ``DependencyUnavailableError``."""
    info = read_set_info(settings, set_id, quick=quick, deadline=deadline)
    if expected is not None and info.to_bytes() != expected.to_bytes():
        raise ModelIntegrityError(f"model set {set_id}: set.json as stored differs from what was uploaded")
    objects: dict[str, bytes] = {}
    for name, sha in info.objects.items():
        key = set_prefix(set_id) + name
        obj = store.get(settings, key, quick=quick, deadline=deadline)
        if obj is None:
            raise ModelNotFoundError(f"model set {set_id}: s3://{settings.models_bucket}/{key} not found")
        actual = sha256_hex(obj.data)
        if actual != sha:
            raise ModelIntegrityError(
                f"model set {set_id}: checksum mismatch for {name}: set.json says {sha}, object is {actual}"
            )
        objects[name] = obj.data
    return info, objects


def verify_set(settings: Settings, set_id: str, expected: SetInfo | None = None) -> SetInfo:
    info, _ = fetch_set(settings, set_id, expected)
    return info


def download_set(
    settings: Settings, set_id: str, target: Path, *, quick: bool = False, deadline: float | None = None
) -> SetInfo:
    """Fetch a set into ``target`` (files appear there only once all are fetched and verified)."""
    info, objects = fetch_set(settings, set_id, quick=quick, deadline=deadline)
    with staged_directory(target) as stage:
        for name, data in {**objects, SET_FILE: info.to_bytes()}.items():
            (stage / name).write_bytes(data)
    return info


def load_set(
    settings: Settings,
    set_id: str,
    target: Path,
    threads: int = 1,
    *,
    quick: bool = False,
    deadline: float | None = None,
) -> ModelSet:
    """Download and load a set; all three models must load (else ``ModelIntegrityError``)."""
    download_set(settings, set_id, target, quick=quick, deadline=deadline)
    ms = ModelSet.load(target, threads=threads)
    if ms.errors:
        raise ModelIntegrityError(f"model set {set_id} did not load: {'; '.join(ms.errors.values())}")
    ms.set_id = set_id
    return ms


def read_champion(settings: Settings, quick: bool = False) -> Champion | None:
    """The champion pointer, or None when there is none (no pointer, or no bucket)."""
    obj = store.get(settings, CHAMPION_KEY, quick=quick)
    return None if obj is None else Champion.parse(obj.data, obj.etag)


def promote(
    settings: Settings, set_id: str, reason: str, expected: Champion | None, now: datetime | None = None
) -> Champion:
    """Make ``set_id`` the champion: ONE conditional PutObject of the pointer, which succeeds
    only if the pointer is still ``expected`` (None: there was none). The set must already be
    uploaded and verified. Raises ``ConflictError`` if the pointer changed meanwhile."""
    champion = Champion(
        set_id=set_id,
        previous_set_id=expected.set_id if expected else None,
        promoted_at=iso_now(now or utcnow()),
        reason=reason,
    )
    body = (json.dumps(champion.to_json(), indent=2) + "\n").encode()
    if expected is None:
        champion.etag = store.put(settings, CHAMPION_KEY, body, if_absent=True)
    else:
        champion.etag = store.put(settings, CHAMPION_KEY, body, if_match=expected.etag)
    logger.info(
        "champion promoted",
        extra={"set_id": set_id, "previous_set_id": champion.previous_set_id, "reason": reason},
    )
    return champion


def decision_key(now: datetime) -> str:
    now = now.astimezone(UTC)
    return f"{DECISIONS_PREFIX}{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond:06d}Z.json"


def record_decision(settings: Settings, decision: dict[str, Any], now: datetime | None = None) -> str:
    """Write a decision record; returns its key."""
    key = decision_key(now or utcnow())
    store.put(settings, key, (json.dumps(decision, indent=2, default=str) + "\n").encode(), if_absent=True)
    return key


def list_decisions(settings: Settings) -> list[str]:
    return list(store.list_keys(settings, DECISIONS_PREFIX))


def read_decision(settings: Settings, key: str) -> dict[str, Any]:
    obj = store.get(settings, key)
    if obj is None:
        raise NotFoundError(f"no decision s3://{settings.models_bucket}/{key}")
    result: dict[str, Any] = json.loads(obj.data)
    return result


# ------------------------------------------------------------------------- operator actions
@dataclass
class Promotion:
    champion: Champion
    info: SetInfo
    decision_key: str


def publish(settings: Settings, directory: str | Path, reason: str | None = None) -> Promotion:
    """Upload a local model directory as a new set and make it champion (first deploy, or a
    promotion by hand)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(f"model directory {directory} not found")
    prepared = prepare_set(directory, source=f"publish from {directory.resolve()}")
    current = read_champion(settings)
    info = upload_set(settings, prepared)
    why = reason or f"published from {directory.name}"
    champion = promote(settings, info.set_id, why, current)
    key = record_decision(
        settings,
        {
            "kind": "publish",
            "status": "promoted",
            "promoted": True,
            "reason": why,
            "set_id": info.set_id,
            "previous_set_id": champion.previous_set_id,
            "source": info.source,
            "mape": info.mape,
            "at": champion.promoted_at,
        },
    )
    return Promotion(champion, info, key)


def rollback(settings: Settings, reason: str | None = None) -> Promotion:
    """Point the champion back at its ``previous_set_id`` (verified first); the set rolled
    back from becomes the new previous, so a second rollback undoes the first."""
    current = read_champion(settings)
    if current is None:
        raise NotFoundError(f"no champion in s3://{settings.models_bucket}/{CHAMPION_KEY}: nothing to roll back")
    if not current.previous_set_id:
        raise ConflictError(f"champion {current.set_id} has no previous set to roll back to", "no_previous_set")
    target = current.previous_set_id
    info = verify_set(settings, target)  # never point the API at a set that is gone or damaged
    why = reason or f"rollback from {current.set_id}"
    champion = promote(settings, target, why, current)
    key = record_decision(
        settings,
        {
            "kind": "rollback",
            "status": "promoted",
            "promoted": True,
            "reason": why,
            "set_id": target,
            "previous_set_id": current.set_id,
            "at": champion.promoted_at,
        },
    )
    return Promotion(champion, info, key)


# ------------------------------------------------------------------------- live pickup
class ChampionWatcher:
    """Keeps an API container on the champion set. ``poll()`` is called on requests; at most
    every ``model_refresh_s`` seconds it reads the pointer (one small GetObject with short
    timeouts) and, when it names another set, downloads it to ``model_cache_dir/<set id>/``
    with the same short-timeout client and within ``WATCHER_DOWNLOAD_BUDGET_S`` in all (this
    runs inside a request), verifies and loads it, and returns the new ``ModelSet`` for the
    caller to swap in. Every failure, a download out of time included, is logged and ignored:
    the current models keep serving and the next poll tries again. No champion (no pointer,
    no bucket: the local run) means the bundled models stay."""

    def __init__(
        self, settings: Settings, current_set_id: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.set_id = current_set_id
        self.clock = clock
        self._next_check = float("-inf")  # the first request checks (loading the champion at start)
        self._said_no_champion = False

    def poll(self) -> ModelSet | None:
        now = self.clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.settings.model_refresh_s
        try:
            champion = read_champion(self.settings, quick=True)
        except Exception as exc:
            logger.warning(
                "champion pointer check failed; the current models keep serving",
                extra={"error": repr(exc), "set_id": self.set_id},
            )
            return None
        if champion is None:
            if not self._said_no_champion:
                logger.info(
                    "no champion model set; serving the current models",
                    extra={"bucket": self.settings.models_bucket, "set_id": self.set_id},
                )
                self._said_no_champion = True
            return None
        if champion.set_id == self.set_id:
            return None
        cache = Path(self.settings.model_cache_dir)
        started = time.monotonic()
        try:
            models = load_set(
                self.settings,
                champion.set_id,
                cache / champion.set_id,
                self.settings.ort_threads,
                quick=True,
                deadline=started + WATCHER_DOWNLOAD_BUDGET_S,
            )
        except DependencyUnavailableError as exc:
            logger.warning(
                "downloading the champion model set failed or ran out of time; the current models keep "
                "serving, the next check tries again",
                extra={
                    "champion": champion.set_id,
                    "set_id": self.set_id,
                    "budget_s": WATCHER_DOWNLOAD_BUDGET_S,
                    "elapsed_s": round(time.monotonic() - started, 2),
                    "next_check_in_s": self.settings.model_refresh_s,
                    "error": repr(exc),
                },
            )
            return None
        except Exception as exc:
            logger.error(
                "could not load the champion model set; the current models keep serving",
                extra={"champion": champion.set_id, "set_id": self.set_id, "error": repr(exc)},
            )
            return None
        logger.info("model set swapped", extra={"from": self.set_id, "to": champion.set_id})
        self.set_id = champion.set_id
        self._prune(cache, keep=champion.set_id)
        return models

    @staticmethod
    def _prune(cache: Path, keep: str) -> None:
        """Remove other downloaded sets (loaded sessions hold their bytes in memory)."""
        try:
            for d in cache.iterdir():
                if d.is_dir() and d.name != keep and SET_ID_RE.match(d.name):
                    shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
