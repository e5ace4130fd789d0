"""The API contract, fuzzed with schemathesis: requests generated from the app's own OpenAPI
document (/openapi.json of ``create_app``), for every operation, in positive and negative
generation modes, with a valid API key, with none and with wrong (generated) ones, against the
ASGI app on moto's in-process AWS.

What a pass proves, for every request tried: never a 5xx and never a crash
(``not_a_server_error``); the response conforms to the document: status code, content type,
headers (Retry-After, WWW-Authenticate), body (``*_conformance``); invalid requests are rejected
(``negative_data_rejection``) and valid ones accepted (``positive_data_acceptance``), with the two
refinements below; a missing or wrong key is refused (``missing_required_header``,
``ignored_auth``); methods the document does not list get 405 with Allow; and every 4xx/5xx is
an ``application/problem+json`` body with type/title/status/detail (``problem_details``).
With a valid key, some positive cases get plausible series (a hook below), so that the models
run on fuzzed loads, dates from 1900 on and both history forms, not only the validation.

Bounded and reproducible: ``MAX_EXAMPLES`` cases per operation and auth mode in the fuzzing
phase, derandomized, no example database (plus schemathesis' examples and coverage phases,
which are deterministic). benchmarks/fuzz_api.py runs the same tests longer, with a random
seed, optionally against a running ``smartgrid serve``; it sets the FUZZ_* variables read below.
The tests after the fuzzing keep what it found fixed.
"""

from __future__ import annotations

import json
import math
import os
import typing
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openapi_spec_validator
import pydantic_core
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (  # the built-in checks, by name (the module looks them up)
    CheckContext,
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from smartgrid.catalog import PROBLEM_JSON
from smartgrid.config import get_settings
from smartgrid.engine.data import MAX_LOAD_MW
from tests.helpers.env import API_KEYS
from tests.helpers.stack import reset_service

# ------------------------------------------------------------------ knobs (benchmarks/fuzz_api.py sets them)
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None  # None: derandomized
URL = os.environ.get("FUZZ_URL")  # a running `smartgrid serve`; None: the ASGI app on moto
KEY = os.environ.get("FUZZ_API_KEY", "") if URL else API_KEYS["alice"]
REPORT = os.environ.get("FUZZ_REPORT")  # where to write what was tried and what failed (JSON)

AUTH_MODES = ("valid", "none", "wrong")

# Cases tried, by (operation, auth mode, generation mode, phase); response statuses, by
# (operation, auth mode, status); the first failure of each operation and auth mode.
TRIED: Counter[tuple[str, str, str, str]] = Counter()
STATUSES: Counter[tuple[str, str, int]] = Counter()
FAILED: dict[tuple[str, str], str] = {}

pytestmark = [
    pytest.mark.xdist_group("fuzz_api"),  # one worker: one app, one moto, cases in order
    pytest.mark.slow,  # fuzzing
]


# ------------------------------------------------------------------ checks of our own
class ContractError(AssertionError):
    pass


def problem_details(ctx: CheckContext, response: Any, case: schemathesis.Case) -> bool | None:
    """Every 4xx/5xx is RFC 9457 problem details, as the app's error handlers make them; a 422
    names what is wrong in errors[]. (Not /health's 503: that is the health report, documented.)"""
    if response.status_code < 400 or (case.operation.path == "/health" and response.status_code == 503):
        return None
    content_type = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if content_type != PROBLEM_JSON:
        raise ContractError(f"{response.status_code} with Content-Type {content_type!r}, not {PROBLEM_JSON}")
    body = response.json()
    if not isinstance(body, dict) or not {"type", "title", "status", "detail"} <= body.keys():
        raise ContractError(f"{response.status_code} without type/title/status/detail: {response.text[:300]}")
    if body["status"] != response.status_code or not all(isinstance(body[f], str) for f in ("type", "title", "detail")):
        raise ContractError(f"an inconsistent problem for a {response.status_code}: {response.text[:300]}")
    errors = body.get("errors", [])
    if any(not {"field", "code", "message"} <= e.keys() for e in errors):
        raise ContractError(f"an errors[] item without field/code/message: {response.text[:300]}")
    if response.status_code == 422 and not errors:
        raise ContractError(f"a 422 that names nothing in errors[]: {response.text[:300]}")
    return None


# The errors pydantic reports for what a JSON Schema states (types, bounds, lengths, patterns,
# required and unknown fields): for a request valid by the document, such an error means the
# document and the validation disagree. Validators' own rules (value_error: parallel arrays of
# the same length, one history form, a real date) and the domain's (duplicate timestamps, too
# little history, an unknown cursor, ...) are what the document cannot state.
SCHEMA_ERRORS = frozenset(typing.get_args(pydantic_core.core_schema.ErrorType)) - {"value_error", "assertion_error"}


def positive_data_acceptance_or_semantic_422(ctx: CheckContext, response: Any, case: schemathesis.Case) -> bool | None:
    """``positive_data_acceptance``, except that a request valid by the document may get a 422
    for a rule the document cannot state (never for one it states)."""
    if response.status_code == 422 and case.meta is not None and case.meta.generation.mode.is_positive:
        codes = {e.get("code") for e in response.json().get("errors", [])}
        if codes & SCHEMA_ERRORS or not codes:
            raise ContractError(f"a request valid by the document refused for what it states: {response.text[:600]}")
        return None
    return positive_data_acceptance(ctx, response, case)


def negative_data_rejection_or_per_item(ctx: CheckContext, response: Any, case: schemathesis.Case) -> bool | None:
    """``negative_data_rejection``, except that POST /predict/batch rejects a bad item on its own
    (by design: one bad item does not sink the others), in a 200 that reports it failed."""
    if case.operation.path == "/predict/batch" and response.status_code == 200 and response.json()["failed"] > 0:
        return None
    return negative_data_rejection(ctx, response, case)


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    problem_details,
]
CHECKS = [
    *CONFORMANCE,
    negative_data_rejection_or_per_item,
    positive_data_acceptance_or_semantic_422,
    missing_required_header,
    ignored_auth,
    unsupported_method,
    allow_header_conformance,
    # Not run: use_after_free, ensure_resource_availability and object_level_authorization are
    # stateful checks (links between operations, DELETE, two identities), which this run does not
    # do; max_response_time is not part of the contract.
]


# ------------------------------------------------------------------ plausible series
# Bodies generated from the document alone almost never pass the domain's checks (sorted,
# regular timestamps, a day of history at least), so they never reach the models. With a valid
# key, a share (about half) of the fuzzing phase's positive cases for the forecasting operations get series that
# do: a regular grid, of 1-30 days at 15/30/60 minutes, ending between 1900 and 2025 (on a
# midnight or not), with the generated loads repeated (extreme values included) or a daily
# shape at their level, with or without temperatures, in either history form.
PLAUSIBLE: set[str] = set()  # ids of cases made plausible
PREDICTIONS: list[tuple[str, list[str]]] = []  # (prediction_id, forecast steps) of alice's predictions
STAMP_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S+00:00")


@st.composite
def plausible_series(draw: st.DrawFn, seed_load: list[float], compact: bool) -> dict[str, Any]:
    minutes = draw(st.sampled_from([15, 30, 60]))
    per_day = 1440 // minutes
    n = draw(st.integers(1, 30)) * per_day + draw(st.integers(0, per_day - 1))
    end = draw(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2025, 12, 31)))
    end = end.replace(minute=end.minute // minutes * minutes, second=0, microsecond=0)
    if draw(st.booleans()):  # whole days, as the primary model wants them
        end = end.replace(hour=23, minute=60 - minutes)
    start = end - timedelta(minutes=minutes * (n - 1))
    base = [min(max(v, 0.0), MAX_LOAD_MW) for v in seed_load] or [0.0]
    if draw(st.booleans()):
        load = [base[i % len(base)] for i in range(n)]
    else:
        level = min(base[0], MAX_LOAD_MW / 2)
        load = [round(level * (1 + 0.3 * math.sin(2 * math.pi * i / per_day)), 3) for i in range(n)]
    body: dict[str, Any] = {"load": load}
    if compact and draw(st.booleans()):
        body |= {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "resolution_minutes": minutes}
    else:
        fmt = draw(st.sampled_from(STAMP_FORMATS))
        body["timestamps"] = [(start + timedelta(minutes=minutes * i)).strftime(fmt) for i in range(n)]
    if compact and draw(st.booleans()):
        body["temperature"] = [None if i % 97 == 5 else round(10 + 8 * math.sin(i / per_day), 2) for i in range(n)]
    return body


def _history(item: Any) -> st.SearchStrategy[Any]:
    if not isinstance(item, dict) or not isinstance(item.get("history"), dict):
        return st.just(item)
    seed = item["history"].get("load") or []
    return plausible_series(seed, compact=True).map(lambda h: {**item, "history": h, "temperature_forecast": None})


def _plausible_body(case: schemathesis.Case) -> st.SearchStrategy[Any] | None:
    body, path = case.body, case.operation.path
    if not isinstance(body, dict):
        return None
    if path == "/predict/single":
        return _history(body)
    if path == "/predict/batch" and isinstance(body.get("requests"), list):
        return st.tuples(*[_history(item) for item in body["requests"]]).map(lambda items: {"requests": list(items)})
    if path == "/anomalies/detect":
        series = plausible_series(body.get("load") or [], compact=False)
        return series.map(lambda s: {**body, "timestamps": s["timestamps"], "load": s["load"]})
    if path == "/actuals" and PREDICTIONS:

        def actuals(pick: tuple[tuple[str, list[str]], int]) -> dict[str, Any]:
            (pid, steps), k = pick
            return {"prediction_id": pid, "timestamps": steps[:k], "load": [float(i) for i in range(k)]}

        return st.tuples(st.sampled_from(PREDICTIONS), st.integers(1, 24)).map(actuals)
    return None


def plausible_case(context: Any, case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
    """The ``flatmap_case`` hook (valid key only): about half of the positive cases made plausible."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return st.just(case)
    bodies = _plausible_body(case)
    if bodies is None:
        return st.just(case)

    def use(body: Any) -> schemathesis.Case:
        case.body = body
        PLAUSIBLE.add(case.id)
        return case

    return st.integers(0, 3).flatmap(lambda k: st.just(case) if k == 0 else bodies.map(use))


# ------------------------------------------------------------------ the schema, per auth mode
def contract_config(auth_mode: str, key: str, max_examples: int, seed: int | None) -> schemathesis.Config:
    data: dict[str, Any] = {
        "generation": {
            "mode": "all",  # positive and negative
            "max-examples": max_examples,
            "deterministic": seed is None,
            "database": "none",  # no replay of earlier runs: the same cases every time
            # "wrong": schemathesis generates the x-api-key values (never a valid one)
            "with-security-parameters": auth_mode == "wrong",
        },
    }
    if auth_mode == "valid":
        data["headers"] = {"x-api-key": key}  # an override: never generated, never mutated
    if seed is not None:
        data["seed"] = seed
    return schemathesis.Config.from_dict(data)


def load_schema(auth_mode: str, app: Any | None) -> schemathesis.BaseSchema:
    """The document as the app serves it at /openapi.json (it needs a key), with this mode's config."""
    config = contract_config(auth_mode, KEY, MAX_EXAMPLES, SEED)
    if app is None:
        loaded = schemathesis.openapi.from_url(f"{URL}/openapi.json", config=config, headers={"x-api-key": KEY})
    else:
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers={"x-api-key": KEY})
    if auth_mode == "valid":
        loaded.hook("flatmap_case")(plausible_case)
    return loaded


def make_app() -> Any:
    from smartgrid.api.app import create_app

    return create_app(get_settings())


# One app and one moto for the module, the tables created as conftest's ``aws`` fixture does
# (creating them takes 0.5 s: once, not for each of the 21 operation x auth mode tests). The
# service starts without earlier tests' in-memory cache, as in the ``lambda_handler`` fixture.
# Made at import: schemathesis' ``parametrize`` needs the schemas at collection (its lazy form,
# ``schemathesis.pytest.from_fixture``, fails on pytest 9: schemathesis 4.32 reads
# ``request.node._nodeid``, which pytest 9.2 does not have).
APP = None if URL else make_app()
SCHEMAS = {mode: load_schema(mode, APP) for mode in AUTH_MODES}


@pytest.fixture(scope="module")
def target() -> Iterator[None]:
    if APP is None:
        yield
        return
    from moto import mock_aws

    from smartgrid.store.tables import create_tables

    with mock_aws():
        create_tables(get_settings())
        reset_service(APP.state.service)
        yield


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if REPORT:
        tried = [
            {"operation": op, "auth": auth, "mode": mode, "phase": phase, "cases": n}
            for (op, auth, mode, phase), n in sorted(TRIED.items())
        ]
        statuses = [
            {"operation": op, "auth": auth, "status": status, "responses": n}
            for (op, auth, status), n in sorted(STATUSES.items())
        ]
        failed = [{"operation": op, "auth": auth, "failure": text} for (op, auth), text in sorted(FAILED.items())]
        Path(REPORT).write_text(json.dumps({"tried": tried, "statuses": statuses, "failures": failed}, indent=1))


# The moto tables and the app serve all of an operation's cases, on purpose; generating large
# bodies (thousands of readings) is slow by nature.
HEALTH = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ]
)


def run_case(case: schemathesis.Case, auth_mode: str) -> None:
    meta = case.meta
    assert meta is not None
    phase = meta.phase.name.value + ("+plausible" if case.id in PLAUSIBLE else "")
    TRIED[(case.operation.label, auth_mode, meta.generation.mode.value, phase)] += 1
    # The valid key again as an explicit header: that is how ``ignored_auth`` knows it is a real
    # key, and then checks that the same request without it, or with another, is refused.
    headers = {"x-api-key": KEY} if auth_mode == "valid" else None
    try:
        response = case.call(headers=headers)
        STATUSES[(case.operation.label, auth_mode, response.status_code)] += 1
        if case.operation.path == "/predict/single" and response.status_code == 200:
            out = response.json()
            PREDICTIONS.append((out["prediction_id"], [s["timestamp"] for s in out["forecast"]]))
        # as ``call_and_validate`` does it (the status is counted in between)
        transport = {"headers": headers} if headers else None
        case.validate_response(response, checks=CHECKS, headers=headers, transport_kwargs=transport)
    except BaseException as exc:
        FAILED.setdefault((case.operation.label, auth_mode), f"{type(exc).__name__}: {exc}"[:4000])
        raise


@SCHEMAS["valid"].parametrize()
@HEALTH
def test_contract_with_a_valid_key(case, target):
    run_case(case, "valid")


@SCHEMAS["none"].parametrize()
@HEALTH
def test_contract_without_a_key(case, target):
    run_case(case, "none")


@SCHEMAS["wrong"].parametrize()
@HEALTH
def test_contract_with_wrong_keys(case, target):
    run_case(case, "wrong")


# ------------------------------------------------------------------ what the fuzzing found (regressions)
needs_app = pytest.mark.skipif(APP is None, reason="against the ASGI app only")


def send(path: str, method: str, *, checks: list[Any] | None = None, **kwargs: Any) -> Any:
    """One request made by hand, checked like the generated ones (conformance and problem details)."""
    case = SCHEMAS["valid"][path][method].Case(**kwargs)
    response = case.call()
    case.validate_response(response, checks=checks or CONFORMANCE)
    return response


def test_the_document_is_valid_openapi_and_states_the_contract():
    spec = SCHEMAS["valid"].raw_schema
    openapi_spec_validator.validate(spec)  # schemathesis loaded it too (SCHEMAS)
    scheme = dict(spec["components"]["securitySchemes"]["ApiKey"])
    description = scheme.pop("description")
    assert scheme == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert "401" in description and "403" in description  # what a missing and a wrong key get
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert op.get("security") == (None if path == "/health" else [{"ApiKey": []}]), path
            assert not any(p["name"].lower() == "x-api-key" for p in op.get("parameters", [])), path
            for status, response in responses.items():
                if status[0] in "45" and not (path == "/health" and status == "503"):
                    assert list(response["content"]) == [PROBLEM_JSON], (path, status)
            if path != "/health":
                assert {"401", "403", "4XX", "5XX"} <= responses.keys(), path
                assert "WWW-Authenticate" in responses["401"]["headers"]
            if "503" in responses and path != "/health":
                assert responses["503"]["headers"]["Retry-After"]["required"], path
            if method == "post":
                assert {"413", "422", "503"} <= responses.keys(), path
    assert spec["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Health"
    }
    schemas = spec["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["requests"]["maxItems"] == get_settings().max_batch_size
    # pydantic writes bounds placed after a validator as "ge"/"le", which JSON Schema ignores
    assert '"ge"' not in json.dumps(schemas) and '"le"' not in json.dumps(schemas)


@needs_app
def test_a_whole_number_written_as_a_float_is_an_integer(target, example_body):
    h = example_body["history"]
    body = {"history": {"start": h["timestamps"][0], "resolution_minutes": 60.0, "load": h["load"]}}
    r = send("/predict/single", "POST", body=body, headers={"x-api-key": KEY})
    assert r.status_code == 200 and r.json()["resolution_minutes"] == 60
    body["history"]["resolution_minutes"] = 60.5
    assert send("/predict/single", "POST", body=body, headers={"x-api-key": KEY}).status_code == 422


@needs_app
def test_a_few_readings_far_apart_are_refused_before_any_grid_is_made(target):
    # 3 readings 80 days apart at 5 minutes: a grid of 23,041 steps (decades apart: millions,
    # which took minutes of CPU and gigabytes of memory, a 5xx on Lambda)
    ts = ["2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z", "2025-03-22T00:00:00Z"]
    r = send("/anomalies/detect", "POST", body={"timestamps": ts, "load": [1.0, 2.0, 3.0]}, headers={"x-api-key": KEY})
    assert r.status_code == 422 and r.json()["errors"][0]["code"] == "span_too_long"
    assert r.json()["errors"][0]["field"] == "timestamps"  # the body's array, not the engine's column
    far = ["1900-01-01T00:00:00Z", "1900-01-01T00:05:00Z", "2025-12-31T23:55:00Z"]
    item = {"history": {"timestamps": far, "load": [1.0, 2.0, 3.0], "temperature": [1.0, 2.0, 3.0]}}
    r = send("/predict/batch", "POST", body={"requests": [item] * 5}, headers={"x-api-key": KEY})
    assert {x["error"]["errors"][0]["code"] for x in r.json()["results"]} == {"span_too_long"}
    assert {x["error"]["errors"][0]["field"] for x in r.json()["results"]} == {
        f"requests[{i}].history.timestamps" for i in range(5)
    }


@needs_app
def test_a_reused_idempotency_key_names_the_header(target, example_body):
    headers = {"x-api-key": KEY, "Idempotency-Key": "fuzz-reused"}
    assert send("/predict/single", "POST", body=example_body, headers=headers).status_code == 200
    other = {**example_body, "site_id": "another"}
    r = send("/predict/single", "POST", body=other, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "header.Idempotency-Key"


@needs_app
def test_pattern_errors_say_what_is_expected(target):
    r = send(
        "/predict/single",
        "POST",
        body={"history": {"load": [1.0, 2.0]}},
        headers={"x-api-key": KEY, "Idempotency-Key": "a b"},
    )
    error = next(e for e in r.json()["errors"] if e["field"] == "header.Idempotency-Key")
    assert error["code"] == "string_pattern_mismatch" and "ISO 8601" not in error["message"]
    body = {"prediction_id": "u" * 26, "timestamps": ["2025-01-01T00:00:00Z"], "load": [1.0]}
    (error,) = send("/actuals", "POST", body=body, headers={"x-api-key": KEY}).json()["errors"]
    assert error["field"] == "body.prediction_id" and "ISO 8601" not in error["message"]


@needs_app
def test_a_missing_key_is_a_401_that_names_the_scheme(target):
    r = send("/models", "GET")
    assert r.status_code == 401 and r.headers["www-authenticate"] == ["APIKey"]


@needs_app
def test_an_outage_is_a_documented_503(target, example_body, monkeypatch):
    from smartgrid.store.predictions_table import DynamoStore

    def down(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("connection reset")

    monkeypatch.setattr(DynamoStore, "save_predictions", down)
    checks = [c for c in CONFORMANCE if c is not not_a_server_error]
    body = {**example_body, "site_id": "outage"}
    keyed = {"x-api-key": KEY, "Idempotency-Key": "outage-1"}
    r = send("/predict/single", "POST", body=body, headers=keyed, checks=checks)
    assert r.status_code == 503 and r.headers["retry-after"] == ["5"]
    # without a key the forecast is served, not stored: a documented 200 too
    r = send("/predict/single", "POST", body=body, headers={"x-api-key": KEY}, checks=checks)
    assert r.status_code == 200 and r.json()["stored"] is False and r.json()["prediction_id"] is None


@needs_app
def test_a_critical_health_is_a_documented_503(target, tmp_path):
    from smartgrid.api.app import create_app
    from smartgrid.domain.predictions import PredictionService
    from smartgrid.engine.forecast import ModelSet

    settings = get_settings()
    svc = PredictionService(settings, ModelSet.load(tmp_path), APP.state.service._store_factory)
    case = SCHEMAS["valid"]["/health"]["GET"].Case()
    response = case.call(app=create_app(settings, svc))
    case.validate_response(response, checks=[c for c in CONFORMANCE if c is not not_a_server_error])
    assert response.status_code == 503 and response.json()["status"] == "critical"
