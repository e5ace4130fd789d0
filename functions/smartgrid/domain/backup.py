"""Verified backups and restores: the manual's daily backup (02:00) and its disaster-recovery
scenarios 2 (a table corrupted), 3 (model files lost) and 4 (everything lost, stack redeployed).

One backup is one id (its UTC start, ``20261128T020000Z``) and everything under
``backups/<id>/`` in the backups bucket:

- ``tables/<setting>.jsonl.gz``: every item of each table in ``store.tables.TABLES`` (Scan,
  consistent reads), one DynamoDB-JSON item a line (binary values base64), gzip; beside it a
  DynamoDB on-demand backup of the table (named ``smartgrid-backup-<id>-<table>``), whose ARN
  the manifest records (a second way back: RestoreTableFromBackup into a new table);
- ``models/<key>``: every object of the models bucket under its own key;
- ``bundled/<file>``: the model files the functions ship with (``settings.model_dir``), so
  the models can come back even if the models bucket was empty;
- ``config.json``: the Settings of the process that ran the backup (the backup function, or
  ``smartgrid backup`` on an operator's machine), with a ``source`` field saying which: not
  the API's or any other function's settings;
- ``manifest.json``, written last and only once S3 confirmed every object above (its SHA256
  checksum of what it stored equals the sha256 computed while the object was written): id,
  times, status ``complete``, each object's key, size and sha256, each table's item count, key
  schema and backup ARN, and the manifest's own sha256 (over the rest of it, read back). A
  backup without a manifest is incomplete and is never restored from.

A restore verifies the manifest and every object's sha256 before it touches anything, puts
back exactly what the manifest lists (into the tables and buckets the *current* Settings name,
so a redeployed stack with new physical names works), refuses to overwrite live data unless
told to, and verifies the result: each restored table re-scanned and compared item by item,
each restored object and file read back and hashed. Model objects already there with the
backup's contents are skipped, missing ones are put back without ``--yes``, ones that differ
need ``--yes``; the champion pointer (``registry/champion.json``) is never replaced by the
backup's unless asked (``--champion``), so promotions and rollbacks made since stand.

Scale and limits. Memory stays small whatever the data: a table is read one Scan page (at most
1 MB) at a time and streamed through gzip into a temporary file on disk, and uploads go up in
parts of ``store.PART_BYTES`` (16 MiB; at most two in memory). The sha256 is computed while each
object is written and S3 checks the upload (SHA256 checksums, per part for multipart uploads),
so nothing is downloaded again to verify it. The limits are then: /tmp, which must hold the
largest gzip table copy or model object (one at a time; the backup function has 10 GB of
ephemeral storage), and time: each table is one sequential Scan, so the whole backup (every
table, every model object copied through the function) must fit in the Lambda's 900 s. Past
a few GB of table data, use DynamoDB export to S3 or the on-demand backups instead of the
portable copy. A restore holds one digest (about 150 bytes) per item of each restored table.

Retention: the backups bucket's lifecycle rule expires backups after
``catalog.BACKUP_RETENTION_DAYS`` days; after a successful run the job deletes the DynamoDB
on-demand backups this code made (``smartgrid-backup-...``, including the ones a restore takes
before overwriting a table) once they are older than that (``prune_dynamodb_backups``), and
never any other backup.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import mimetypes
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartgrid.catalog import BACKUP_RETENTION_DAYS
from smartgrid.config import Settings
from smartgrid.engine.atomic import atomic_write_bytes
from smartgrid.errors import ConflictError, NotFoundError, SmartgridError
from smartgrid.observability import logger
from smartgrid.store import backups as store
from smartgrid.store.tables import TABLES

BACKUPS_PREFIX = "backups/"
MANIFEST = "manifest.json"
CONFIG = "config.json"
TABLES_DIR = "tables/"
MODELS_DIR = "models/"
BUNDLED_DIR = "bundled/"
FORMAT_VERSION = 1
ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(r"^\d{8}T\d{6}Z$")
_CHUNK = 1 << 20
_SPOOL_BYTES = 4 << 20  # a manifest read back beyond this (it never is) spills to /tmp
_WRITE_CHUNK = 500  # items handed to BatchWriteItem (25 a call) at a time
_SHOWN = 20  # problems listed in an error message

CHAMPION_KEY = "registry/champion.json"  # model_registry.CHAMPION_KEY: the champion pointer
DYNAMODB_BACKUP_PREFIX = "smartgrid-backup-"  # the on-demand backups this code makes (and prunes)
_OUR_DYNAMODB_BACKUP = re.compile(rf"^{re.escape(DYNAMODB_BACKUP_PREFIX)}(prerestore-)?\d{{8}}T\d{{6}}Z-.")

Progress = Callable[[str], None]


class BackupIntegrityError(SmartgridError):
    """A backup (or a restore's result) does not match its manifest: refused, nothing used."""


class BackupNotFoundError(NotFoundError):
    """No backup with that id in the backups bucket."""


# ------------------------------------------------------------------------------ ids
def backup_id_for(now: datetime) -> str:
    return now.astimezone(UTC).strftime(ID_FORMAT)


def check_backup_id(text: str) -> str:
    if not _ID_RE.match(text):
        raise ValueError(f"--backup {text!r} is not a backup id (UTC time like 20261128T020000Z; see `backups list`)")
    return text


def prefix_of(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


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


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as JSON with ``manifest_sha256``: the sha256 of the canonical JSON of
    everything else, so a changed manifest (a count, a checksum) no longer verifies."""
    body = manifest.model_dump(mode="json")
    body["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
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
    actual = hashlib.sha256(_canonical(raw)).hexdigest()
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
        raise BackupIntegrityError(_listing(f"{where} is not consistent", problems))
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


def _listing(head: str, problems: list[str]) -> str:
    lines = [f"  - {p}" for p in problems[:_SHOWN]]
    if len(problems) > _SHOWN:
        lines.append(f"  ... and {len(problems) - _SHOWN} more")
    return "\n".join([f"{head} ({len(problems)} problem(s)):", *lines])


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
    return hashlib.sha256(_canonical(_normal(encoded))).hexdigest()


def item_key(encoded: dict[str, Any], key_names: list[str]) -> str:
    return _canonical([encoded.get(k) for k in key_names]).decode()


# ------------------------------------------------------------------------- hashing
def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # closed by the caller


def _temp_file() -> IO[bytes]:
    """A temporary file on disk (/tmp) for a table copy or a model object: never in memory."""
    return tempfile.TemporaryFile(prefix="smartgrid-backup-")  # closed by the caller


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Digest:
    """The sha256 of a stream as it is written: of the whole (the manifest's) and of each part
    of ``store.PART_BYTES`` (what S3 checks and reports for an upload in parts)."""

    def __init__(self) -> None:
        self.part_bytes = store.PART_BYTES
        self.size = 0
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._in_part = 0
        self._parts: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        self._whole.update(data)
        self.size += len(data)
        view = memoryview(data).cast("B")
        while len(view):
            piece = view[: self.part_bytes - self._in_part]
            self._part.update(piece)
            self._in_part += len(piece)
            view = view[len(piece) :]
            if self._in_part == self.part_bytes:
                self._parts.append(self._part.digest())
                self._part, self._in_part = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def _part_digests(self) -> list[bytes]:
        if self._in_part or not self._parts:
            return [*self._parts, self._part.digest()]
        return list(self._parts)

    def upload_problem(self, up: store.Uploaded) -> str | None:
        """Why what S3 says it stored is not what was written (None: it is)."""
        parts = self._part_digests()
        if len(parts) == 1:
            expected = _b64(self._whole.digest())
            return None if up.checksum == expected else f"S3 stored SHA256 {up.checksum}, {expected} was written"
        expected_parts = [_b64(d) for d in parts]
        if up.part_checksums != expected_parts:
            bad = sum(a != b for a, b in zip(up.part_checksums, expected_parts, strict=False))
            return f"S3 stored {len(up.part_checksums)} part(s), {bad} not as written ({len(parts)} written)"
        composite = _b64(hashlib.sha256(b"".join(parts)).digest())
        stored, _, count = (up.checksum or "").partition("-")
        if stored != composite or count not in ("", str(len(parts))):
            return f"S3 stored SHA256 {up.checksum} for the parts, {composite}-{len(parts)} was written"
        return None


class _HashingWriter:
    """A file that hashes what is written to it (the sink of a table copy's gzip stream)."""

    def __init__(self, fh: IO[bytes], digest: _Digest) -> None:
        self.fh, self.digest = fh, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


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


def _remote_sha(
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


def _file_sha(path: Path) -> str:
    with path.open("rb") as fh:
        return _copy_hashing(fh, None)[0]


def _content_type(key: str) -> str:
    if key.endswith(".jsonl.gz"):
        return "application/gzip"
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


# -------------------------------------------------------------------------- backup
@dataclass(frozen=True)
class TablePlan:
    setting: str
    table_name: str
    key_schema: list[KeyAttribute]


@dataclass(frozen=True)
class BackupPlan:
    backup_id: str
    created_at: datetime
    tables: list[TablePlan]
    model_keys: list[tuple[str, int]]  # the models bucket's (key, size)
    bundled: list[Path]

    @property
    def prefix(self) -> str:
        return prefix_of(self.backup_id)


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    objects: int
    bytes: int
    tables: dict[str, int]  # setting -> items
    models: int
    manifest_key: str

    def summary(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "objects": self.objects,
            "bytes": self.bytes,
            "tables": self.tables,
            "model_objects": self.models,
            "manifest": self.manifest_key,
        }


def _key_schema(desc: dict[str, Any]) -> list[KeyAttribute]:
    types = {a["AttributeName"]: a["AttributeType"] for a in desc.get("AttributeDefinitions", [])}
    return [
        KeyAttribute(name=k["AttributeName"], key_type=k["KeyType"], type=types[k["AttributeName"]])
        for k in desc["KeySchema"]
    ]


def plan_backup(settings: Settings, now: datetime) -> BackupPlan:
    """What a backup now would copy; refuses (before writing anything) when a table, a bucket
    or the bundled models are missing, or when a backup with this id already has objects."""
    backup_id = backup_id_for(now)
    missing = []
    for bucket in (settings.backups_bucket, settings.models_bucket):
        if not store.bucket_exists(bucket, settings):
            missing.append(f"bucket {bucket}")
    tables = []
    for setting in TABLES:
        name = getattr(settings, setting)
        desc = store.describe_table(name, settings)
        if desc is None:
            missing.append(f"table {name} ({setting})")
        else:
            tables.append(TablePlan(setting, name, _key_schema(desc)))
    model_dir = Path(settings.model_dir)
    bundled = sorted(p for p in model_dir.glob("*") if p.is_file() and p.suffix in (".onnx", ".json"))
    if not bundled:
        missing.append(f"bundled model files (*.onnx, *.json) in {model_dir}")
    if missing:
        raise NotFoundError(f"cannot back up: {', '.join(missing)} not found")
    if next(store.list_objects(settings.backups_bucket, prefix_of(backup_id), settings), None) is not None:
        raise ConflictError(f"backup {backup_id} already has objects; not writing over them", "backup_exists")
    model_keys = list(store.list_objects(settings.models_bucket, "", settings))
    return BackupPlan(backup_id, now.astimezone(UTC), tables, model_keys, bundled)


class _Writer:
    """Writes objects under the backup's prefix, each checked by S3 against the sha256 computed
    while it was written, and remembers each one's size and sha256. An object S3 did not store
    as written raises: the backup fails, no manifest."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.bucket = settings.backups_bucket
        self.prefix = prefix
        self.objects: list[ObjectEntry] = []

    def put(self, key: str, body: bytes | IO[bytes], digest: _Digest | None = None) -> ObjectEntry:
        """``body``: bytes, or a file with ``digest`` the digest of its whole content, computed
        as it was written (the file is uploaded from its start)."""
        if isinstance(body, bytes):
            digest = _Digest()
            digest.update(body)
            stream: IO[bytes] = io.BytesIO(body)
        elif digest is None:
            raise TypeError("a file is uploaded with the digest computed while it was written")
        else:
            stream = body
            stream.seek(0)
        uploaded = store.upload_checked(self.bucket, self.prefix + key, stream, self.settings, _content_type(key))
        problem = digest.upload_problem(uploaded)
        if problem:
            raise BackupIntegrityError(f"backup {self.prefix}: {key} was not stored as written ({problem})")
        entry = ObjectEntry(key=key, size=digest.size, sha256=digest.hexdigest())
        self.objects.append(entry)
        return entry


def _dump_table(name: str, settings: Settings, sink: IO[bytes], digest: _Digest) -> int:
    """Stream the table, one Scan page at a time, as gzip JSON lines into the file, hashing the
    gzip bytes as they are written; the number of items."""
    count = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=_HashingWriter(sink, digest), mtime=0) as gz:
        for item in store.scan_items(name, settings):
            gz.write(_canonical(encode_item(item)) + b"\n")
            count += 1
    return count


def config_document(settings: Settings, origin: str) -> bytes:
    """``config.json``: the Settings of the process running the backup, labelled as such."""
    doc = {"source": f"settings of the backup function ({origin})", **settings.model_dump(mode="json")}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def run_backup(
    settings: Settings, now: datetime | None = None, progress: Progress | None = None, origin: str = "cli"
) -> BackupResult:
    """One verified backup. On any failure it raises, and no manifest claims the backup is
    complete (the objects written so far stay, listed as incomplete, until the lifecycle
    rule expires them). ``origin``: who runs it (the Lambda function's name, or ``cli``),
    recorded in ``config.json``."""
    say = progress or (lambda _m: None)
    plan = plan_backup(settings, now or datetime.now(UTC))
    log = {"backup_id": plan.backup_id, "bucket": settings.backups_bucket}
    logger.info("backup started", extra={**log, "tables": len(plan.tables), "model_objects": len(plan.model_keys)})
    writer = _Writer(settings, plan.prefix)
    tables: dict[str, TableEntry] = {}
    for t in plan.tables:
        say(f"table {t.table_name}: on-demand backup")
        arn = store.create_backup(t.table_name, _dynamodb_backup_name(t.table_name, plan.backup_id), settings)
        say(f"table {t.table_name}: scanning")
        with _temp_file() as tmp:
            digest = _Digest()
            count = _dump_table(t.table_name, settings, tmp, digest)
            entry = writer.put(f"{TABLES_DIR}{t.setting}.jsonl.gz", tmp, digest)
        tables[t.setting] = TableEntry(
            table_name=t.table_name, key=entry.key, items=count, key_schema=t.key_schema, dynamodb_backup_arn=arn
        )
        say(f"table {t.table_name}: {count} items, {entry.size} bytes")
    for key, _size in plan.model_keys:
        with _temp_file() as tmp:
            digest = _Digest()
            if _remote_sha(settings.models_bucket, key, settings, into=tmp, hasher=digest) is None:
                raise NotFoundError(f"model object {key} vanished from {settings.models_bucket} during the backup")
            writer.put(MODELS_DIR + key, tmp, digest)
    say(f"models bucket: {len(plan.model_keys)} objects")
    for path in plan.bundled:
        writer.put(BUNDLED_DIR + path.name, path.read_bytes())
    say(f"bundled models: {len(plan.bundled)} files")
    writer.put(CONFIG, config_document(settings, origin))
    say(f"{len(writer.objects)} objects written, each confirmed by S3's SHA256 checksum")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        backup_id=plan.backup_id,
        created_at=plan.created_at,
        completed_at=datetime.now(UTC),
        status="complete",
        source={
            "region": settings.aws_region,
            "models_bucket": settings.models_bucket,
            "backups_bucket": settings.backups_bucket,
            "model_dir": str(settings.model_dir),
        },
        tables=tables,
        models_bucket_objects=len(plan.model_keys),
        objects=writer.objects,
        total_bytes=sum(o.size for o in writer.objects),
    )
    _write_manifest(settings, plan.backup_id, manifest)
    result = BackupResult(
        backup_id=plan.backup_id,
        objects=len(writer.objects) + 1,
        bytes=manifest.total_bytes + len(manifest_bytes(manifest)),
        tables={s: t.items for s, t in tables.items()},
        models=len(plan.model_keys),
        manifest_key=plan.prefix + MANIFEST,
    )
    logger.info("backup complete", extra={**log, **result.summary()})
    return result


def _dynamodb_backup_name(table: str, backup_id: str) -> str:
    """``smartgrid-backup-<id>-<table>`` (``<id>``: a backup id, or ``prerestore-<time>``):
    how ``prune_dynamodb_backups`` knows the backups this code made."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{DYNAMODB_BACKUP_PREFIX}{backup_id}-{table}")[:255]


def prune_dynamodb_backups(settings: Settings, now: datetime | None = None) -> int:
    """Delete the DynamoDB on-demand backups of the tables that this code made (named
    ``smartgrid-backup-...``) and that are older than ``BACKUP_RETENTION_DAYS``; never any other.
    Returns how many were deleted. A failure is logged (WARNING) and does not raise: a backup
    that succeeded stays a success."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=BACKUP_RETENTION_DAYS)
    deleted = 0
    for setting in TABLES:
        table = getattr(settings, setting)
        try:
            old = [
                b
                for b in store.list_user_backups(table, cutoff, settings)
                # ListBackups filters by time, type and table; checked again (moto filters none of it)
                if _OUR_DYNAMODB_BACKUP.match(str(b.get("BackupName", "")))
                and b.get("BackupType") == "USER"
                and b.get("TableName", table) == table
                and b["BackupCreationDateTime"] < cutoff
            ]
        except Exception as exc:
            logger.warning("could not list the table's on-demand backups to prune them", extra=_why(table, exc))
            continue
        for b in old:
            try:
                store.delete_backup(b["BackupArn"], settings)
                deleted += 1
            except Exception as exc:
                logger.warning(
                    "could not delete an old on-demand backup", extra={**_why(table, exc), "backup_arn": b["BackupArn"]}
                )
    logger.info("old on-demand backups pruned", extra={"deleted": deleted, "older_than_days": BACKUP_RETENTION_DAYS})
    return deleted


def _why(table: str, exc: Exception) -> dict[str, str]:
    return {"table": table, "error": f"{type(exc).__name__}: {exc}"}


def _write_manifest(settings: Settings, backup_id: str, manifest: Manifest) -> None:
    """Write the manifest, read it back and verify it (and the objects' presence and sizes);
    if anything fails, delete it: no manifest may claim an unverified backup is complete."""
    key = prefix_of(backup_id) + MANIFEST
    data = manifest_bytes(manifest)
    try:
        store.put_object(settings.backups_bucket, key, data, settings, "application/json")
        with _spool() as spool:
            got = _remote_sha(settings.backups_bucket, key, settings, into=spool)
            if got != (hashlib.sha256(data).hexdigest(), len(data)):
                raise BackupIntegrityError(f"backup {backup_id}: {MANIFEST} did not read back as written")
            spool.seek(0)
            parse_manifest(spool.read(), backup_id)
        problems = _presence_problems(settings, backup_id, manifest)
        if problems:
            raise BackupIntegrityError(_listing(f"backup {backup_id}: objects changed under the manifest", problems))
    except BaseException:
        try:
            store.delete_object(settings.backups_bucket, key, settings)
        except Exception:
            logger.exception("could not delete the unverified manifest", extra={"key": key})
        raise


def _presence_problems(
    settings: Settings, backup_id: str, manifest: Manifest, listing: dict[str, int] | None = None
) -> list[str]:
    """Objects the manifest lists that are missing, or not of the listed size (one listing)."""
    prefix = prefix_of(backup_id)
    if listing is None:
        listing = dict(store.list_objects(settings.backups_bucket, prefix, settings))
    problems = []
    for o in manifest.objects:
        size = listing.get(prefix + o.key)
        if size is None:
            problems.append(f"{o.key}: missing")
        elif size != o.size:
            problems.append(f"{o.key}: {size} bytes, the manifest says {o.size}")
    return problems


# --------------------------------------------------------------------- list, verify
@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    created_at: datetime
    status: Literal["verified", "incomplete", "damaged"]
    objects: int
    size: int
    tables: dict[str, int]
    problem: str | None = None


def list_backups(settings: Settings, deep: bool = False) -> list[BackupInfo]:
    """Every backup, newest first. ``verified``: the manifest verifies and every object it
    lists is there with its size (``deep``: and its sha256, reading everything);
    ``incomplete``: objects but no manifest (a backup that failed or is running);
    ``damaged``: a manifest that does not verify."""
    found = []
    for folder in store.list_folders(settings.backups_bucket, BACKUPS_PREFIX, settings):
        backup_id = folder[len(BACKUPS_PREFIX) :].rstrip("/")
        if not _ID_RE.match(backup_id):
            continue
        found.append(_info(settings, backup_id, deep))
    return sorted(found, key=lambda b: b.backup_id, reverse=True)


def _info(settings: Settings, backup_id: str, deep: bool) -> BackupInfo:
    prefix = prefix_of(backup_id)
    listing = dict(store.list_objects(settings.backups_bucket, prefix, settings))
    size = sum(listing.values())
    created = datetime.strptime(backup_id, ID_FORMAT).replace(tzinfo=UTC)
    if prefix + MANIFEST not in listing:
        return BackupInfo(backup_id, created, "incomplete", len(listing), size, {}, f"no {MANIFEST}")
    try:
        if deep:
            manifest = verify_backup(settings, backup_id)
        else:
            data = _read_small(settings.backups_bucket, prefix + MANIFEST, settings)
            manifest = parse_manifest(data or b"", backup_id)
            problems = _presence_problems(settings, backup_id, manifest, listing)
            if problems:
                raise BackupIntegrityError(_listing(f"backup {backup_id} is missing objects", problems))
    except BackupIntegrityError as exc:
        return BackupInfo(backup_id, created, "damaged", len(listing), size, {}, str(exc))
    counts = {s: t.items for s, t in manifest.tables.items()}
    return BackupInfo(backup_id, manifest.created_at, "verified", len(listing), size, counts)


def _read_small(bucket: str, key: str, settings: Settings) -> bytes | None:
    with _spool() as spool:
        if _remote_sha(bucket, key, settings, into=spool) is None:
            return None
        spool.seek(0)
        return spool.read()


def latest_backup(settings: Settings) -> str:
    for info in list_backups(settings):
        if info.status == "verified":
            return info.backup_id
    raise BackupNotFoundError(f"no verified backup in bucket {settings.backups_bucket}")


def verify_backup(
    settings: Settings, backup_id: str, download_to: Path | None = None, progress: Progress | None = None
) -> Manifest:
    """The backup's manifest, once it verifies and every object it lists reads back with its
    size and sha256 (``download_to``: keeping a copy of each, as ``<dir>/<key>``, so what is
    restored is exactly what was verified). ``BackupIntegrityError`` listing every problem."""
    say = progress or (lambda _m: None)
    bucket, prefix = settings.backups_bucket, prefix_of(backup_id)
    listing = dict(store.list_objects(bucket, prefix, settings))
    data = _read_small(bucket, prefix + MANIFEST, settings)
    if data is None:
        if listing:
            raise BackupIntegrityError(
                f"backup {backup_id} is incomplete: {len(listing)} object(s) but no {MANIFEST} "
                "(the backup failed or is still running); it cannot be restored from"
            )
        raise BackupNotFoundError(f"no backup {backup_id} in bucket {bucket} (see `smartgrid backups list`)")
    manifest = parse_manifest(data, backup_id)
    problems = _presence_problems(settings, backup_id, manifest, listing)
    say(f"verifying {len(manifest.objects)} objects ({manifest.total_bytes} bytes)")
    for o in manifest.objects:
        if any(p.startswith(f"{o.key}:") for p in problems):
            continue
        if download_to is None:
            got = _remote_sha(bucket, prefix + o.key, settings)
        else:
            with _local(download_to, o.key).open("wb") as sink:
                got = _remote_sha(bucket, prefix + o.key, settings, into=sink)
        if got is None:
            problems.append(f"{o.key}: missing")
        elif got != (o.sha256, o.size):
            problems.append(f"{o.key}: sha256 {got[0]} ({got[1]} bytes), the manifest says {o.sha256} ({o.size} bytes)")
    if problems:
        raise BackupIntegrityError(
            _listing(f"backup {backup_id} does not verify; refusing to use it (nothing was changed)", problems)
        )
    return manifest


def _local(root: Path, key: str) -> Path:
    """Where a verified object is kept during a restore (a name derived from the key's hash:
    S3 keys may hold anything, a file name may not)."""
    return root / hashlib.sha256(key.encode()).hexdigest()


# -------------------------------------------------------------------------- restore
PART_NAMES = ("tables", "models", "config")


@dataclass(frozen=True)
class RestoreOptions:
    tables: bool = True
    models: bool = True
    config: bool = True
    only_tables: tuple[str, ...] = ()  # Settings fields, short names or physical names; () = all
    overwrite: bool = False  # --yes: replace live data
    champion: bool = False  # --champion: put back the backup's champion pointer even if the live one differs
    config_out: Path | None = None  # None: the config is returned (the CLI prints it)
    bundled_out: Path | None = None  # where the bundled model files go (None: not written)


@dataclass
class TableRestore:
    setting: str
    table_name: str
    items: int
    replaced: bool = False  # the table had items (overwritten with --yes)
    deleted: int = 0  # items that were not in the backup, deleted
    safety_backup_arn: str | None = None  # on-demand backup of the table taken before overwriting it
    extra_after: int = 0  # items found after the restore that are not in the backup (live writes)


@dataclass
class RestoreReport:
    backup_id: str
    tables: list[TableRestore] = field(default_factory=list)
    model_keys: list[str] = field(default_factory=list)  # models bucket keys written
    models_unchanged: list[str] = field(default_factory=list)  # already there with the backup's contents
    models_replaced: list[str] = field(default_factory=list)  # there with other contents, overwritten (--yes)
    champion_kept: bool = False  # the live champion pointer differs from the backup's and was left as is
    bundled: list[Path] = field(default_factory=list)
    bundled_available: int = 0
    config_json: str | None = None
    config_path: Path | None = None


@dataclass
class _ModelsPlan:
    """What a restore does with each of the backup's models bucket objects (keys in the bucket)."""

    write: list[str] = field(default_factory=list)  # missing, or differing and overwritten
    unchanged: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)  # there with other contents (written only with --yes)
    champion_kept: bool = False


@dataclass
class _TableWork:
    setting: str
    entry: TableEntry
    target: str
    file: Path
    key_names: list[str]
    digests: dict[str, str]  # item key -> digest of the item
    had_items: bool = False


def _resolve_tables(settings: Settings, manifest: Manifest, wanted: tuple[str, ...]) -> list[str]:
    if not wanted:
        return list(manifest.tables)
    names: dict[str, str] = {}
    for setting in manifest.tables:
        names[setting] = setting
        names[setting.removesuffix("_table")] = setting
        if setting in TABLES:
            names[getattr(settings, setting)] = setting
    chosen = []
    for w in wanted:
        if w not in names:
            known = ", ".join(s.removesuffix("_table") for s in manifest.tables)
            raise ValueError(f"--table {w!r}: the backup has no such table (it has: {known})")
        chosen.append(names[w])
    return list(dict.fromkeys(chosen))


def _load_table(work: _TableWork) -> None:
    """Read the verified copy once: every line an item with the key attributes, no key twice,
    as many items as the manifest says."""
    problems: list[str] = []
    for n, item in enumerate(_items(work.file, work.entry.key), start=1):
        missing = [k for k in work.key_names if k not in item]
        if missing:
            problems.append(f"{work.entry.key} line {n}: no key attribute {missing}")
            continue
        key = item_key(item, work.key_names)
        if key in work.digests:
            problems.append(f"{work.entry.key} line {n}: key {key} repeated")
        work.digests[key] = item_digest(item)
    if len(work.digests) != work.entry.items and not problems:
        problems.append(f"{work.entry.key}: {len(work.digests)} items, the manifest says {work.entry.items}")
    if problems:
        raise BackupIntegrityError(_listing(f"table copy {work.entry.key} is not consistent", problems))


def _items(path: Path, name: str) -> Iterator[dict[str, Any]]:
    """The encoded items of a table copy (JSON), one per line."""
    try:
        with gzip.open(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    item = json.loads(line)
                    decode_item(item)  # checks the shape
                except ValueError as exc:
                    raise BackupIntegrityError(f"{name} line {n}: not a DynamoDB item ({exc})") from exc
                yield item
    except (OSError, EOFError) as exc:
        raise BackupIntegrityError(f"{name}: not a gzip file ({exc})") from exc


def restore(
    settings: Settings, backup_id: str, options: RestoreOptions, progress: Progress | None = None
) -> RestoreReport:
    """Put back what the backup's manifest lists, for the parts asked for. Verifies the whole
    backup first (refuses it, changing nothing, if it does not verify), refuses to overwrite
    live data unless ``options.overwrite``, and verifies what it restored."""
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="smartgrid-restore-") as tmp:
        work_dir = Path(tmp)
        manifest = verify_backup(settings, backup_id, download_to=work_dir, progress=say)
        say(f"backup {backup_id} verified: {len(manifest.objects)} objects")
        report = RestoreReport(backup_id, bundled_available=len(manifest.keys_under(BUNDLED_DIR)))
        tables = _prepare_tables(settings, manifest, options, work_dir) if options.tables else []
        model_keys = manifest.keys_under(MODELS_DIR) if options.models else []
        bundled = manifest.keys_under(BUNDLED_DIR) if options.models and options.bundled_out else []
        models = _check_targets(settings, manifest, options, tables, model_keys, bundled)

        # -- nothing was changed up to here
        for t in tables:
            report.tables.append(_restore_table(settings, t, say))
        for key in models.write:
            with _local(work_dir, MODELS_DIR + key).open("rb") as fh:
                store.put_object(settings.models_bucket, key, fh, settings, _content_type(key))
            report.model_keys.append(key)
        report.models_unchanged = models.unchanged
        report.models_replaced = [k for k in models.differ if k in models.write]
        report.champion_kept = models.champion_kept
        if model_keys:
            say(
                f"models bucket {settings.models_bucket}: {len(models.write)} objects written, "
                f"{len(models.unchanged)} already there"
            )
        for key in bundled:
            assert options.bundled_out is not None
            path = options.bundled_out / key[len(BUNDLED_DIR) :]
            atomic_write_bytes(path, _local(work_dir, key).read_bytes())
            report.bundled.append(path)
        if options.config:
            text = _local(work_dir, CONFIG).read_text()
            if options.config_out:
                atomic_write_bytes(options.config_out, text.encode())
                report.config_path = options.config_out
            else:
                report.config_json = text

        # -- and verified
        say("verifying what was restored")
        _verify_restored(settings, manifest, report, tables)
    logger.info(
        "restore complete",
        extra={
            "backup_id": backup_id,
            "tables": {t.table_name: t.items for t in report.tables},
            "model_objects": len(report.model_keys),
            "model_objects_unchanged": len(report.models_unchanged),
            "champion_kept": report.champion_kept,
            "bundled_files": len(report.bundled),
            "config": bool(options.config),
        },
    )
    return report


def _prepare_tables(
    settings: Settings, manifest: Manifest, options: RestoreOptions, work_dir: Path
) -> list[_TableWork]:
    works = []
    for setting in _resolve_tables(settings, manifest, options.only_tables):
        entry = manifest.tables[setting]
        if setting not in TABLES:
            raise ValueError(f"the backup's table {setting} is not a table of this version (Settings has no {setting})")
        work = _TableWork(
            setting=setting,
            entry=entry,
            target=getattr(settings, setting),
            file=_local(work_dir, entry.key),
            key_names=[k.name for k in entry.key_schema],
            digests={},
        )
        _load_table(work)
        works.append(work)
    return works


def _plan_models(settings: Settings, manifest: Manifest, options: RestoreOptions, model_keys: list[str]) -> _ModelsPlan:
    """Compare the backup's models bucket objects with the live ones: missing ones are written,
    ones with the backup's sha256 skipped, differing ones written only when overwriting; the
    champion pointer, when it differs, only with ``options.champion`` too."""
    plan = _ModelsPlan()
    existing = dict(store.list_objects(settings.models_bucket, "", settings))
    for backup_key in model_keys:
        key = backup_key[len(MODELS_DIR) :]
        entry = manifest.entry(backup_key)
        if key not in existing:
            plan.write.append(key)
            continue
        same = existing[key] == entry.size and _remote_sha(settings.models_bucket, key, settings) == (
            entry.sha256,
            entry.size,
        )
        if same:
            plan.unchanged.append(key)
        elif key == CHAMPION_KEY and not options.champion:
            plan.champion_kept = True
        else:
            plan.differ.append(key)
            if options.overwrite:
                plan.write.append(key)
    return plan


def _check_targets(
    settings: Settings,
    manifest: Manifest,
    options: RestoreOptions,
    tables: list[_TableWork],
    model_keys: list[str],
    bundled: list[str],
) -> _ModelsPlan:
    """Every target exists and fits; live data in the way is refused unless overwriting.
    Returns what to do with the models bucket's objects."""
    missing, unfit, live = [], [], []
    models = _ModelsPlan()
    for t in tables:
        desc = store.describe_table(t.target, settings)
        if desc is None:
            missing.append(f"table {t.target} ({t.setting}) does not exist: deploy the stack (or create the tables)")
            continue
        if _key_schema(desc) != t.entry.key_schema:
            unfit.append(f"table {t.target}: its key schema differs from the backed-up table {t.entry.table_name}'s")
            continue
        t.had_items = store.has_items(t.target, settings)
        if t.had_items:
            live.append(f"table {t.target} ({t.setting}) has items")
    if model_keys:
        if not store.bucket_exists(settings.models_bucket, settings):
            missing.append(f"models bucket {settings.models_bucket} does not exist: deploy the stack")
        else:
            models = _plan_models(settings, manifest, options, model_keys)
            clash = models.differ
            if clash:
                shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
                live.append(
                    f"models bucket {settings.models_bucket} has {len(clash)} of the backup's keys "
                    f"with other contents: {shown}"
                )
    if options.bundled_out is not None:
        if options.bundled_out.exists() and not options.bundled_out.is_dir():
            unfit.append(f"--bundled-out {options.bundled_out} is not a directory")
        else:
            clash = [k for k in bundled if (options.bundled_out / k[len(BUNDLED_DIR) :]).exists()]
            if clash:
                live.append(f"{len(clash)} bundled model file(s) already exist in {options.bundled_out}")
    if options.config and options.config_out is not None:
        if options.config_out.is_dir():
            unfit.append(f"--config-out {options.config_out} is a directory")
        elif options.config_out.exists():
            live.append(f"{options.config_out} exists")
    if missing:
        raise NotFoundError(_listing("cannot restore, nothing was changed", missing))
    if unfit:
        raise ValueError(_listing("cannot restore, nothing was changed", unfit))
    if live and not options.overwrite:
        raise ConflictError(
            _listing("refusing to overwrite live data without --yes (nothing was changed)", live)
            + "\nWith --yes a table's contents are replaced by the backup's (an on-demand backup of the "
            "table is taken first) and model objects and files with other contents are overwritten "
            "(the champion pointer only with --champion as well).",
            "restore_would_overwrite",
        )
    config_dir = options.config_out.parent if options.config and options.config_out else None
    for out_dir in (options.bundled_out if bundled else None, config_dir):
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)  # an OSError here, not after the tables are restored
    return models


def _restore_table(settings: Settings, t: _TableWork, say: Progress) -> TableRestore:
    result = TableRestore(t.setting, t.target, t.entry.items, replaced=t.had_items)
    if t.had_items:
        stamp = datetime.now(UTC).strftime(ID_FORMAT)
        name = _dynamodb_backup_name(t.target, f"prerestore-{stamp}")
        result.safety_backup_arn = store.create_backup(t.target, name, settings)
        say(f"table {t.target}: has items; on-demand backup {result.safety_backup_arn} taken before overwriting")
    batch: list[dict[str, Any]] = []
    for item in _items(t.file, t.entry.key):
        batch.append({"PutRequest": {"Item": decode_item(item)}})
        if len(batch) >= _WRITE_CHUNK:
            store.batch_write(t.target, batch, settings)
            batch = []
    if batch:
        store.batch_write(t.target, batch, settings)
    if t.had_items:
        # Put first, then delete what the backup does not have: a failure midway leaves
        # more items, never fewer.
        extra = []
        for live in store.scan_items(t.target, settings, keys_only=t.key_names):
            enc = encode_item(live)
            if item_key(enc, t.key_names) not in t.digests:
                extra.append({"DeleteRequest": {"Key": live}})
        store.batch_write(t.target, extra, settings)
        result.deleted = len(extra)
    say(f"table {t.target}: {t.entry.items} items written" + (f", {result.deleted} deleted" if result.deleted else ""))
    return result


def _verify_restored(settings: Settings, manifest: Manifest, report: RestoreReport, tables: list[_TableWork]) -> None:
    problems = []
    for t, r in zip(tables, report.tables, strict=True):
        live: dict[str, str] = {}
        for item in store.scan_items(t.target, settings):
            enc = encode_item(item)
            live[item_key(enc, t.key_names)] = item_digest(enc)
        wrong = [k for k, d in t.digests.items() if live.get(k) != d]
        if wrong:
            problems.append(f"table {t.target}: {len(wrong)} item(s) missing or different, e.g. key {wrong[0]}")
        r.extra_after = len(set(live) - set(t.digests))
    for key in report.model_keys:
        entry = manifest.entry(MODELS_DIR + key)
        got = _remote_sha(settings.models_bucket, key, settings)
        if got != (entry.sha256, entry.size):
            problems.append(f"models bucket {key}: does not read back as backed up")
    for path in report.bundled:
        if _file_sha(path) != manifest.entry(BUNDLED_DIR + path.name).sha256:
            problems.append(f"{path}: does not read back as backed up")
    if report.config_path is not None and _file_sha(report.config_path) != manifest.entry(CONFIG).sha256:
        problems.append(f"{report.config_path}: does not read back as backed up")
    if problems:
        raise BackupIntegrityError(_listing(f"restore of backup {manifest.backup_id} does not verify", problems))
