"""Restoring a verified backup (``backup``): the disaster-recovery scenarios 2 (a table
corrupted), 3 (model files lost) and 4 (everything lost, stack redeployed) of
``docs/requirements.md#disaster-recovery``.

A restore verifies the manifest and every object's sha256 before it touches anything, puts
back exactly what the manifest lists (into the tables and buckets the *current* Settings name,
so a redeployed stack with new physical names works), refuses to overwrite live data unless
told to, and verifies the result: each restored table re-scanned and compared item by item,
each restored object and file read back and hashed. Model objects already there with the
backup's contents are skipped, missing ones are put back without ``--yes``, ones that differ
need ``--yes``; the champion pointer (``registry/champion.json``) is never replaced by the
backup's unless asked (``--champion``), so promotions and rollbacks made since stand.

Before overwriting a table that has items it takes an on-demand backup of it
(``smartgrid-backup-prerestore-<time>-<table>``, pruned with the backups' own). A restore
holds one digest (about 150 bytes) per item of each restored table.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smartgrid.config import Settings
from smartgrid.domain.backup import ID_FORMAT, Progress, dynamodb_backup_name, local_copy, verify_backup
from smartgrid.domain.backup_format import (
    BUNDLED_DIR,
    CONFIG,
    MODELS_DIR,
    BackupIntegrityError,
    Manifest,
    TableEntry,
    content_type,
    decode_item,
    encode_item,
    file_sha,
    item_digest,
    item_key,
    key_schema_of,
    problem_listing,
    remote_sha,
)
from smartgrid.engine.atomic import atomic_write_bytes
from smartgrid.errors import ConflictError, NotFoundError
from smartgrid.observability import logger
from smartgrid.store import backups as store
from smartgrid.store.tables import TABLES

PART_NAMES = ("tables", "models", "config")
_WRITE_CHUNK = 500  # items handed to BatchWriteItem (25 a call) at a time
CHAMPION_KEY = "registry/champion.json"  # the champion pointer (smartgrid.domain.champion.CHAMPION_KEY)


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
        raise BackupIntegrityError(problem_listing(f"table copy {work.entry.key} is not consistent", problems))


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
            with local_copy(work_dir, MODELS_DIR + key).open("rb") as fh:
                store.put_object(settings.models_bucket, key, fh, settings, content_type(key))
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
            atomic_write_bytes(path, local_copy(work_dir, key).read_bytes())
            report.bundled.append(path)
        if options.config:
            text = local_copy(work_dir, CONFIG).read_text()
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
            file=local_copy(work_dir, entry.key),
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
        same = existing[key] == entry.size and remote_sha(settings.models_bucket, key, settings) == (
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
        if key_schema_of(desc) != t.entry.key_schema:
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
        raise NotFoundError(problem_listing("cannot restore, nothing was changed", missing))
    if unfit:
        raise ValueError(problem_listing("cannot restore, nothing was changed", unfit))
    if live and not options.overwrite:
        raise ConflictError(
            problem_listing("refusing to overwrite live data without --yes (nothing was changed)", live)
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
        name = dynamodb_backup_name(t.target, f"prerestore-{stamp}")
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
        got = remote_sha(settings.models_bucket, key, settings)
        if got != (entry.sha256, entry.size):
            problems.append(f"models bucket {key}: does not read back as backed up")
    for path in report.bundled:
        if file_sha(path) != manifest.entry(BUNDLED_DIR + path.name).sha256:
            problems.append(f"{path}: does not read back as backed up")
    if report.config_path is not None and file_sha(report.config_path) != manifest.entry(CONFIG).sha256:
        problems.append(f"{report.config_path}: does not read back as backed up")
    if problems:
        raise BackupIntegrityError(problem_listing(f"restore of backup {manifest.backup_id} does not verify", problems))
