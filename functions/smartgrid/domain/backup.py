"""Taking verified backups, listing them and verifying them: the daily backup (02:00) of
``docs/requirements.md#backups``, the copy that the scenarios of
``docs/requirements.md#disaster-recovery`` restore from (the restore itself: ``restore``).

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

The manifest's model and checks, the items' encoding and the checksums of what is read back
are in ``backup_format``, shared with ``restore``.

Scale and limits. Memory stays small whatever the data: a table is read one Scan page (at most
1 MB) at a time and streamed through gzip into a temporary file on disk, and uploads go up in
parts of ``store.PART_BYTES`` (16 MiB; at most two in memory). The sha256 is computed while each
object is written and S3 checks the upload (SHA256 checksums, per part for multipart uploads),
so nothing is downloaded again to verify it. The limits are then: /tmp, which must hold the
largest gzip table copy or model object (one at a time; the backup function has 10 GB of
ephemeral storage), and time: each table is one sequential Scan, so the whole backup (every
table, every model object copied through the function) must fit in the Lambda's 900 s. Past
a few GB of table data, use DynamoDB export to S3 or the on-demand backups instead of the
portable copy.

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
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

from smartgrid.catalog import BACKUP_RETENTION_DAYS
from smartgrid.config import Settings
from smartgrid.domain.backup_format import (
    BUNDLED_DIR,
    CONFIG,
    FORMAT_VERSION,
    MANIFEST,
    MODELS_DIR,
    TABLES_DIR,
    BackupIntegrityError,
    KeyAttribute,
    Manifest,
    ObjectEntry,
    TableEntry,
    canonical_json,
    content_type,
    encode_item,
    key_schema_of,
    manifest_bytes,
    parse_manifest,
    problem_listing,
    remote_sha,
)
from smartgrid.errors import ConflictError, NotFoundError
from smartgrid.observability import logger
from smartgrid.store import backups as store
from smartgrid.store.tables import TABLES

BACKUPS_PREFIX = "backups/"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(r"^\d{8}T\d{6}Z$")
_SPOOL_BYTES = 4 << 20  # a manifest read back beyond this (it never is) spills to /tmp

DYNAMODB_BACKUP_PREFIX = "smartgrid-backup-"  # the on-demand backups this code makes (and prunes)
_OUR_DYNAMODB_BACKUP = re.compile(rf"^{re.escape(DYNAMODB_BACKUP_PREFIX)}(prerestore-)?\d{{8}}T\d{{6}}Z-.")

Progress = Callable[[str], None]


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


# ------------------------------------------------------------ hashing what is written
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
            tables.append(TablePlan(setting, name, key_schema_of(desc)))
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
        uploaded = store.upload_checked(self.bucket, self.prefix + key, stream, self.settings, content_type(key))
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
            gz.write(canonical_json(encode_item(item)) + b"\n")
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
        arn = store.create_backup(t.table_name, dynamodb_backup_name(t.table_name, plan.backup_id), settings)
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
            if remote_sha(settings.models_bucket, key, settings, into=tmp, hasher=digest) is None:
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


def dynamodb_backup_name(table: str, backup_id: str) -> str:
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
            got = remote_sha(settings.backups_bucket, key, settings, into=spool)
            if got != (hashlib.sha256(data).hexdigest(), len(data)):
                raise BackupIntegrityError(f"backup {backup_id}: {MANIFEST} did not read back as written")
            spool.seek(0)
            parse_manifest(spool.read(), backup_id)
        problems = _presence_problems(settings, backup_id, manifest)
        if problems:
            raise BackupIntegrityError(
                problem_listing(f"backup {backup_id}: objects changed under the manifest", problems)
            )
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
                raise BackupIntegrityError(problem_listing(f"backup {backup_id} is missing objects", problems))
    except BackupIntegrityError as exc:
        return BackupInfo(backup_id, created, "damaged", len(listing), size, {}, str(exc))
    counts = {s: t.items for s, t in manifest.tables.items()}
    return BackupInfo(backup_id, manifest.created_at, "verified", len(listing), size, counts)


def _read_small(bucket: str, key: str, settings: Settings) -> bytes | None:
    with _spool() as spool:
        if remote_sha(bucket, key, settings, into=spool) is None:
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
            got = remote_sha(bucket, prefix + o.key, settings)
        else:
            with local_copy(download_to, o.key).open("wb") as sink:
                got = remote_sha(bucket, prefix + o.key, settings, into=sink)
        if got is None:
            problems.append(f"{o.key}: missing")
        elif got != (o.sha256, o.size):
            problems.append(f"{o.key}: sha256 {got[0]} ({got[1]} bytes), the manifest says {o.sha256} ({o.size} bytes)")
    if problems:
        raise BackupIntegrityError(
            problem_listing(f"backup {backup_id} does not verify; refusing to use it (nothing was changed)", problems)
        )
    return manifest


def local_copy(root: Path, key: str) -> Path:
    """Where a verified object is kept during a restore (a name derived from the key's hash:
    S3 keys may hold anything, a file name may not)."""
    return root / hashlib.sha256(key.encode()).hexdigest()
