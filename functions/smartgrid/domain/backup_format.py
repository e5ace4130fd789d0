"""What a backup is in the backups bucket, and how its integrity is checked: the part that
taking a backup (``backup``) and restoring one (``restore``) share.

- the layout under ``backups/<id>/``: ``tables/``, ``models/``, ``bundled/``, ``config.json``
  and ``manifest.json`` (what each holds: ``backup``'s docstring);
- the manifest: its model, its own sha256 (``manifest_bytes``) and the checks a manifest must
  pass before anything uses it (``parse_manifest``);
- the portable copy of a table: one DynamoDB-JSON item a line, binary values as base64
  (``encode_item``, ``decode_item``), and the key and digest that compare items;
- the sha256 of an object in S3 or of a file, read in chunks (``remote_sha``, ``file_sha``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartgrid.config import Settings
from smartgrid.errors import SmartgridError
from smartgrid.store import backups as store

MANIFEST = "manifest.json"
CONFIG = "config.json"
TABLES_DIR = "tables/"
MODELS_DIR = "models/"
BUNDLED_DIR = "bundled/"
FORMAT_VERSION = 1
_CHUNK = 1 << 20
_SHOWN = 20  # problems listed in an error message


class BackupIntegrityError(SmartgridError):
    """A backup (or a restore's result) does not match its manifest: refused, nothing used."""


# ------------------------------------------------------------------------- manifest
class ObjectEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)  # relative to backups/<id>/
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class KeyAttribute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    key_type: Literal["HASH", "RANGE"]
    type: Literal["S", "N", "B"]


class TableEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table_name: str  # the physical name when backed up (a restore writes to the current one)
    key: str  # the portable copy, relative to backups/<id>/
    items: int = Field(ge=0)
    key_schema: list[KeyAttribute] = Field(min_length=1, max_length=2)
    dynamodb_backup_arn: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    backup_id: str
    created_at: datetime
    completed_at: datetime
    status: Literal["complete"]
    source: dict[str, Any]
    tables: dict[str, TableEntry]  # Settings field (e.g. "predictions_table") -> its copy
    models_bucket_objects: int = Field(ge=0)
    objects: list[ObjectEntry]
    total_bytes: int = Field(ge=0)

    def entry(self, key: str) -> ObjectEntry:
        return next(o for o in self.objects if o.key == key)

    def keys_under(self, folder: str) -> list[str]:
        return [o.key for o in self.objects if o.key.startswith(folder)]


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as JSON with ``manifest_sha256``: the sha256 of the canonical JSON of
    everything else, so a changed manifest (a count, a checksum) no longer verifies."""
    body = manifest.model_dump(mode="json")
    body["manifest_sha256"] = hashlib.sha256(canonical_json(body)).hexdigest()
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes, backup_id: str) -> Manifest:
    """The manifest, if it is one this code wrote for this backup and unchanged since;
    ``BackupIntegrityError`` saying what is wrong otherwise."""
    where = f"backup {backup_id}: {MANIFEST}"
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupIntegrityError(f"{where} is not JSON ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("manifest_sha256"), str):
        raise BackupIntegrityError(f"{where} has no manifest_sha256: not a manifest this code wrote")
    claimed = raw.pop("manifest_sha256")
    actual = hashlib.sha256(canonical_json(raw)).hexdigest()
    if actual != claimed:
        raise BackupIntegrityError(
            f"{where} was changed after it was written (its sha256 is {actual}, it says {claimed})"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise BackupIntegrityError(
            f"{where} has format {raw.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    if raw.get("status") != "complete":
        raise BackupIntegrityError(f"{where} says status {raw.get('status')!r}, not 'complete'")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BackupIntegrityError(f"{where} is not a valid manifest: {exc}") from exc
    problems = _manifest_problems(manifest, backup_id)
    if problems:
        raise BackupIntegrityError(problem_listing(f"{where} is not consistent", problems))
    return manifest


def _manifest_problems(m: Manifest, backup_id: str) -> list[str]:
    problems = []
    if m.backup_id != backup_id:
        problems.append(f"it is the manifest of backup {m.backup_id}")
    keys = [o.key for o in m.objects]
    if len(set(keys)) != len(keys):
        problems.append("it lists an object twice")
    for key in keys:
        if key.startswith("/") or not (key.startswith((TABLES_DIR, MODELS_DIR, BUNDLED_DIR)) or key == CONFIG):
            problems.append(f"object {key!r} is not part of a backup's layout")
        if key.startswith(BUNDLED_DIR):
            name = key[len(BUNDLED_DIR) :]
            if "/" in name or "\\" in name or name.startswith(".") or not name:
                problems.append(f"bundled file {name!r} is not a plain file name")
    if CONFIG not in keys:
        problems.append(f"it lists no {CONFIG}")
    for setting, t in m.tables.items():
        if t.key not in keys:
            problems.append(f"table {setting}: its copy {t.key} is not among the objects")
    if sum(o.size for o in m.objects) != m.total_bytes:
        problems.append("total_bytes is not the sum of the objects' sizes")
    if len(m.keys_under(MODELS_DIR)) != m.models_bucket_objects:
        problems.append("models_bucket_objects is not the number of models/ objects")
    return problems


def problem_listing(head: str, problems: list[str]) -> str:
    lines = [f"  - {p}" for p in problems[:_SHOWN]]
    if len(problems) > _SHOWN:
        lines.append(f"  ... and {len(problems) - _SHOWN} more")
    return "\n".join([f"{head} ({len(problems)} problem(s)):", *lines])


def key_schema_of(desc: dict[str, Any]) -> list[KeyAttribute]:
    """A table's key schema as the manifest records it, from its DescribeTable answer."""
    types = {a["AttributeName"]: a["AttributeType"] for a in desc.get("AttributeDefinitions", [])}
    return [
        KeyAttribute(name=k["AttributeName"], key_type=k["KeyType"], type=types[k["AttributeName"]])
        for k in desc["KeySchema"]
    ]


# -------------------------------------------------------------- items (DynamoDB JSON)
def _encode_value(v: dict[str, Any]) -> dict[str, Any]:
    """A boto3 attribute value as JSON: binary as base64, maps and lists recursively."""
    ((t, x),) = v.items()
    if t == "B":
        return {t: base64.b64encode(x).decode()}
    if t == "BS":
        return {t: [base64.b64encode(b).decode() for b in x]}
    if t == "M":
        return {t: {k: _encode_value(e) for k, e in x.items()}}
    if t == "L":
        return {t: [_encode_value(e) for e in x]}
    return {t: x}


def _decode_value(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or len(v) != 1:
        raise ValueError(f"{v!r} is not a DynamoDB attribute value")
    ((t, x),) = v.items()
    if t == "B":
        return {t: base64.b64decode(x, validate=True)}
    if t == "BS":
        return {t: [base64.b64decode(b, validate=True) for b in x]}
    if t == "M":
        return {t: {k: _decode_value(e) for k, e in x.items()}}
    if t == "L":
        return {t: [_decode_value(e) for e in x]}
    if t not in ("S", "N", "SS", "NS", "BOOL", "NULL"):
        raise ValueError(f"unknown DynamoDB type {t!r}")
    return {t: x}


def encode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _encode_value(v) for k, v in item.items()}


def decode_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or not item:
        raise ValueError("not an item (a JSON object of attributes)")
    return {k: _decode_value(v) for k, v in item.items()}


def _normal(v: Any) -> Any:
    """Sets are unordered in DynamoDB: sort them, so equal items compare equal."""
    if isinstance(v, dict):
        return {k: sorted(e) if k in ("SS", "NS", "BS") else _normal(e) for k, e in v.items()}
    if isinstance(v, list):
        return [_normal(e) for e in v]
    return v


def item_digest(encoded: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(_normal(encoded))).hexdigest()


def item_key(encoded: dict[str, Any], key_names: list[str]) -> str:
    return canonical_json([encoded.get(k) for k in key_names]).decode()


# ------------------------------------------------------------------------ checksums
class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _copy_hashing(src: IO[bytes], dst: IO[bytes] | None, hasher: _Hasher | None = None) -> tuple[str, int]:
    h, n = hasher or hashlib.sha256(), 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return h.hexdigest(), n


def remote_sha(
    bucket: str, key: str, settings: Settings, into: IO[bytes] | None = None, hasher: _Hasher | None = None
) -> tuple[str, int] | None:
    """(sha256, size) of the object, streamed in chunks (copied ``into`` a file if given), or
    None when it does not exist."""
    body = store.open_object(bucket, key, settings)
    if body is None:
        return None
    try:
        return _copy_hashing(body, into, hasher)
    finally:
        body.close()


def file_sha(path: Path) -> str:
    with path.open("rb") as fh:
        return _copy_hashing(fh, None)[0]


def content_type(key: str) -> str:
    if key.endswith(".jsonl.gz"):
        return "application/gzip"
    return mimetypes.guess_type(key)[0] or "application/octet-stream"
