"""Backups and restores: the daily job's layout and manifest, failures that must leave no
manifest, `backups list`, restores that refuse bad backups and live data, and the
disaster-recovery drills of docs/requirements.md#disaster-recovery: 2 (a table corrupted),
3 (model files lost) and 4 (everything lost, stack redeployed), end to end on moto with data
written through the API's domain and real onnxruntime."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartgrid.catalog import BACKUP_RETENTION_DAYS
from smartgrid.cli.main import app
from smartgrid.config import BUNDLED_MODEL_DIR, get_settings
from smartgrid.domain import backup as bk
from smartgrid.domain import backup_format as fmt
from smartgrid.observability import logger
from smartgrid.store import backups as store
from smartgrid.store.aws import client, reset_clients
from smartgrid.store.tables import TABLES, create_tables
from tests.helpers.apigw import LambdaContext
from tests.helpers.emf import value

SCHEDULER_EVENT = {  # what EventBridge Scheduler sends the backup function at 02:00
    "version": "0",
    "id": "0c7e3a4e-5d0f-4c55-9a8e-3f1d2f6f7b01",
    "detail-type": "Scheduled Event",
    "source": "aws.scheduler",
    "time": "2026-11-28T02:00:00Z",
    "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/smartgrid-dev-backup"],
    "detail": {},
}
T1 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
SET = "models/20261101T000000Z-1a2b3c4d/"  # a model set in the registry's layout
ODD_KEY = "registry/decisions/2026-11 décision #1.json"  # spaces, accents, '#': kept as is
RAW_ITEM = {  # types the pynamodb models never write; the portable copy must keep them
    "key": {"S": "raw#binary"},
    "blob": {"B": bytes(range(256))},
    "blobs": {"BS": [b"\x00\x01", b"\xff"]},
    "names": {"SS": ["b", "a", "c"]},
    "nums": {"NS": ["1.5", "-2", "10"]},
    "nested": {"M": {"l": {"L": [{"N": "1"}, {"NULL": True}, {"BOOL": False}, {"B": b"\x10"}]}}},
    "value": {"S": "{}"},
    "valid_until": {"N": "0"},
}
CHAMPION = "registry/champion.json"
runner = CliRunner()


def _config(settings, origin: str = "cli") -> dict:
    """What config.json holds: the settings of the process that ran the backup, labelled."""
    return {"source": f"settings of the backup function ({origin})", **settings.model_dump(mode="json")}


# ------------------------------------------------------------------------------ fixtures
def _create_buckets(settings) -> None:
    s3 = client("s3", settings)
    for bucket in (settings.models_bucket, settings.backups_bucket, settings.meter_data_bucket):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=settings.models_bucket, VersioningConfiguration={"Status": "Enabled"})


def _drop_bucket(name: str, settings) -> None:
    s3 = client("s3", settings)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def settings(aws):
    reset_clients()
    get_settings.cache_clear()
    s = get_settings()
    _create_buckets(s)
    yield s
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def inputs(request):
    """Two sites' last 14 days (real load data), as the API receives them."""
    from smartgrid.domain.predictions import SeriesInput
    from smartgrid.engine.csv_files import load_series
    from smartgrid.engine.data import iso_all
    from tests.helpers.paths import DATA

    out = []
    for name, site in (("gefcom_150d.csv.gz", "site-a"), ("pjme_150d.csv.gz", "site-b")):
        s = load_series(DATA / name)
        lo = s.n - 14 * s.steps_per_day
        out.append(SeriesInput(timestamps=iso_all(s.timestamps[lo:]), load=s.load[lo:].tolist(), site_id=site))
    return out


@pytest.fixture
def seeded(settings, inputs):
    """Real data in every table through the API's domain (predictions, the cache, an
    idempotency record, actuals), an incident, a raw item of every DynamoDB type, and a model registry in
    the models bucket."""
    from smartgrid.domain.predictions import build_service

    svc = build_service(settings)
    alice = svc.predict("alice", inputs, idempotency_key="batch-1", request_digest="d1")
    svc.predict("bob", inputs[:1])
    rec = alice[0].record
    assert rec is not None
    svc.record_actuals("alice", rec.prediction_id, rec.timestamps[:3], [1000.0, 1010.5, 990.25])
    client("dynamodb", settings).put_item(TableName=settings.cache_table, Item=RAW_ITEM)
    # an incident the notifier resolved, and the day's counter
    from datetime import UTC, datetime

    from smartgrid.store.tables import IncidentItem, bind

    bind(settings)
    IncidentItem(
        "INC#INC-2026-11-28-001",
        incident_id="INC-2026-11-28-001",
        alarm_name="smartgrid-test-api-down",
        alert_id="api-down",
        severity="CRITICAL",
        level="L3",
        status="RESOLVED",
        detected_at=datetime(2026, 11, 28, 14, 23, 45, tzinfo=UTC),
        resolved_at=datetime(2026, 11, 28, 14, 28, 45, tzinfo=UTC),
        sent={"open:sns", "resolved:sns"},
    ).save()
    IncidentItem("SEQ#2026-11-28", counter=1).save()
    s3 = client("s3", settings)
    for path in sorted(BUNDLED_MODEL_DIR.iterdir()):
        s3.put_object(Bucket=settings.models_bucket, Key=f"{SET}{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=settings.models_bucket, Key=ODD_KEY, Body=b'{"deployed": false}')
    snap = _snapshot(settings)
    assert all(snap["tables"].values()), {k: len(v) for k, v in snap["tables"].items()}  # no table empty
    return snap


def _scan(settings, setting: str) -> dict[str, str]:
    """A table's items: canonical key -> canonical item (sets sorted)."""
    model = TABLES[setting]
    keys = [model._hash_keyname, *([model._range_keyname] if model._range_keyname else [])]
    items = store.scan_items(getattr(settings, setting), settings)
    out = {}
    for it in items:
        enc = fmt.encode_item(it)
        out[fmt.item_key(enc, keys)] = json.dumps(fmt._normal(enc), sort_keys=True)
    return out


def _models(settings) -> dict[str, bytes]:
    s3 = client("s3", settings)
    return {
        k: s3.get_object(Bucket=settings.models_bucket, Key=k)["Body"].read()
        for k, _ in store.list_objects(settings.models_bucket, "", settings)
    }


def _snapshot(settings) -> dict:
    return {"tables": {s: _scan(settings, s) for s in TABLES}, "models": _models(settings)}


def _keys(settings, prefix: str) -> dict[str, int]:
    return dict(store.list_objects(settings.backups_bucket, prefix, settings))


def _get(settings, key: str) -> bytes:
    return client("s3", settings).get_object(Bucket=settings.backups_bucket, Key=key)["Body"].read()


def _put(settings, key: str, body: bytes) -> None:
    client("s3", settings).put_object(Bucket=settings.backups_bucket, Key=key, Body=body)


def _run_handler(capsys) -> tuple[object, dict, list[dict]]:
    """The job handler on a Scheduler event: (result or exception, EMF line, log lines)."""
    from smartgrid.jobs.backup import handler

    capsys.readouterr()
    buf = io.StringIO()
    h = logger.registered_handler
    old = h.setStream(buf)  # type: ignore[attr-defined]
    try:
        result: object = handler(SCHEDULER_EVENT, LambdaContext(function_name="smartgrid-backup"))
    except Exception as exc:
        result = exc
    finally:
        h.setStream(old)  # type: ignore[attr-defined]
    (emf,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    return result, emf, [json.loads(x) for x in buf.getvalue().splitlines()]


def _restore(*args: str):
    return runner.invoke(app, ["restore", *args])


def _logged(fn):
    """fn()'s result and the log lines it wrote."""
    buf = io.StringIO()
    h = logger.registered_handler
    old = h.setStream(buf)  # type: ignore[attr-defined]
    try:
        result = fn()
    finally:
        h.setStream(old)  # type: ignore[attr-defined]
    return result, [json.loads(x) for x in buf.getvalue().splitlines()]


def _versions(settings, key: str) -> int:
    listed = client("s3", settings).list_object_versions(Bucket=settings.models_bucket, Prefix=key)
    return sum(v["Key"] == key for v in listed.get("Versions", []))


# -------------------------------------------------------------------------------- backup
def test_backup_writes_the_layout_and_a_manifest_that_verifies(seeded, settings):
    result = bk.run_backup(settings, now=T2)
    assert result.backup_id == "20261128T020000Z"
    prefix = "backups/20261128T020000Z/"
    listing = _keys(settings, prefix)
    rel = {k[len(prefix) :] for k in listing}
    assert {f"tables/{s}.jsonl.gz" for s in TABLES} <= rel
    assert {f"models/{k}" for k in seeded["models"]} <= rel
    assert {f"bundled/{p.name}" for p in BUNDLED_MODEL_DIR.glob("*.*")} <= rel
    assert {"config.json", "manifest.json"} <= rel
    assert len(rel) == len(TABLES) + len(seeded["models"]) + 6 + 2 == result.objects
    assert sum(listing.values()) == result.bytes

    manifest = fmt.parse_manifest(_get(settings, prefix + "manifest.json"), result.backup_id)
    assert manifest.status == "complete" and manifest.backup_id == result.backup_id
    assert manifest.created_at == T2
    assert {o.key for o in manifest.objects} == rel - {"manifest.json"}
    for o in manifest.objects:  # every size and checksum is the stored object's
        data = _get(settings, prefix + o.key)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (o.size, o.sha256)
    for setting, t in manifest.tables.items():
        assert t.items == len(seeded["tables"][setting]) == result.tables[setting]
        assert t.table_name == getattr(settings, setting)
        assert t.dynamodb_backup_arn.startswith("arn:aws:dynamodb:") and "/backup/" in t.dynamodb_backup_arn
        lines = gzip.decompress(_get(settings, prefix + t.key)).splitlines()
        assert len(lines) == t.items
        model = TABLES[setting]
        keys = [model._hash_keyname, *([model._range_keyname] if model._range_keyname else [])]
        copied = {fmt.item_key(i, keys): json.dumps(fmt._normal(i), sort_keys=True) for i in map(json.loads, lines)}
        assert copied == seeded["tables"][setting]  # DynamoDB JSON, every attribute, binary too
    assert json.loads(_get(settings, prefix + "config.json")) == _config(settings)
    for key, data in seeded["models"].items():
        assert _get(settings, prefix + "models/" + key) == data
    assert bk.verify_backup(settings, result.backup_id) == manifest
    # the DynamoDB on-demand backups exist
    names = {b["BackupArn"]: b["BackupName"] for b in client("dynamodb", settings).list_backups()["BackupSummaries"]}
    for t in manifest.tables.values():
        assert names[t.dynamodb_backup_arn] == f"smartgrid-backup-20261128T020000Z-{t.table_name}"
    # a second backup in the same second would write over the first: refused
    with pytest.raises(bk.ConflictError):
        bk.run_backup(settings, now=T2)


def test_the_handler_backs_up_on_a_scheduler_event_and_reports_success(seeded, settings, capsys):
    result, emf, logs = _run_handler(capsys)
    assert isinstance(result, dict), result
    assert set(result) >= {"backup_id", "objects", "bytes"} and result["objects"] > 10 and result["bytes"] > 0
    assert value(emf, "job_succeeded_total") == 1 and emf["job"] == "backup"
    assert logs[-1]["message"] == "job succeeded"
    bk.verify_backup(settings, result["backup_id"])
    (info,) = bk.list_backups(settings)
    assert info.status == "verified" and info.backup_id == result["backup_id"]
    assert result["dynamodb_backups_deleted"] == 0  # today's are young
    config = json.loads(_get(settings, f"backups/{info.backup_id}/config.json"))
    assert config == _config(settings, "smartgrid-backup")  # the function's name, from its context


def test_a_failure_midway_leaves_no_manifest_and_the_job_fails(seeded, settings, capsys, monkeypatch):
    real_put = store.upload_checked
    calls = []

    def flaky_put(bucket, key, body, s, content_type):
        calls.append(key)
        if len(calls) > 5:
            raise ConnectionError("S3 went away")
        return real_put(bucket, key, body, s, content_type)

    monkeypatch.setattr(store, "upload_checked", flaky_put)
    result, emf, logs = _run_handler(capsys)
    assert isinstance(result, ConnectionError)  # re-raised: the invocation retries, then the DLQ
    assert value(emf, "job_failed_total") == 1 and "job_succeeded_total" not in emf
    assert logs[-1]["message"] == "job failed" and logs[-1]["level"] == "ERROR"
    written = _keys(settings, "backups/")
    assert len(written) == 5 and not any(k.endswith("manifest.json") for k in written)
    (info,) = bk.list_backups(settings)
    assert info.status == "incomplete" and info.objects == 5
    monkeypatch.setattr(store, "upload_checked", real_put)
    refused = _restore("--backup", info.backup_id, "--yes")
    assert refused.exit_code == 3 and "incomplete" in refused.output


def test_a_manifest_that_does_not_read_back_is_deleted(seeded, settings, monkeypatch):
    real_open = store.open_object

    def garbling_open(bucket, key, s):
        body = real_open(bucket, key, s)
        if key.endswith("manifest.json") and body is not None:
            return io.BytesIO(body.read().replace(b"complete", b"c0mplete"))
        return body

    monkeypatch.setattr(store, "open_object", garbling_open)
    with pytest.raises(fmt.BackupIntegrityError, match="did not read back"):
        bk.run_backup(settings, now=T2)
    assert not any(k.endswith("manifest.json") for k in _keys(settings, "backups/"))


def test_backups_list_newest_first_with_status_size_and_counts(seeded, settings):
    bk.run_backup(settings, now=T1)
    bk.run_backup(settings, now=T2)
    _put(settings, "backups/20261128T030000Z/tables/predictions_table.jsonl.gz", b"partial")  # a failed run
    out = runner.invoke(app, ["backups", "list", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [(r["backup_id"], r["status"]) for r in rows] == [
        ("20261128T030000Z", "incomplete"),
        ("20261128T020000Z", "verified"),
        ("20261127T020000Z", "verified"),
    ]
    assert rows[1]["created_at"] == "2026-11-28T02:00:00Z" and rows[1]["size"] > 0
    assert rows[1]["tables"] == {s: len(v) for s, v in seeded["tables"].items()}
    assert rows[0]["tables"] == {} and "no manifest.json" in rows[0]["problem"]
    table = runner.invoke(app, ["backups", "list"])
    assert table.exit_code == 0 and "20261127T020000Z" in table.output and "incomplete" in table.output
    # `latest` is the newest verified one
    assert bk.latest_backup(settings) == "20261128T020000Z"


# -------------------------------------------------------------------- refusing to restore
def test_a_corrupted_backup_is_refused_before_anything_is_touched(seeded, settings):
    backup_id = bk.run_backup(settings, now=T2).backup_id
    prefix = f"backups/{backup_id}/"
    key = prefix + "models/" + SET + "load_forecast.onnx"
    good = _get(settings, key)
    _put(settings, key, bytes([good[0] ^ 0xFF]) + good[1:])  # one byte flipped, same size
    _drop_bucket(settings.models_bucket, settings)  # scenario 3 ...
    _create_buckets_only_models(settings)
    out = _restore("--backup", backup_id, "--yes")
    assert out.exit_code == 3, out.output
    assert "does not verify" in out.output and "load_forecast.onnx" in out.output
    assert _models(settings) == {}  # ... and nothing was restored from a bad backup
    assert _snapshot(settings)["tables"] == seeded["tables"]
    listed = runner.invoke(app, ["backups", "list", "--verify", "--json"])
    assert json.loads(listed.stdout)[0]["status"] == "damaged"
    assert runner.invoke(app, ["backups", "verify", "--backup", backup_id]).exit_code == 3

    _put(settings, key, good)  # repaired; now the manifest is tampered with
    manifest = json.loads(_get(settings, prefix + "manifest.json"))
    manifest["tables"]["predictions_table"]["items"] += 1
    _put(settings, prefix + "manifest.json", json.dumps(manifest).encode())
    out = _restore("--backup", backup_id, "--models")
    assert out.exit_code == 3 and "changed after it was written" in out.output
    assert _models(settings) == {}
    assert json.loads(runner.invoke(app, ["backups", "list", "--json"]).stdout)[0]["status"] == "damaged"

    missing = _restore("--backup", "20200101T000000Z")
    assert missing.exit_code == 2 and "no backup 20200101T000000Z" in missing.output
    bad_id = _restore("--backup", "yesterday")
    assert bad_id.exit_code == 2 and "not a backup id" in bad_id.output


def _create_buckets_only_models(settings) -> None:
    s3 = client("s3", settings)
    s3.create_bucket(Bucket=settings.models_bucket)
    s3.put_bucket_versioning(Bucket=settings.models_bucket, VersioningConfiguration={"Status": "Enabled"})


def test_restore_refuses_to_overwrite_live_data_without_yes(seeded, settings, tmp_path):
    backup_id = bk.run_backup(settings, now=T2).backup_id
    client("s3", settings).put_object(Bucket=settings.models_bucket, Key=f"{SET}anomaly_detector.onnx", Body=b"newer")
    config_out = tmp_path / "config.json"
    config_out.write_text("{}")
    before = _snapshot(settings)
    out = _restore("--backup", backup_id, "--config-out", str(config_out))
    assert out.exit_code == 2, out.output
    for setting in TABLES:
        assert f"table {getattr(settings, setting)} ({setting}) has items" in out.output
    assert "models bucket smartgrid-models has 1 of the backup's keys with other contents" in out.output
    assert "anomaly_detector.onnx" in out.output and "load_forecast.onnx" not in out.output  # same ones: no clash
    assert str(config_out) in out.output and "--yes" in out.output
    assert _snapshot(settings) == before and config_out.read_text() == "{}"
    only_models = _restore("--backup", backup_id, "--models")
    assert only_models.exit_code == 2 and "has items" not in only_models.output
    assert _snapshot(settings) == before
    replaced = _restore("--backup", backup_id, "--models", "--yes")
    assert replaced.exit_code == 0, replaced.output
    assert "1 objects written (1 of them replaced), 6 already there" in replaced.output
    assert _models(settings) == seeded["models"]
    stray = _restore("--backup", backup_id, "--tables", "--config-out", str(config_out))
    assert stray.exit_code == 2 and "add --config" in stray.output
    unknown = _restore("--backup", backup_id, "--table", "forecasts")
    assert unknown.exit_code == 2 and "no such table" in unknown.output


# ---------------------------------------------------------------------------- the drills
def test_drill_2_a_corrupted_table_is_restored_and_the_others_are_left_alone(seeded, settings, inputs):
    from smartgrid.domain.predictions import build_service

    backup_id = bk.run_backup(settings, now=T2).backup_id
    # after the backup: a new prediction (actuals table) that a table-2 restore must not lose
    svc = build_service(settings)
    later = svc.predict("carol", inputs[1:])[0].record
    assert later is not None
    svc.record_actuals("carol", later.prediction_id, later.timestamps[:1], [500.0])
    actuals_now = _scan(settings, "actuals_table")
    # the predictions table is corrupted: dropped, recreated, garbage in it (some over real keys)
    ddb = client("dynamodb", settings)
    ddb.delete_table(TableName=settings.predictions_table)
    create_tables(settings)
    real = next(iter(json.loads(k) for k in seeded["tables"]["predictions_table"]))
    for user, pid in [(real[0]["S"], real[1]["S"]), ("mallory", "garbage-1"), ("mallory", "garbage-2")]:
        ddb.put_item(
            TableName=settings.predictions_table,
            Item={"user_id": {"S": user}, "prediction_id": {"S": pid}, "forecast": {"S": "not json"}},
        )

    refused = _restore("--backup", backup_id, "--table", "predictions")
    assert refused.exit_code == 2 and "smartgrid-predictions (predictions_table) has items" in refused.output
    out = _restore("--backup", backup_id, "--table", "predictions", "--yes")
    assert out.exit_code == 0, out.output
    assert "2 items not in the backup deleted" in out.output and "before: arn:aws:dynamodb:" in out.output
    assert _scan(settings, "predictions_table") == seeded["tables"]["predictions_table"]
    assert _scan(settings, "actuals_table") == actuals_now  # not part of this restore
    assert _models(settings) == seeded["models"]
    # the API reads the restored predictions again
    page = build_service(settings).list_predictions("alice", None, 10, None)
    assert len(page.items) == 2 and all(len(p.p50) == 24 for p in page.items)


def test_drill_3_lost_model_files_come_back_from_the_backup(seeded, settings, tmp_path):
    from smartgrid.engine.forecast import ModelSet

    backup_id = bk.run_backup(settings, now=T2).backup_id
    s3 = client("s3", settings)
    for key in seeded["models"]:
        s3.delete_object(Bucket=settings.models_bucket, Key=key)
    assert _models(settings) == {}
    bundled = tmp_path / "models"
    out = _restore("--backup", backup_id, "--models", "--bundled-out", str(bundled))
    assert out.exit_code == 0, out.output
    assert f"{len(seeded['models'])} objects" in out.output and "6 written" in out.output
    assert _models(settings) == seeded["models"]
    assert _snapshot(settings)["tables"] == seeded["tables"]  # tables untouched
    # the bundled set works even if the bucket had been empty: checksums and onnxruntime load
    ms = ModelSet.load(bundled)
    assert not ms.errors and len(ms.models) == 3
    for path in BUNDLED_MODEL_DIR.glob("*.*"):
        assert (bundled / path.name).read_bytes() == path.read_bytes()


def test_drill_4_everything_lost_and_redeployed_is_restored(seeded, settings, tmp_path):
    from smartgrid.domain.predictions import build_service

    backup_id = bk.run_backup(settings, now=T2).backup_id
    alice_before = build_service(settings).list_predictions("alice", None, 10, None)
    ddb = client("dynamodb", settings)
    for setting in TABLES:
        ddb.delete_table(TableName=getattr(settings, setting))
    for bucket in (settings.models_bucket, settings.meter_data_bucket):
        _drop_bucket(bucket, settings)
    # the redeploy: empty tables and buckets (the backups bucket is retained)
    create_tables(settings)
    s3 = client("s3", settings)
    for bucket in (settings.models_bucket, settings.meter_data_bucket):
        s3.create_bucket(Bucket=bucket)
    assert all(not v for v in _snapshot(settings)["tables"].values()) and _models(settings) == {}

    config = tmp_path / "deploy" / "config.json"
    out = _restore("--backup", "latest", "--config-out", str(config))  # no part flags: everything
    assert out.exit_code == 0, out.output
    assert _snapshot(settings) == seeded  # every item of every table, every model object
    assert json.loads(config.read_text()) == _config(settings)
    assert "warning: these are the backup function's settings" in out.output
    alice_after = build_service(settings).list_predictions("alice", None, 10, None)
    assert alice_after == alice_before
    # restoring again is refused: the data is live now
    again = _restore("--backup", backup_id)
    assert again.exit_code == 2


def test_restore_prints_the_config_by_default_and_checks_part_flags(seeded, settings):
    backup_id = bk.run_backup(settings, now=T2).backup_id
    out = _restore("--backup", backup_id, "--config")
    assert out.exit_code == 0, out.output
    printed = out.stdout[out.stdout.index("{") :]
    assert json.loads(printed) == _config(settings)
    assert "the backup function's settings, not every function's" in out.stdout
    assert "table" not in out.stdout.split("configuration")[0].split("verified:")[1]


def test_the_backup_command_runs_the_same_backup(seeded, settings):
    out = runner.invoke(app, ["backup"])
    assert out.exit_code == 0, out.output
    assert "verified" in out.output and "predictions_table: 3 items" in out.output
    (info,) = bk.list_backups(settings, deep=True)
    assert info.status == "verified"
    checked = runner.invoke(app, ["backups", "verify", "--backup", "latest"])
    assert checked.exit_code == 0 and f"backup {info.backup_id}: verified" in checked.output


def test_backup_refuses_when_a_table_or_bucket_is_missing(settings):
    client("dynamodb", settings).delete_table(TableName=settings.cache_table)
    out = runner.invoke(app, ["backup"])
    assert out.exit_code == 2 and "table smartgrid-cache (cache_table)" in out.output
    assert _keys(settings, "backups/") == {}


# ------------------------------------------------------------- S3 checks what was written
def test_uploads_are_checked_by_s3_checksums_not_read_back(seeded, settings, monkeypatch):
    real_open = store.open_object
    read = []

    def counting_open(bucket, key, s):
        if bucket == settings.backups_bucket:
            read.append(key)
        return real_open(bucket, key, s)

    monkeypatch.setattr(store, "open_object", counting_open)
    result = bk.run_backup(settings, now=T2)
    assert read == [result.manifest_key]  # only the (small) manifest is read back
    monkeypatch.setattr(store, "open_object", real_open)
    bk.verify_backup(settings, result.backup_id)  # and every object reads back with its sha256


def test_an_object_s3_did_not_store_as_written_fails_the_backup(seeded, settings, monkeypatch):
    real = store.upload_checked

    def lossy(bucket, key, body, s, content_type):
        uploaded = real(bucket, key, body, s, content_type)
        if key.endswith("cache_table.jsonl.gz"):  # S3 says it stored other bytes
            return store.Uploaded(base64.b64encode(hashlib.sha256(b"other").digest()).decode(), [])
        return uploaded

    monkeypatch.setattr(store, "upload_checked", lossy)
    with pytest.raises(fmt.BackupIntegrityError, match=r"cache_table\.jsonl\.gz was not stored as written"):
        bk.run_backup(settings, now=T2)
    assert not any(k.endswith("manifest.json") for k in _keys(settings, "backups/"))


def test_a_large_object_goes_up_in_parts_each_checked_by_s3(seeded, settings, monkeypatch):
    monkeypatch.setattr(store, "PART_BYTES", 5 << 20)  # S3's smallest part size
    big = random.Random(7).randbytes((11 << 20) + 7)
    client("s3", settings).put_object(Bucket=settings.models_bucket, Key=f"{SET}big.bin", Body=big)
    real = store.upload_checked
    parts: dict[str, int] = {}

    def spy(bucket, key, body, s, content_type):
        uploaded = real(bucket, key, body, s, content_type)
        parts[key.split("/", 2)[2]] = len(uploaded.part_checksums)
        return uploaded

    monkeypatch.setattr(store, "upload_checked", spy)
    result = bk.run_backup(settings, now=T2)
    assert parts.pop(f"models/{SET}big.bin") == 3 and set(parts.values()) == {0}  # the rest: one PutObject
    assert _get(settings, f"backups/{result.backup_id}/models/{SET}big.bin") == big
    assert bk.verify_backup(settings, result.backup_id).entry(f"models/{SET}big.bin").size == len(big)


def test_the_digest_matches_what_s3_reports_whole_and_in_parts():
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    d = bk._Digest()
    d.part_bytes = 4
    for piece in (b"ab", b"cdefg", b"", b"hij"):
        d.update(piece)
    assert d.hexdigest() == hashlib.sha256(b"abcdefghij").hexdigest() and d.size == 10
    parts = [hashlib.sha256(p).digest() for p in (b"abcd", b"efgh", b"ij")]
    composite = b64(hashlib.sha256(b"".join(parts)).digest())
    ok = [b64(p) for p in parts]
    assert d.upload_problem(store.Uploaded(composite, ok)) is None  # moto: no suffix
    assert d.upload_problem(store.Uploaded(f"{composite}-3", ok)) is None  # S3: "-<parts>"
    assert "1 not as written" in (d.upload_problem(store.Uploaded(composite, [ok[0], ok[2], ok[2]])) or "")
    assert d.upload_problem(store.Uploaded(f"{composite}-4", ok)) is not None
    assert d.upload_problem(store.Uploaded(None, ok)) is not None
    one = bk._Digest()
    one.part_bytes = 4
    one.update(b"abcd")  # exactly one part: a single PutObject, the whole object's checksum
    assert one.upload_problem(store.Uploaded(b64(hashlib.sha256(b"abcd").digest()), [])) is None
    empty = bk._Digest()
    assert empty.upload_problem(store.Uploaded(b64(hashlib.sha256(b"").digest()), [])) is None


# ------------------------------------------------------- partial model loss, the champion
def test_a_partial_model_loss_restores_only_the_missing_keys_without_yes(seeded, settings):
    s3 = client("s3", settings)
    s3.put_object(Bucket=settings.models_bucket, Key=CHAMPION, Body=b'{"set_id": "20261101T000000Z-1a2b3c4d"}')
    backup_id = bk.run_backup(settings, now=T2).backup_id
    before = _models(settings)
    lost = f"{SET}load_forecast.onnx"
    s3.delete_object(Bucket=settings.models_bucket, Key=lost)
    out = _restore("--backup", backup_id, "--models")
    assert out.exit_code == 0, out.output
    assert f"1 objects written, {len(before) - 1} already there (same contents)" in out.output
    assert _models(settings) == before
    for key in before:  # nothing but the lost key was written again (its first version is kept: versioning)
        assert _versions(settings, key) == (2 if key == lost else 1), key
    assert "champion" not in out.output  # the live pointer is the backup's: nothing to say
    assert _snapshot(settings)["tables"] == seeded["tables"]


def test_a_newer_champion_pointer_is_left_alone_unless_champion(seeded, settings):
    s3 = client("s3", settings)
    old, newer = b'{"set_id": "old"}', b'{"set_id": "promoted-after-the-backup"}'
    s3.put_object(Bucket=settings.models_bucket, Key=CHAMPION, Body=old)
    backup_id = bk.run_backup(settings, now=T2).backup_id
    s3.put_object(Bucket=settings.models_bucket, Key=CHAMPION, Body=newer)  # a promotion since
    lost = f"{SET}anomaly_detector.onnx"
    s3.delete_object(Bucket=settings.models_bucket, Key=lost)

    out = _restore("--backup", backup_id, "--models")  # no --yes needed: the pointer is not in the way
    assert out.exit_code == 0, out.output
    assert "champion pointer registry/champion.json: the live one differs" in out.output
    assert "left as is" in out.output and "--champion --yes" in out.output
    models = _models(settings)
    assert models[CHAMPION] == newer and models[lost] == seeded["models"][lost]
    also_yes = _restore("--backup", backup_id, "--models", "--yes")  # --yes alone does not replace it
    assert also_yes.exit_code == 0 and _models(settings)[CHAMPION] == newer

    refused = _restore("--backup", backup_id, "--models", "--champion")
    assert refused.exit_code == 2 and "registry/champion.json" in refused.output and "--yes" in refused.output
    assert _models(settings)[CHAMPION] == newer
    replaced = _restore("--backup", backup_id, "--models", "--champion", "--yes")
    assert replaced.exit_code == 0, replaced.output
    assert "champion pointer registry/champion.json: replaced by the backup's" in replaced.output
    assert _models(settings)[CHAMPION] == old


# ------------------------------------------------------------ pruning on-demand backups
def test_old_on_demand_backups_made_here_are_pruned_and_no_others(settings):
    ddb = client("dynamodb", settings)
    bk.run_backup(settings, now=T2)  # one on-demand backup per table
    table = settings.predictions_table
    store.create_backup(table, bk.dynamodb_backup_name(table, "prerestore-20261128T030000Z"), settings)
    foreign = {
        store.create_backup(table, name, settings)
        for name in ("manual-before-migration", f"{table}-20261128T020000Z", "smartgrid-backup-keep-me")
    }

    def arns() -> set[str]:
        return {b["BackupArn"] for b in ddb.list_backups()["BackupSummaries"]}

    assert len(arns()) == len(TABLES) + 1 + len(foreign)
    soon = datetime.now(UTC) + timedelta(days=BACKUP_RETENTION_DAYS - 1)
    assert bk.prune_dynamodb_backups(settings) == 0 and bk.prune_dynamodb_backups(settings, now=soon) == 0
    later = datetime.now(UTC) + timedelta(days=BACKUP_RETENTION_DAYS + 1)
    deleted, logs = _logged(lambda: bk.prune_dynamodb_backups(settings, now=later))
    assert deleted == len(TABLES) + 1
    assert arns() == foreign  # never a backup this code did not make
    assert logs[-1]["message"] == "old on-demand backups pruned" and logs[-1]["deleted"] == deleted


def test_a_failure_to_prune_is_a_warning_not_a_failed_backup(seeded, settings, capsys, monkeypatch):
    def broken(*_args, **_kwargs):
        raise ConnectionError("DynamoDB went away")

    monkeypatch.setattr(store, "list_user_backups", broken)
    result, emf, logs = _run_handler(capsys)
    assert isinstance(result, dict) and result["dynamodb_backups_deleted"] == 0
    assert value(emf, "job_succeeded_total") == 1 and "job_failed_total" not in emf
    warnings = [line for line in logs if line["level"] == "WARNING"]
    assert len(warnings) == len(TABLES) and "DynamoDB went away" in warnings[0]["error"]
    bk.verify_backup(settings, result["backup_id"])
    monkeypatch.undo()

    real_delete = store.delete_backup
    refused: list[str] = []

    def refusing(arn, s):
        if not refused:
            refused.append(arn)
            raise ConnectionError("BackupInUseException")
        real_delete(arn, s)

    monkeypatch.setattr(store, "delete_backup", refusing)
    later = datetime.now(UTC) + timedelta(days=BACKUP_RETENTION_DAYS + 1)
    deleted, logs = _logged(lambda: bk.prune_dynamodb_backups(settings, now=later))
    assert deleted == len(TABLES) - 1  # the others still go
    (warning,) = [line for line in logs if line["level"] == "WARNING"]
    assert warning["backup_arn"] == refused[0] and "BackupInUseException" in warning["error"]


def test_items_round_trip_through_the_portable_format():
    enc = fmt.encode_item(RAW_ITEM)
    assert json.loads(json.dumps(enc)) == enc
    assert fmt.decode_item(json.loads(json.dumps(enc))) == RAW_ITEM
    shuffled = {**enc, "names": {"SS": ["c", "a", "b"]}}
    assert fmt.item_digest(shuffled) == fmt.item_digest(enc)  # sets are unordered
    with pytest.raises(ValueError):
        fmt.decode_item({"a": {"X": 1}})
    assert Path(bk.__file__).name == "backup.py"
