"""Backups and restores (issue 5): the daily job's layout and manifest, failures that must
leave no manifest, `backups list`, restores that refuse bad backups and live data, and the
manual's disaster-recovery drills 2 (a table corrupted), 3 (model files lost) and 4
(everything lost, stack redeployed), end to end on moto with data written through the API's
domain and real onnxruntime."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartgrid import backup as bk
from smartgrid.cli import app
from smartgrid.config import BUNDLED_MODEL_DIR, get_settings
from smartgrid.observability import logger
from smartgrid.store import backups as store
from smartgrid.store.aws import client, reset_clients
from smartgrid.store.tables import TABLES, create_tables
from tests.apigw import LambdaContext
from tests.emf import value

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
runner = CliRunner()


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
    from smartgrid.data import iso_all, load_series
    from smartgrid.service import SeriesInput
    from tests.conftest import DATA

    out = []
    for name, site in (("gefcom_150d.csv.gz", "site-a"), ("pjme_150d.csv.gz", "site-b")):
        s = load_series(DATA / name)
        lo = s.n - 14 * s.steps_per_day
        out.append(SeriesInput(timestamps=iso_all(s.timestamps[lo:]), load=s.load[lo:].tolist(), site_id=site))
    return out


@pytest.fixture
def seeded(settings, inputs):
    """Real data in every table through the API's domain (predictions, the cache, an
    idempotency record, actuals), a raw item of every DynamoDB type, and a model registry in
    the models bucket."""
    from smartgrid.service import build_service

    svc = build_service(settings)
    alice = svc.predict("alice", inputs, idempotency_key="batch-1", request_digest="d1")
    svc.predict("bob", inputs[:1])
    rec = alice[0].record
    assert rec is not None
    svc.record_actuals("alice", rec.prediction_id, rec.timestamps[:3], [1000.0, 1010.5, 990.25])
    client("dynamodb", settings).put_item(TableName=settings.cache_table, Item=RAW_ITEM)
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
        enc = bk.encode_item(it)
        out[bk.item_key(enc, keys)] = json.dumps(bk._normal(enc), sort_keys=True)
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

    manifest = bk.parse_manifest(_get(settings, prefix + "manifest.json"), result.backup_id)
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
        copied = {bk.item_key(i, keys): json.dumps(bk._normal(i), sort_keys=True) for i in map(json.loads, lines)}
        assert copied == seeded["tables"][setting]  # DynamoDB JSON, every attribute, binary too
    assert json.loads(_get(settings, prefix + "config.json")) == settings.model_dump(mode="json")
    for key, data in seeded["models"].items():
        assert _get(settings, prefix + "models/" + key) == data
    assert bk.verify_backup(settings, result.backup_id) == manifest
    # the DynamoDB on-demand backups exist
    arns = {b["BackupArn"] for b in client("dynamodb", settings).list_backups()["BackupSummaries"]}
    assert {t.dynamodb_backup_arn for t in manifest.tables.values()} <= arns
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


def test_a_failure_midway_leaves_no_manifest_and_the_job_fails(seeded, settings, capsys, monkeypatch):
    real_put = store.put_object
    calls = []

    def flaky_put(bucket, key, body, s, content_type="application/octet-stream"):
        calls.append(key)
        if len(calls) > 5:
            raise ConnectionError("S3 went away")
        real_put(bucket, key, body, s, content_type)

    monkeypatch.setattr(store, "put_object", flaky_put)
    result, emf, logs = _run_handler(capsys)
    assert isinstance(result, ConnectionError)  # re-raised: the invocation retries, then the DLQ
    assert value(emf, "job_failed_total") == 1 and "job_succeeded_total" not in emf
    assert logs[-1]["message"] == "job failed" and logs[-1]["level"] == "ERROR"
    written = _keys(settings, "backups/")
    assert len(written) == 5 and not any(k.endswith("manifest.json") for k in written)
    (info,) = bk.list_backups(settings)
    assert info.status == "incomplete" and info.objects == 5
    monkeypatch.setattr(store, "put_object", real_put)
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
    with pytest.raises(bk.BackupIntegrityError, match="did not read back"):
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
    config_out = tmp_path / "config.json"
    config_out.write_text("{}")
    before = _snapshot(settings)
    out = _restore("--backup", backup_id, "--config-out", str(config_out))
    assert out.exit_code == 2, out.output
    for setting in TABLES:
        assert f"table {getattr(settings, setting)} ({setting}) has items" in out.output
    assert "models bucket smartgrid-models already has" in out.output and "anomaly_detector.onnx" in out.output
    assert str(config_out) in out.output and "--yes" in out.output
    assert _snapshot(settings) == before and config_out.read_text() == "{}"
    only_models = _restore("--backup", backup_id, "--models")
    assert only_models.exit_code == 2 and "has items" not in only_models.output
    stray = _restore("--backup", backup_id, "--tables", "--config-out", str(config_out))
    assert stray.exit_code == 2 and "add --config" in stray.output
    unknown = _restore("--backup", backup_id, "--table", "forecasts")
    assert unknown.exit_code == 2 and "no such table" in unknown.output


# ---------------------------------------------------------------------------- the drills
def test_drill_2_a_corrupted_table_is_restored_and_the_others_are_left_alone(seeded, settings, inputs):
    from smartgrid.service import build_service

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
    from smartgrid.forecast import ModelSet

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
    from smartgrid.service import build_service

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
    assert json.loads(config.read_text()) == settings.model_dump(mode="json")
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
    assert json.loads(printed) == settings.model_dump(mode="json")
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


def test_items_round_trip_through_the_portable_format():
    enc = bk.encode_item(RAW_ITEM)
    assert json.loads(json.dumps(enc)) == enc
    assert bk.decode_item(json.loads(json.dumps(enc))) == RAW_ITEM
    shuffled = {**enc, "names": {"SS": ["c", "a", "b"]}}
    assert bk.item_digest(shuffled) == bk.item_digest(enc)  # sets are unordered
    with pytest.raises(ValueError):
        bk.decode_item({"a": {"X": 1}})
    assert Path(bk.__file__).name == "backup.py"
