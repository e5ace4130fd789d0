"""The API through the real Lambda handler, with API Gateway REST and HTTP API events, on
moto's in-process DynamoDB."""

from __future__ import annotations

import copy
import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from smartgrid.store.tables import ActualsItem, CacheItem, IdempotencyItem, PredictionItem
from tests.helpers.apigw import Client, app_client
from tests.helpers.bodies import vary
from tests.helpers.emf import values
from tests.helpers.paths import ROOT

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def stored(user: str) -> list[PredictionItem]:
    return list(PredictionItem.query(user))


def days(body: dict, n: int) -> dict:
    """The last n days of the example history."""
    b = copy.deepcopy(body)
    h = b["history"]
    for key in ("timestamps", "load", "temperature"):
        h[key] = h[key][-24 * n :]
    return b


@pytest.fixture(params=["rest", "http"])
def client(request, lambda_handler) -> Client:
    return Client(lambda_handler, request.param)


@pytest.fixture
def rest(lambda_handler) -> Client:
    return Client(lambda_handler, "rest")


@pytest.fixture
def service(lambda_handler):
    from smartgrid.api import handler as module

    return module.app.state.service


# ------------------------------------------------------------------------- health
def test_health_ok_without_key(client):
    t0 = time.perf_counter()
    r = client.get("/health", user=None)
    elapsed = time.perf_counter() - t0
    assert r.status == 200
    body = r.json()
    assert set(body) == {"status", "uptime", "models_loaded", "database", "cache", "timestamp"}
    assert body["status"] == "ok"
    assert body["models_loaded"] == 3
    assert body["database"] == "connected" and body["cache"] == "connected"
    assert isinstance(body["uptime"], int) and body["uptime"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    assert elapsed < 5  # generous: shared CI machine; the bound itself is checked below


def test_health_degraded_when_cache_down(rest, example_body, service, monkeypatch):
    CacheItem.delete_table()
    r = rest.get("/health", user=None)
    assert r.status == 200
    assert r.json()["status"] == "degraded"
    assert r.json()["cache"] == "disconnected" and r.json()["database"] == "connected"
    # ... and predictions still work, computed without the cache
    p = rest.post("/predict/single", example_body)
    assert p.status == 200, p.text
    assert p.json()["cached"] is False
    assert len(stored("alice")) == 1
    # after a failure the cache is skipped for a while instead of failing on every request
    from smartgrid.store.predictions_table import DynamoStore

    calls = []
    monkeypatch.setattr(DynamoStore, "cache_get_many", lambda *a: calls.append(1) or {})
    assert rest.post("/predict/single", vary(example_body, 0.5)).status == 200
    assert calls == [] and len(stored("alice")) == 2


def test_health_critical_when_predictions_table_down(rest):
    PredictionItem.delete_table()
    r = rest.get("/health", user=None)
    assert r.status == 503
    assert r.json()["status"] == "critical" and r.json()["database"] == "disconnected"


def test_health_critical_without_models_and_bounded_by_timeout(aws, tmp_path):
    from smartgrid.config import get_settings
    from smartgrid.domain.predictions import PredictionService
    from smartgrid.engine.forecast import ModelSet

    settings = get_settings()
    empty = ModelSet.load(tmp_path)  # no model files: all three fail to load
    svc = PredictionService(settings, empty, _store(settings))
    c = app_client(settings, svc)
    r = c.get("/health", user=None)
    assert r.status == 503
    assert r.json()["status"] == "critical" and r.json()["models_loaded"] == 0

    # a dependency that hangs: /health still answers within its budget
    store = svc.store

    def hang() -> None:
        time.sleep(3)

    store.ping_cache = hang  # type: ignore[method-assign]
    for _ in range(3):  # the hung cache check neither delays later calls nor piles up threads
        t0 = time.perf_counter()
        r = c.get("/health", user=None)
        assert time.perf_counter() - t0 < 1.0
        assert r.json()["cache"] == "disconnected" and r.json()["database"] == "connected"
    import threading

    assert sum(t.name == "health-cache" for t in threading.enumerate()) == 1


def _store(settings):
    def factory():
        from smartgrid.store.predictions_table import DynamoStore

        return DynamoStore(settings)

    return factory


# ------------------------------------------------------------------------- auth, models
def test_auth_required_everywhere_but_health(rest, example_body):
    for method, path, body in [
        ("GET", "/models", None),
        ("POST", "/predict/single", example_body),
        ("POST", "/predict/batch", {"requests": [example_body]}),
        ("POST", "/anomalies/detect", {"timestamps": [], "load": []}),
        ("POST", "/actuals", {"prediction_id": "0" * 26, "timestamps": [], "load": []}),
        ("GET", "/predictions", None),
    ]:
        r = rest.request(method, path, body, user=None)
        assert r.status == 401, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert "x-api-key" in r.json()["detail"]
        bad = rest.request(method, path, body, user=None, headers={"x-api-key": "not-a-key"})
        assert bad.status == 403, (path, bad.text)
    assert stored("alice") == []


def test_models(client):
    r = client.get("/models")
    assert r.status == 200
    assert r.headers["cache-control"] == "max-age=3600"
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"load_forecast", "baseline_forecast", "anomaly_detector"}
    for m in models.values():
        assert m["loaded"] and re.fullmatch(r"[0-9a-f]{64}", m["sha256"])
        assert m["version"] and m["training_window"]["start"] < m["training_window"]["end"]
    assert "mape" in json.dumps(models["load_forecast"]["metrics"]).lower()


# ------------------------------------------------------------------------- predict single
def test_predict_single(client, example_body):
    r = client.post("/predict/single", example_body)
    assert r.status == 200, r.text
    p = r.json()
    assert ULID_RE.match(p["prediction_id"])
    assert p["model"] == "load_forecast" and p["model_kind"] == "primary" and p["fallback_reason"] is None
    assert p["site_id"] == "gefcom-zone-1" and p["cached"] is False
    steps = p["forecast"]
    assert len(steps) == 24
    assert steps[0]["timestamp"] == "2006-05-31T00:00:00Z" and steps[-1]["timestamp"] == "2006-05-31T23:00:00Z"
    assert all(s["p10"] <= s["p50"] <= s["p90"] for s in steps)
    # a plausible day: within the history's range
    loads = example_body["history"]["load"]
    assert min(loads) * 0.7 < min(s["p50"] for s in steps) and max(s["p50"] for s in steps) < max(loads) * 1.3
    (item,) = stored("alice")
    assert item.prediction_id == p["prediction_id"] and item.model_version == p["model_version"]
    assert item.forecast["p50"] == [s["p50"] for s in steps]
    assert len(item.inputs_digest) == 64
    assert item.expires_at > datetime.now(UTC) + timedelta(days=300)
    assert r.headers["x-correlation-id"]


def test_user_comes_from_key_not_body(rest, example_body):
    body = dict(example_body, user_id="bob")
    r = rest.post("/predict/single", body)
    assert r.status == 422  # unknown field: clients cannot claim a user
    assert r.json()["errors"][0]["field"] == "body.user_id"
    r = rest.post("/predict/single", example_body, user="bob")
    assert r.status == 200
    assert len(stored("bob")) == 1 and stored("alice") == []


def test_short_history_uses_fallback_with_reason(rest, example_body):
    r = rest.post("/predict/single", days(example_body, 5))
    assert r.status == 200, r.text
    p = r.json()
    assert p["model_kind"] == "fallback" and p["model"] == "baseline_forecast"
    assert "14" in p["fallback_reason"]


def test_compact_history_equals_full_form(rest, example_body):
    h = example_body["history"]
    compact = {"history": {"start": h["timestamps"][0], "resolution_minutes": 60, "load": h["load"]}}
    full = {"history": {"timestamps": h["timestamps"], "load": h["load"]}}
    a = rest.post("/predict/single", compact)
    b = rest.post("/predict/single", full)
    assert a.status == 200 and b.status == 200, (a.text, b.text)
    assert a.json()["forecast"] == b.json()["forecast"]
    assert b.json()["cached"] is True  # the cache keys the parsed readings, not their spelling
    both = rest.post("/predict/single", {"history": {**full["history"], "start": h["timestamps"][0]}})
    assert both.status == 422 and "not both" in both.text


# ------------------------------------------------------------------------- bad input
def _bad(rest, body=None, raw=None, headers=None) -> dict:
    r = rest.post("/predict/single", body, raw=raw, headers=headers)
    assert 400 <= r.status < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert p["status"] == r.status and p["title"] and p["detail"]
    return p | {"_status": r.status}


def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(rest, example_body):
    h = example_body["history"]

    p = _bad(rest, raw='{"history": {"timestamps": [')
    assert p["_status"] == 400 and "JSON" in p["title"]

    p = _bad(rest, raw="")
    assert p["_status"] == 422

    b = copy.deepcopy(example_body)
    b["history"]["load"][3] = "12.5"
    p = _bad(rest, b)
    assert p["_status"] == 422 and p["errors"][0]["field"] == "body.history.load[3]"

    raw = json.dumps(example_body).replace(str(h["load"][5]), "NaN", 1)
    p = _bad(rest, raw=raw)
    assert p["errors"][0]["field"] == "body.history.load[5]"
    assert "finite" in p["errors"][0]["message"]

    raw = json.dumps(example_body).replace(str(h["load"][6]), "1e999", 1)
    assert _bad(rest, raw=raw)["errors"][0]["field"] == "body.history.load[6]"

    b = copy.deepcopy(example_body)
    b["history"]["timestamps"][10], b["history"]["timestamps"][11] = h["timestamps"][11], h["timestamps"][10]
    p = _bad(rest, b)
    assert p["_status"] == 422 and p["errors"][0]["field"].startswith("history.timestamps[")
    assert "order" in p["detail"] or "unordered" in json.dumps(p)

    b = copy.deepcopy(example_body)
    b["history"]["timestamps"][20] = h["timestamps"][19]
    p = _bad(rest, b)
    assert any(e["code"] == "duplicate_timestamp" for e in p["errors"])
    assert any(e["field"] == "history.timestamps[20]" for e in p["errors"])

    b = copy.deepcopy(example_body)
    b["history"]["timestamps"][4] = "2006-13-45T00:00:00Z"
    assert _bad(rest, b)["errors"][0]["field"] == "history.timestamps[4]"

    p = _bad(rest, days(example_body, 1) | {"history": {k: v[-12:] for k, v in h.items()}})
    assert "history" in p["errors"][0]["field"]
    assert "day" in p["detail"]

    b = copy.deepcopy(example_body)
    b["history"]["extra"] = 1
    p = _bad(rest, b)
    assert p["errors"][0]["field"] == "body.history.extra" and p["errors"][0]["message"] == "unknown field"

    b = copy.deepcopy(example_body)
    b["history"]["load"] = b["history"]["load"][:-1]
    assert "same length" in _bad(rest, b)["detail"]

    b = copy.deepcopy(example_body)
    b["history"]["load"][0] = -5
    assert _bad(rest, b)["errors"][0]["field"] == "body.history.load[0]"

    p = _bad(rest, raw=" " * 6_000_001)
    assert p["_status"] == 413 and "6000000" in p["detail"]

    p = _bad(rest, example_body, headers={"Idempotency-Key": "has space"})
    assert p["errors"][0]["field"] == "header.Idempotency-Key"

    assert stored("alice") == []
    assert list(CacheItem.scan()) == []


def test_unknown_route_and_method_are_problem_details(rest):
    r = rest.get("/nope")
    assert r.status == 404 and r.headers["content-type"] == "application/problem+json"
    r = rest.get("/predict/single")
    assert r.status == 405 and r.json()["title"] == "Method not allowed"


# ------------------------------------------------------------------------- batch
def test_batch_per_item_results(client, example_body):
    bad_type = copy.deepcopy(example_body)
    bad_type["history"]["load"][2] = None
    body = {"requests": [example_body, days(example_body, 3), bad_type, {"history": {"load": [1, 2]}}]}
    r = client.post("/predict/batch", body)
    assert r.status == 200, r.text
    out = r.json()
    assert out["succeeded"] == 2 and out["failed"] == 2
    res = out["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert res[0]["prediction"]["model_kind"] == "primary"
    assert res[1]["prediction"]["model_kind"] == "fallback"
    assert res[2]["status"] == "error" and res[2]["error"]["errors"][0]["field"] == "requests[2].history.load[2]"
    assert res[3]["status"] == "error" and "timestamps" in res[3]["error"]["detail"]
    ids = {x["prediction"]["prediction_id"] for x in res[:2]}
    assert {i.prediction_id for i in stored("alice")} == ids


def test_batch_limit(rest, example_body):
    tiny = {"history": {"start": "2026-01-01T00:00:00Z", "resolution_minutes": 60, "load": [1.0] * 24}}
    r = rest.post("/predict/batch", {"requests": [tiny] * 1001})
    assert r.status == 422
    assert "at most 1000" in r.json()["detail"] and r.json()["errors"][0]["field"] == "requests"
    assert stored("alice") == []
    r = rest.post("/predict/batch", {"requests": []})
    assert r.status == 422


# ------------------------------------------------------------------------- idempotency, cache
def test_idempotent_retry_returns_the_first_prediction(rest, example_body):
    hdr = {"Idempotency-Key": "order-42"}
    a = rest.post("/predict/single", example_body, headers=hdr)
    b = rest.post("/predict/single", example_body, headers=hdr)
    assert a.status == b.status == 200
    assert a.json() == b.json()
    assert len(stored("alice")) == 1
    # the same key from another user is another request
    c = rest.post("/predict/single", example_body, headers=hdr, user="bob")
    assert c.status == 200 and c.json()["prediction_id"] != a.json()["prediction_id"]
    # the same key with another body is refused
    d = rest.post("/predict/single", vary(example_body, 0.01), headers=hdr)
    assert d.status == 422 and d.json()["type"].endswith("idempotency-key-reused")
    assert len(stored("alice")) == 1


def test_idempotent_batch_and_in_progress(rest, example_body):
    hdr = {"Idempotency-Key": "batch-1"}
    body = {"requests": [example_body, {"history": {"load": [1]}}]}
    a = rest.post("/predict/batch", body, headers=hdr).json()
    b = rest.post("/predict/batch", body, headers=hdr).json()
    for out in (a, b):  # problem bodies carry each request's own correlation id
        out["results"][1]["error"].pop("correlation_id")
    assert a == b and a["succeeded"] == 1
    assert len(stored("alice")) == 1

    IdempotencyItem(
        "alice#busy",
        status="IN_PROGRESS",
        request_digest="x",
        prediction_ids=["01" + "0" * 24],
        created_at=datetime.now(UTC),
        in_progress_until=time.time() + 60,
        expires_at=datetime.now(UTC) + timedelta(days=1),
    ).save()
    r = rest.post("/predict/single", example_body, headers={"Idempotency-Key": "busy"})
    assert r.status in (409, 422)


def test_takeover_of_an_expired_claim_reuses_its_ids(rest, example_body):
    from smartgrid.api import schemas
    from smartgrid.domain.predictions import digest

    body = schemas.PredictRequest.model_validate(example_body)
    req = digest(["single", body.model_dump(mode="json")])
    IdempotencyItem(
        "alice#crashed",
        status="IN_PROGRESS",
        request_digest=req,
        prediction_ids=["01JZZZZZZZZZZZZZZZZZZZZZZZ"],
        created_at=datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
        in_progress_until=time.time() - 1,
        expires_at=datetime.now(UTC) + timedelta(days=1),
    ).save()
    r = rest.post("/predict/single", example_body, headers={"Idempotency-Key": "crashed"})
    assert r.status == 200, r.text
    assert r.json()["prediction_id"] == "01JZZZZZZZZZZZZZZZZZZZZZZZ"
    assert r.json()["created_at"] == "2026-11-27T08:00:00.000Z"  # the first attempt's time, as its id says
    assert IdempotencyItem.get("alice#crashed").status == "COMPLETED"


def test_cache_serves_identical_inputs_for_five_minutes(rest, example_body, service, monkeypatch):
    svc = service
    computed: list[int] = []
    real = svc.forecaster.forecast_many
    monkeypatch.setattr(svc.forecaster, "forecast_many", lambda inputs: computed.append(len(inputs)) or real(inputs))
    a = rest.post("/predict/single", example_body).json()
    b = rest.post("/predict/single", example_body, user="bob").json()
    assert computed == [1] and b["cached"] is True
    assert a["forecast"] == b["forecast"] and a["prediction_id"] != b["prediction_id"]
    # another container (empty memory tier) is served from the shared cache table
    svc._memory.clear()
    assert rest.post("/predict/single", example_body).json()["cached"] is True
    assert computed == [1]
    assert rest.post("/predict/single", vary(example_body, 0.01)).json()["cached"] is False
    assert computed == [1, 1]
    later = datetime.now(UTC) + timedelta(seconds=301)
    monkeypatch.setattr(svc, "clock", lambda: later)
    assert rest.post("/predict/single", example_body).json()["cached"] is False
    assert computed == [1, 1, 1]
    # a batch reads the cache once for all its items and computes only the misses together
    monkeypatch.setattr(svc, "clock", lambda: later + timedelta(seconds=10))
    out = rest.post("/predict/batch", {"requests": [example_body, vary(example_body, 0.02), vary(example_body, 0.03)]})
    assert [r["prediction"]["cached"] for r in out.json()["results"]] == [True, False, False]
    assert computed == [1, 1, 1, 2]


def test_predictions_table_outage_fails_cleanly(rest, example_body, monkeypatch):
    from smartgrid.store.predictions_table import DynamoStore

    def boom(self, records, cache=None, now=None):
        PredictionItem(records[0].user_id, records[0].prediction_id, forecast={}).save()  # half-way ...
        raise RuntimeError("connection reset")  # ... then the dependency fails

    monkeypatch.setattr(DynamoStore, "save_predictions", boom)
    r = rest.post("/predict/batch", {"requests": [example_body, days(example_body, 3)]})
    assert r.status == 200, r.text  # the forecasts are still served ...
    served = [x["prediction"] for x in r.json()["results"]]
    assert len(served) == 2 and all(p["stored"] is False and p["prediction_id"] is None for p in served)
    assert all(len(p["forecast"]) == 24 for p in served)
    assert stored("alice") == []  # ... the partial write was undone, and no id was handed out
    r = rest.post("/predict/single", vary(example_body, 0.01))
    assert r.status == 200 and r.json()["stored"] is False and r.json()["prediction_id"] is None
    # a client that asked for a durable record (an Idempotency-Key) gets a 503 to retry
    r = rest.post("/predict/single", vary(example_body, 0.01), headers={"Idempotency-Key": "k0"})
    assert r.status == 503 and r.headers["retry-after"]
    assert "nothing was saved" in r.json()["detail"]
    monkeypatch.undo()

    PredictionItem.delete_table()
    r = rest.post("/predict/single", vary(example_body, 0.02), headers={"Idempotency-Key": "k1"})
    assert r.status == 503
    (claim,) = IdempotencyItem.scan()  # kept, with its prediction ids, and free to take over now
    assert claim.status == "IN_PROGRESS" and claim.in_progress_until == 0


def test_retry_with_the_key_completes_a_partly_saved_batch_without_duplicates(rest, example_body, monkeypatch):
    from smartgrid.store.predictions_table import DynamoStore

    real_save = DynamoStore.save_predictions

    def boom(self, records, cache=None, now=None):
        real_save(self, records[:2], None, now)  # two of three written ...
        raise RuntimeError("connection reset")  # ... then the table fails, and so does the undo

    def no_undo(self, records):
        raise RuntimeError("still down")

    monkeypatch.setattr(DynamoStore, "save_predictions", boom)
    monkeypatch.setattr(DynamoStore, "delete_predictions", no_undo)
    body = {"requests": [example_body, vary(example_body, 0.1), vary(example_body, 0.2)]}
    r = rest.post("/predict/batch", body, headers={"Idempotency-Key": "b-7"})
    assert r.status == 503 and "retry with the same Idempotency-Key" in r.json()["detail"]
    assert len(stored("alice")) == 2
    monkeypatch.undo()
    r = rest.post("/predict/batch", body, headers={"Idempotency-Key": "b-7"})
    assert r.status == 200 and r.json()["succeeded"] == 3
    assert len(stored("alice")) == 3  # the two overwritten under their reserved ids, one added


# ------------------------------------------------------------------------- actuals
def test_actuals_record_absolute_error(client, example_body):
    p = client.post("/predict/single", example_body).json()
    steps = p["forecast"]
    body = {
        "prediction_id": p["prediction_id"],
        "timestamps": [s["timestamp"] for s in steps[:3]],
        "load": [steps[0]["p50"] + 10, steps[1]["p50"] - 5, steps[2]["p50"]],
    }
    r = client.post("/actuals", body)
    assert r.status == 200, r.text
    out = r.json()
    assert out["count"] == 3 and [pt["abs_error"] for pt in out["points"]] == [10.0, 5.0, 0.0]
    assert out["mae"] == 5.0
    r = client.post("/actuals", {**body, "timestamps": [steps[3]["timestamp"]], "load": [steps[3]["p90"] + 1]})
    out = r.json()
    assert out["count"] == 4 and out["points"][3]["within_interval"] is False
    item = ActualsItem.get("alice", p["prediction_id"])
    assert len(item.actuals) == 4


def test_actuals_emit_the_live_forecast_error_metrics(rest, example_body, capsys):
    """model_prediction_error_absolute (docs/requirements.md#metrics) and the percentage the forecast-error
    alarm watches."""
    p = rest.post("/predict/single", example_body).json()
    step = p["forecast"][0]
    actual = step["p50"] * 1.1
    capsys.readouterr()
    r = rest.post(
        "/actuals", {"prediction_id": p["prediction_id"], "timestamps": [step["timestamp"]], "load": [actual]}
    )
    assert r.status == 200, r.text
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{") and "_aws" in x]
    (line,) = [x for x in emf if "model_prediction_error_percent" in x]
    assert values(line, "model_prediction_error_percent") == [pytest.approx(100 * 0.1 / 1.1, abs=1e-3)]
    assert values(line, "model_prediction_error_absolute") == [pytest.approx(step["p50"] * 0.1, abs=1e-3)]


def test_actuals_errors(rest, example_body):
    p = rest.post("/predict/single", example_body).json()
    ts = p["forecast"][0]["timestamp"]
    r = rest.post("/actuals", {"prediction_id": p["prediction_id"], "timestamps": [ts], "load": [1.0]}, user="bob")
    assert r.status == 404  # another user's prediction does not exist for bob
    r = rest.post("/actuals", {"prediction_id": "01" + "A" * 24, "timestamps": [ts], "load": [1.0]})
    assert r.status == 404
    r = rest.post(
        "/actuals", {"prediction_id": p["prediction_id"], "timestamps": ["2001-01-01T00:00:00Z"], "load": [1.0]}
    )
    assert r.status == 422 and r.json()["errors"][0]["field"] == "timestamps[0]"
    r = rest.post("/actuals", {"prediction_id": p["prediction_id"], "timestamps": [ts, ts], "load": [1.0, 2.0]})
    assert r.status == 422 and r.json()["errors"][0]["code"] == "duplicate_timestamp"
    r = rest.post("/actuals", {"prediction_id": "bad", "timestamps": [ts], "load": [1.0]})
    assert r.status == 422 and r.json()["errors"][0]["field"] == "body.prediction_id"
    assert list(ActualsItem.scan()) == []


# ------------------------------------------------------------------------- listing
def test_list_predictions_newest_first_paginated(client, example_body, service, monkeypatch):
    svc = service
    base = datetime(2026, 11, 1, tzinfo=UTC)
    ids = []
    for i in range(5):
        monkeypatch.setattr(svc, "clock", lambda i=i: base + timedelta(hours=i))
        ids.append(client.post("/predict/single", days(example_body, 2)).json()["prediction_id"])
    client.post("/predict/single", days(example_body, 2), user="bob")

    r = client.get("/predictions", query={"limit": "2"})
    assert r.status == 200, r.text
    page = r.json()
    assert [p["prediction_id"] for p in page["items"]] == ids[::-1][:2]
    seen = [p["prediction_id"] for p in page["items"]]
    while page["next_cursor"]:
        page = client.get("/predictions", query={"limit": "2", "cursor": page["next_cursor"]}).json()
        seen += [p["prediction_id"] for p in page["items"]]
    assert seen == ids[::-1]

    since = (base + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = client.get("/predictions", query={"user_id": "alice", "since": since})
    assert [p["prediction_id"] for p in r.json()["items"]] == ids[::-1][:3]

    assert client.get("/predictions", query={"user_id": "bob"}).status == 403
    assert client.get("/predictions", query={"since": "last week"}).json()["errors"][0]["field"] == "since"
    assert client.get("/predictions", query={"cursor": "!!"}).status == 422
    assert client.get("/predictions", query={"limit": "0"}).status == 422


# ------------------------------------------------------------------------- anomalies
def test_anomaly_detection(client, example_body):
    h = example_body["history"]
    load = list(h["load"])
    load[400] = load[400] * 1.8
    r = client.post("/anomalies/detect", {"timestamps": h["timestamps"], "load": load})
    assert r.status == 200, r.text
    out = r.json()
    assert len(out["readings"]) == len(load)
    spike = out["readings"][400]
    assert spike["anomaly"] is True and spike["label"] == "spike" and spike["score"] >= 0.5
    assert out["flagged"] == sum(x["anomaly"] for x in out["readings"])
    assert out["flagged"] <= 5
    r = client.post("/anomalies/detect", {"timestamps": h["timestamps"][:2], "load": [1.0]})
    assert r.status == 422
    r = client.post("/anomalies/detect", {"timestamps": h["timestamps"], "load": load, "threshold": 2})
    assert r.status == 422 and r.json()["errors"][0]["field"] == "body.threshold"


# ------------------------------------------------------------------------- observability
def test_logs_and_emf_metrics(rest, example_body, capsys):
    import io

    from smartgrid.observability import logger

    buf = io.StringIO()
    handler = logger.registered_handler
    old = handler.setStream(buf)  # type: ignore[attr-defined]
    try:
        rest.post("/predict/single", example_body, headers={"x-correlation-id": "corr-123"})
        rest.post("/predict/single", {"history": {}})
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    logs = [json.loads(x) for x in buf.getvalue().splitlines()]
    logs = [x for x in logs if x.get("message") == "request"]
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert logs[0]["correlation_id"] == "corr-123" and logs[0]["status"] == 200
    assert logs[0]["route"] == "/predict/single"
    assert logs[1]["status"] == 422 and logs[1]["correlation_id"] != "corr-123"
    emf = [x for x in lines if "_aws" in x]
    names = {m["Name"] for x in emf for d in x["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {
        "api_requests_total",
        "api_request_duration_seconds",
        "model_inference_duration_seconds",
        "predictions_total",  # the 100k+ predictions alarm
        "process_resident_memory_bytes",  # docs/requirements.md#metrics
        "memory_utilization_percent",  # the memory alarm: peak RSS against the function's size
    } <= names
    assert all(d["Namespace"] == "Smartgrid" for x in emf for d in x["_aws"]["CloudWatchMetrics"])
    flushed = [x for x in emf if "memory_utilization_percent" in x]
    assert flushed and all(0 < v < 100 for x in flushed for v in values(x, "memory_utilization_percent"))
    assert [values(x, "predictions_total") for x in emf if "predictions_total" in x] == [[1]]


def test_importing_the_handler_does_not_import_the_aws_sdk():
    """Cold start: boto3/botocore/pynamodb load on the first request that needs DynamoDB, and
    the X-Ray SDK only when tracing is on, even though every invocation opens a subsegment."""
    import subprocess
    import sys

    code = """
import sys, json
import smartgrid.api.handler as h
from tests.helpers.apigw import LambdaContext, rest_event
heavy = ('boto3', 'botocore.client', 'pynamodb.connection', 'aws_xray_sdk.core')
before = sorted(m for m in heavy if m in sys.modules)
r = h.handler(rest_event('GET', '/models', None, {}, None), LambdaContext())
after = sorted(m for m in heavy if m in sys.modules)
print(json.dumps([before, after, r['statusCode']]))
"""
    root = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    before, after, status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 401
    assert before == [] and after == [], out.stdout + out.stderr


def test_wire_format_shortcut_matches_pynamodb(aws):
    """The store writes items through the attributes' own serializers without building model
    instances; the result must be exactly what pynamodb's ``Model.serialize`` produces."""
    from smartgrid.store.predictions_table import _prediction_map
    from smartgrid.store.records import PredictionRecord

    now = datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)
    rec = PredictionRecord(
        user_id="alice",
        prediction_id="01" + "A" * 24,
        created_at=now,
        inputs_digest="d" * 64,
        model="load_forecast",
        model_version="v1",
        fallback_reason=None,
        resolution_minutes=60,
        source="computed",
        timestamps=["2026-11-29T00:00:00Z"],
        p10=[1.0],
        p50=[2.5],
        p90=[3.0],
        site_id=None,
        idempotency_key="k",
        expires_at=now + timedelta(days=400),
    )
    item = PredictionItem(
        "alice",
        rec.prediction_id,
        created_at=now,
        inputs_digest=rec.inputs_digest,
        model=rec.model,
        model_version=rec.model_version,
        resolution_minutes=60,
        source="computed",
        idempotency_key="k",
        forecast=rec.forecast_dict(),
        expires_at=rec.expires_at,
    )
    assert _prediction_map(rec) == item.serialize()


# ------------------------------------------------------------------------- review findings
def test_docs_need_a_key(rest):
    assert rest.get("/docs", user=None).status == 401
    assert rest.get("/openapi.json", user=None).status == 401
    spec = rest.get("/openapi.json").json()
    assert {"/health", "/predict/single", "/predict/batch", "/actuals", "/predictions"} <= set(spec["paths"])
    from tests.helpers.env import API_KEYS

    page = rest.get("/docs", user=None, query={"api_key": API_KEYS["alice"]})
    assert page.status == 200 and "swagger" in page.text.lower() and "openapi.json?api_key=" in page.text
    # behind API Gateway the spec is fetched under the stage the page came from
    assert "'/prod/openapi.json?api_key=" in page.text


def test_docs_locally_fetch_the_spec_at_the_root(aws):
    from fastapi.testclient import TestClient

    from smartgrid.api.app import create_app
    from tests.helpers.env import API_KEYS

    with TestClient(create_app()) as local:
        page = local.get("/docs", headers={"x-api-key": API_KEYS["alice"]})
    assert page.status_code == 200 and "'/openapi.json'" in page.text


def test_odd_inputs_are_4xx_not_500(rest, example_body):
    h = example_body["history"]
    n = len(h["load"])
    for bad_start in ("0001-01-01T00:00:00+01:00", "2006-13-45T00:00:00Z", "9999-12-30T00:00:00Z"):
        r = rest.post("/predict/single", {"history": {"start": bad_start, "resolution_minutes": 60, "load": h["load"]}})
        assert r.status == 422 and r.json()["errors"][0]["field"] == "body.history.start", (bad_start, r.text)
    b = copy.deepcopy(example_body)
    b["history"]["load"][0] = 1.7e308
    assert rest.post("/predict/single", b).json()["errors"][0]["field"] == "body.history.load[0]"
    # one problem per row would be megabytes: capped, with the count in the detail
    same = {"history": {"timestamps": [h["timestamps"][0]] * n, "load": h["load"]}}
    p = rest.post("/predict/single", same).json()
    assert len(p["errors"]) <= 20 and "more" in p["detail"]
    out = rest.post("/predict/batch", {"requests": [example_body, 1, None, "x", [], {}]}).json()
    assert out["succeeded"] == 1
    assert [r["error"]["errors"][0]["field"] for r in out["results"][1:5]] == [f"requests[{i}]" for i in range(1, 5)]
    assert out["results"][5]["error"]["errors"][0]["field"] == "requests[5].history"
    assert "JSON body" not in json.dumps(out["results"][5])
    assert stored("alice")[0].prediction_id == out["results"][0]["prediction"]["prediction_id"]


def test_since_to_the_millisecond_and_before_the_epoch(client, example_body, service, monkeypatch):
    base = datetime(2026, 11, 1, tzinfo=UTC)
    made = []
    for ms in (0, 410, 820):
        monkeypatch.setattr(service, "clock", lambda ms=ms: base + timedelta(milliseconds=ms))
        made.append(client.post("/predict/single", days(example_body, 2)).json())
    since = made[1]["created_at"]  # passed back as returned: ...:00.410Z
    got = client.get("/predictions", query={"since": since}).json()["items"]
    assert [p["prediction_id"] for p in got] == [made[2]["prediction_id"], made[1]["prediction_id"]]
    assert len(client.get("/predictions", query={"since": "1960-01-01T00:00:00Z"}).json()["items"]) == 3


def test_undecodable_base64_body(lambda_handler):
    from tests.helpers.apigw import LambdaContext, rest_event

    event = rest_event("POST", "/predict/single", "%%%not base64%%%", {"content-type": "application/json"}, None)
    event["isBase64Encoded"] = True
    out = lambda_handler(event, LambdaContext())
    assert out["statusCode"] == 400 and "base64" in out["body"]


def test_missing_fallback_model_fails_only_the_items_that_need_it(aws, example_body):
    from smartgrid.config import get_settings
    from smartgrid.domain.predictions import PredictionService
    from smartgrid.engine.forecast import ModelSet

    settings = get_settings()
    models = ModelSet.load(settings.model_dir)
    models.models.pop("baseline_forecast")
    svc = PredictionService(settings, models, _store(settings))
    c = app_client(settings, svc)
    out = c.post("/predict/batch", {"requests": [example_body, days(example_body, 3)]}).json()
    assert out["results"][0]["prediction"]["model_kind"] == "primary"
    assert out["results"][1]["error"]["status"] == 503 and "baseline_forecast" in out["results"][1]["error"]["detail"]
    assert c.post("/predict/single", days(example_body, 3)).status == 503
    assert c.get("/health", user=None).json()["status"] == "degraded"


def test_a_failed_attempt_that_stored_nothing_frees_its_key(rest, example_body, monkeypatch):
    from smartgrid.store.predictions_table import DynamoStore

    def down(self, records, cache, now):
        raise RuntimeError("throttled")

    monkeypatch.setattr(DynamoStore, "save_predictions", down)
    assert rest.post("/predict/single", example_body, headers={"Idempotency-Key": "fix-me"}).status == 503
    monkeypatch.undo()
    assert list(IdempotencyItem.scan()) == []
    # the client corrects its body and retries with the same key: that is a new request
    r = rest.post("/predict/single", vary(example_body, 0.3), headers={"Idempotency-Key": "fix-me"})
    assert r.status == 200 and len(stored("alice")) == 1


def test_a_missing_model_is_not_replayed(aws, example_body):
    from smartgrid.config import get_settings
    from smartgrid.domain.predictions import PredictionService
    from smartgrid.engine.forecast import ModelSet

    settings = get_settings()
    models = ModelSet.load(settings.model_dir)
    baseline = models.models.pop("baseline_forecast")
    svc = PredictionService(settings, models, _store(settings))
    c = app_client(settings, svc)
    hdr = {"Idempotency-Key": "short-1"}
    assert c.post("/predict/single", days(example_body, 3), headers=hdr).status == 503
    models.models["baseline_forecast"] = baseline  # the model is back
    r = c.post("/predict/single", days(example_body, 3), headers=hdr)
    assert r.status == 200 and r.json()["model_kind"] == "fallback"


def test_replay_of_a_batch_with_many_invalid_items(rest, example_body):
    bad = copy.deepcopy(days(example_body, 2))
    bad["history"]["timestamps"] = [t.replace("2006-05-", "2006-13-") for t in bad["history"]["timestamps"]]
    body = {"requests": [example_body] + [bad] * 150}
    hdr = {"Idempotency-Key": "big-batch"}
    a = rest.post("/predict/batch", body, headers=hdr).json()
    (claim,) = IdempotencyItem.scan()
    assert claim.status == "COMPLETED" and len(claim.errors) == 150  # indexes only: small whatever the errors
    b = rest.post("/predict/batch", body, headers=hdr).json()
    for out in (a, b):
        for r in out["results"][1:]:
            r["error"].pop("correlation_id")
    assert a == b and a["succeeded"] == 1 and len(stored("alice")) == 1
    assert len(a["results"][1]["error"]["errors"]) <= 20


def test_cursor_older_than_since_and_cache_breaker_reopening(rest, example_body, service, monkeypatch):
    from smartgrid.store.predictions_table import DynamoStore

    base = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(3):
        monkeypatch.setattr(service, "clock", lambda i=i: base + timedelta(hours=i))
        rest.post("/predict/single", days(example_body, 2))
    page = rest.get("/predictions", query={"limit": "2"}).json()
    later = (base + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = rest.get("/predictions", query={"limit": "2", "cursor": page["next_cursor"], "since": later})
    assert r.status == 200 and r.json() == {"items": [], "next_cursor": None}

    calls = []
    monkeypatch.setattr(DynamoStore, "cache_get_many", lambda *a: calls.append(1) or {})
    service._cache_down_until = time.monotonic() + 60  # a recent cache failure: skipped
    rest.post("/predict/single", vary(example_body, 0.7))
    assert calls == []
    service._cache_down_until = time.monotonic() - 1  # the pause is over: used again
    rest.post("/predict/single", vary(example_body, 0.8))
    assert calls == [1]


def test_fallbacks_from_a_failing_primary_are_not_cached(rest, example_body, service, monkeypatch):
    model = service.models.get("load_forecast")

    def broken(*a, **k):
        raise RuntimeError("onnxruntime failure")

    monkeypatch.setattr(model, "run", broken)
    a = rest.post("/predict/single", example_body).json()
    assert a["model_kind"] == "fallback" and "primary model failed" in a["fallback_reason"]
    assert "onnxruntime failure" not in a["fallback_reason"]  # internals stay in the log
    monkeypatch.undo()
    b = rest.post("/predict/single", example_body).json()
    assert b["model_kind"] == "primary" and b["cached"] is False


def test_client_correlation_ids_are_checked(rest):
    ok = rest.get("/health", user=None, headers={"x-correlation-id": "req-42.a/b"})
    assert ok.headers["x-correlation-id"] == "req-42.a/b"
    for bad in ("x" * 500, "two words", "new\\nline"):
        r = rest.get("/health", user=None, headers={"x-correlation-id": bad})
        assert r.headers["x-correlation-id"] != bad and len(r.headers["x-correlation-id"]) <= 128


def test_snapstart_restore_restarts_the_uptime_clock():
    """On Lambda, SnapStart's after-restore hook resets the service's start time, so /health's
    uptime does not count the days the snapshot waited."""
    import subprocess
    import sys

    code = """
import sys, time, types
hooks = []
sys.modules['snapshot_restore_py'] = types.SimpleNamespace(register_after_restore=hooks.append)
import smartgrid.api.handler as h
svc = h.app.state.service
svc.started -= 86400  # as if the snapshot was taken a day ago
(hook,) = hooks
hook()
print(round(time.monotonic() - svc.started))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"
