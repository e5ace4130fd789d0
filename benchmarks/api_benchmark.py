"""API performance benchmark: the Lambda handler against baselines built here, side by side in one run.

    python3 -m uv run --frozen --all-extras python benchmarks/api_benchmark.py [--quick] [--rounds N]

What it measures, all in CPU time (``time.process_time``; this machine is shared and noisy, so
medians and percentiles of CPU time are quoted, wall times only for reference):

- Cold start: a fresh process imports the Lambda handler module and answers one API Gateway
  REST (v1) event for POST /predict/single (interpreter start-up included). Variants, run
  interleaved for N rounds: the product (``smartgrid.api.handler``), a plain FastAPI + Mangum
  + Powertools handler that imports boto3/pynamodb eagerly and does the same work with the
  same ONNX model (``baselines/plain_handler.py``), and the floor (``baselines/floor.py``:
  import onnxruntime, create the session, run one row). Goals: product <= 0.6x plain and
  <= 2.2x floor (medians of the per-round ratios).
- Warm single: 2000 distinct (cache-missing) POST /predict/single calls through
  ``handler(event, context)`` in one process, CPU p50/p99, against bare ``session.run`` of the
  primary model on the feature rows the product builds for the same input (interleaved in
  blocks of 100). Goal: p99 under 1 ms (also checked as overhead over bare inference, since
  bare inference alone may exceed it). The cache-hit path (same body repeated) and a cProfile
  split of where the CPU goes (a sample of calls, profiler overhead included) are reported too.
- Warm batch: POST /predict/batch with 1000 distinct items (compact history form, 15 days),
  CPU median of 5 runs (``--batch-runs``) against one bare ``session.run`` over the same
  24,000 stacked rows and against 1000 per-item runs. Goal: at most 2.5x bare (stacked).
- Memory: peak RSS (VmHWM) of the single-request process after 2000 requests, and current
  RSS sampled over a longer run (10,000 requests); goal: no growth from the second sample to
  the last (tolerance 2 MiB).

DynamoDB is a moto server in a separate process (its CPU is not counted). Before measuring,
site-packages and ``functions/`` are byte-compiled (Lambda packages ship .pyc; uv installs
without them and PYTHONDONTWRITEBYTECODE=1 is set here). X-Ray tracing is disabled
(POWERTOOLS_TRACE_DISABLED=true) for every variant alike: there is no X-Ray daemon here.
Results: printed as JSON and written to benchmarks/results/api.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from example_bodies import EXAMPLE, ExampleTemplate
from machine_facts import cpu_model, versions

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "benchmarks" / "baselines"
RESULTS = ROOT / "benchmarks" / "results" / "api.json"
API_KEY = "bench-api-key-not-a-secret"
USER = "bench-user"
PLAIN_TABLE = "bench-plain-predictions"
PRIMARY = "load_forecast"
BATCH_START = "2006-05-03T00:00:00Z"
BATCH_DAYS = 15
MEMORY_TOLERANCE_KIB = 2048
VERSIONS: tuple[str, ...] = (
    *("onnxruntime", "numpy", "fastapi", "starlette", "pydantic", "mangum", "aws-lambda-powertools"),
    *("pynamodb", "boto3", "botocore", "moto"),
)

MOTO_CODE = """
import logging, sys, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
threading.Event().wait()
"""

# One cold start: nothing recorded before the handler import; the event is read as JSON as
# the Lambda runtime does; CPU since process start (interpreter start-up included).
COLD_RUNNER = """
import sys
from {module} import handler
import json, time

class Context:
    function_name = "smartgrid-api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:smartgrid-api"
    aws_request_id = "c0ffee00-0000-4000-8000-000000000001"

with open(sys.argv[1]) as f:
    event = json.load(f)
response = handler(event, Context())
cpu = time.process_time()
wall = time.time() - float(sys.argv[2])
with open("/proc/self/status") as f:
    rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
status = response.get("statusCode")
body = response.get("body") or ""
if response.get("isBase64Encoded"):
    import base64
    body = base64.b64decode(body).decode("utf-8", "replace")
try:
    model = json.loads(body).get("model")
except Exception:
    model = None
out = {{"cpu_s": cpu, "wall_s": wall, "maxrss_kib": rss, "status": status, "model": model}}
if status != 200 or model != "{primary}":
    out["body"] = body
print("BENCH " + json.dumps(out), flush=True)
"""


# ------------------------------------------------------------------------- helpers
@dataclass
class LambdaContext:
    function_name: str = "smartgrid-api"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:smartgrid-api"
    aws_request_id: str = "c0ffee00-0000-4000-8000-000000000001"


def api_event(path: str, body: str, request_id: str) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, shaped as API Gateway sends it."""
    headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "content-length": str(len(body.encode())),
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "user-agent": "api-benchmark/1.0",
        "x-api-key": API_KEY,
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": "POST",
            "path": "/prod" + path,
            "stage": "prod",
            "requestId": request_id,
            "accountId": "123456789012",
            "apiId": "abc123",
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "api-benchmark/1.0", "apiKeyId": None},
        },
        "body": body,
        "isBase64Encoded": False,
    }


class SingleBodies(ExampleTemplate):
    """examples/predict_single.json with its last load changed per request (distinct cache keys)."""

    def body(self, k: int) -> str:
        return self.with_last_load(self.base + k * 1e-6)


class BatchBodies:
    """1000-item batches in the compact history form: 15 whole days of hourly loads ending at
    23:00 UTC (the primary model runs), each item's last load distinct."""

    def __init__(self) -> None:
        load = json.loads(EXAMPLE.read_text())["history"]["load"][: BATCH_DAYS * 24]
        self.base = float(load[-1])
        head = ",".join(repr(float(v)) for v in load[:-1])
        self.item_prefix = f'"history":{{"start":"{BATCH_START}","resolution_minutes":60,"load":[{head},'

    def body(self, first_k: int, n: int) -> str:
        items = [
            f'{{"site_id":"site-{i}",{self.item_prefix}{self.base + (first_k + i) * 1e-6!r}]}}}}' for i in range(n)
        ]
        return '{"requests":[' + ",".join(items) + "]}"


def percentiles_us(values: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values) * 1e6
    return {
        "n": len(values),
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "mean_us": round(float(a.mean()), 1),
        "min_us": round(float(a.min()), 1),
        "max_us": round(float(a.max()), 1),
    }


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def maxrss_kib() -> int:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: on Linux that keeps the
    parent's peak across fork and exec, so a child of a big process would report the parent's."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def response_text(response: dict[str, Any]) -> str:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        return base64.b64decode(body).decode("utf-8", "replace")
    return str(body)


def check_single(response: dict[str, Any], cached: bool) -> dict[str, Any]:
    status = response.get("statusCode")
    body = response_text(response)
    if status != 200:
        raise SystemExit(f"POST /predict/single answered {status}: {body}")
    data: dict[str, Any] = json.loads(body)
    if data.get("model") != PRIMARY or data.get("cached") is not cached or len(data.get("forecast", [])) != 24:
        raise SystemExit(
            f"POST /predict/single: expected the primary model ({PRIMARY}), cached={cached}, 24 steps; got model="
            f"{data.get('model')!r} cached={data.get('cached')!r} fallback_reason={data.get('fallback_reason')!r}"
        )
    return data


# ------------------------------------------------------------------------- child: warm single
def capture_feeds(model: Any) -> tuple[list[dict[str, Any]], Callable[[], None]]:
    """Record the feeds the product passes to the primary model's session (until restored)."""
    seen: list[dict[str, Any]] = []
    original = model.run

    def recording(feeds: dict[str, Any], outputs: list[str] | None = None) -> list[Any]:
        seen.append({k: v.copy() for k, v in feeds.items()})
        return original(feeds, outputs)

    model.run = recording

    def restore() -> None:
        del model.run

    return seen, restore


def child_warm_single(cfg: dict[str, Any]) -> dict[str, Any]:
    import cProfile
    import pstats

    from smartgrid.api.handler import app, handler

    pt = time.process_time
    ctx = LambdaContext()
    bodies = SingleBodies()
    counter = iter(range(cfg["first_k"], 10**9))
    requests = 0

    def call(body: str, cached: bool = False) -> float:
        nonlocal requests
        event = api_event("/predict/single", body, f"req-{requests}")
        t0 = pt()
        response = handler(event, ctx)
        dt = pt() - t0
        requests += 1
        check_single(response, cached)
        return dt

    model = app.state.service.models.get(PRIMARY)
    if model is None:
        raise SystemExit(f"the product did not load {PRIMARY}: {app.state.service.models.errors}")
    seen, restore = capture_feeds(model)
    w0 = time.perf_counter()
    first_call_cpu = call(bodies.body(next(counter)))  # imports and connects the DynamoDB store
    first_call_wall = time.perf_counter() - w0
    for _ in range(cfg["warmup"] - 1):
        call(bodies.body(next(counter)))
    warmup_wall = time.perf_counter() - w0
    restore()
    feeds = seen[-1]
    outputs = ["quantiles"]
    session = model.session

    product: list[float] = []
    bare: list[float] = []
    block = 100
    n = cfg["single_calls"]
    t_wall = time.perf_counter()
    while len(product) < n:
        for _ in range(min(block, n - len(product))):
            product.append(call(bodies.body(next(counter))))
        for _ in range(block):
            t0 = pt()
            session.run(outputs, feeds)
            bare.append(pt() - t0)
    wall_single = time.perf_counter() - t_wall
    peak_after = maxrss_kib()
    rss_after = rss_kib()

    # cache hits: one body, first call computes, the rest are answered from the cache
    hit_body = bodies.body(next(counter))
    call(hit_body)
    hits = [call(hit_body, cached=True) for _ in range(cfg["cache_hits"])]

    # memory over a longer run
    samples = [{"requests": requests, "rss_kib": rss_kib()}]
    every = cfg["memory_every"]
    while requests < cfg["memory_total"]:
        call(bodies.body(next(counter)))
        if requests % every == 0:
            samples.append({"requests": requests, "rss_kib": rss_kib()})
    if samples[-1]["requests"] != requests:
        samples.append({"requests": requests, "rss_kib": rss_kib()})

    # where the CPU goes: a profiled sample (profiler overhead inflates Python-heavy parts)
    prof = cProfile.Profile(pt)
    profiled = 0.0
    for _ in range(cfg["profile_calls"]):
        event = api_event("/predict/single", bodies.body(next(counter)), "req-profile")
        t0 = pt()
        prof.enable()
        response = handler(event, ctx)
        prof.disable()
        profiled += pt() - t0
        check_single(response, False)
    split = profile_split(pstats.Stats(prof), profiled, cfg["profile_calls"])

    p = percentiles_us(product)
    b = percentiles_us(bare)
    base = samples[1] if len(samples) > 1 else samples[0]
    growth = samples[-1]["rss_kib"] - base["rss_kib"]
    span = samples[-1]["requests"] - base["requests"]
    return {
        "first_call_after_import": {
            "cpu_ms": round(first_call_cpu * 1000, 1),
            "wall_ms": round(first_call_wall * 1000, 1),
        },
        "warmup": {"calls": cfg["warmup"], "wall_s": round(warmup_wall, 2)},
        "single": {
            "product_cpu": p,
            "bare_session_run_cpu": b,
            "bare_rows": int(next(iter(feeds.values())).shape[0]),
            "ratio_p50": ratio(p["p50_us"], b["p50_us"]),
            "ratio_p99": ratio(p["p99_us"], b["p99_us"]),
            "overhead_over_bare_p50_us": {
                "p50": round(p["p50_us"] - b["p50_us"], 1),
                "p99": round(p["p99_us"] - b["p50_us"], 1),
            },
            "wall_s_for_product_and_bare_loop": round(wall_single, 2),
        },
        "cache_hit": {
            "product_cpu": percentiles_us(hits),
            "ratio_p50_to_bare": ratio(percentile(hits, 50), b["p50_us"]),
        },
        "profile": split,
        "memory": {
            "peak_rss_kib_after_single_run": peak_after,
            "requests_at_peak_reading": cfg["warmup"] + n,
            "rss_kib_after_single_run": rss_after,
            "samples": samples,
            "growth_kib_second_to_last_sample": growth,
            "growth_kib_per_1000_requests": round(growth * 1000 / span, 1) if span else None,
            "peak_rss_kib_at_end": maxrss_kib(),
        },
        "requests_total": requests,
    }


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1e6, q))


def profile_split(stats: Any, measured_s: float, calls: int) -> dict[str, Any]:
    """CPU per call inside named parts of the request, from cumulative profiler times."""
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats

    def cum(match: Callable[[str, str], bool]) -> float:
        return sum(v[3] for (f, _, name), v in raw.items() if match(f.replace("\\", "/"), name))

    parts = {
        "dynamodb_cache_read (GetItem / BatchGetItem)": lambda f, n: (
            f.endswith("smartgrid/store/predictions_table.py") and n == "cache_get_many"
        ),
        "dynamodb_save (predictions + cache entries, BatchWriteItem)": lambda f, n: (
            f.endswith("smartgrid/store/predictions_table.py") and n == "save_predictions"
        ),
        "forecast_total (validate, features, session.run)": lambda f, n: (
            f.endswith("smartgrid/engine/forecast.py") and n == "forecast_many"
        ),
        "onnxruntime_session_run": lambda f, n: f.endswith("onnxruntime_inference_collection.py") and n == "run",
        "build_features": lambda f, n: f.endswith("smartgrid/engine/features.py") and n == "build_features",
        "readings_from_records (parse 672 timestamps)": lambda f, n: (
            f.endswith("smartgrid/engine/data.py") and n == "readings_from_records"
        ),
        "fastapi_solve_dependencies (body validation, auth)": lambda f, n: (
            f.endswith("fastapi/dependencies/utils.py") and n == "solve_dependencies"
        ),
        "powertools_metrics_flush": lambda f, n: "aws_lambda_powertools/metrics" in f and n == "flush_metrics",
    }
    total = stats.total_tt or 1.0
    out: dict[str, Any] = {
        "calls": calls,
        "timer": "time.process_time",
        "note": "cumulative CPU under cProfile (inflated by its overhead); shares are of the profiled total",
        "profiled_cpu_us_per_call": round(total / calls * 1e6, 1),
        "measured_cpu_us_per_call_with_profiler": round(measured_s / calls * 1e6, 1),
        "parts": {},
    }
    for name, match in parts.items():
        t = cum(match)
        out["parts"][name] = {"cpu_us_per_call": round(t / calls * 1e6, 1), "share": round(t / total, 3)}
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    out["top_own_time"] = [
        {
            "function": f"{_short(f)}:{line}:{name}" if f != "~" else name,
            "own_us_per_call": round(v[2] / calls * 1e6, 1),
            "share": round(v[2] / total, 3),
        }
        for (f, line, name), v in top
    ]
    return out


def _short(path: str) -> str:
    path = path.replace("\\", "/")
    for marker in ("site-packages/", "functions/", "lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ------------------------------------------------------------------------- child: warm batch
def batch_feeds(svc: Any, bodies: BatchBodies, first_k: int, n: int) -> list[dict[str, Any]]:
    """The primary model's feeds for a batch's items, built by the product's own forecaster
    exactly as the service does for each item (the API turns the compact form into timestamps)."""
    import numpy as np

    from smartgrid.engine.data import parse_timestamp, readings_from_records

    model = svc.models.get(PRIMARY)
    load = json.loads(EXAMPLE.read_text())["history"]["load"][: BATCH_DAYS * 24]
    ts = parse_timestamp(BATCH_START) + np.arange(len(load)) * np.timedelta64(3600, "s")
    seen, restore = capture_feeds(model)
    try:
        for i in range(n):
            values = [float(v) for v in load[:-1]] + [bodies.base + (first_k + i) * 1e-6]
            fc = svc.forecaster.forecast_readings(readings_from_records(ts, values, None, source="history"))
            if fc.model != PRIMARY:
                raise SystemExit(f"bare batch input: the primary model did not run ({fc.fallback_reason})")
    finally:
        restore()
    if len(seen) != n:
        raise SystemExit(f"expected {n} primary-model runs, saw {len(seen)}")
    return seen


def child_warm_batch(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from smartgrid.api.handler import app, handler

    pt = time.process_time
    ctx = LambdaContext()
    bodies = BatchBodies()
    size = cfg["batch_size"]
    next_k = cfg["first_k"]

    def call(n: int = size) -> tuple[float, float, int]:
        nonlocal next_k
        body = bodies.body(next_k, n)
        next_k += n
        event = api_event("/predict/batch", body, f"batch-{next_k}")
        w0 = time.perf_counter()
        t0 = pt()
        response = handler(event, ctx)
        dt = pt() - t0
        wall = time.perf_counter() - w0
        status = response.get("statusCode")
        text = response_text(response)
        if status != 200:
            raise SystemExit(f"POST /predict/batch answered {status}: {text[:4000]}")
        data = json.loads(text)
        models = {r.get("prediction", {}).get("model") for r in data["results"]}
        cached = {r.get("prediction", {}).get("cached") for r in data["results"]}
        if data.get("succeeded") != n or models != {PRIMARY} or cached != {False}:
            bad = next((r for r in data["results"] if r.get("status") != "ok"), data["results"][0])
            raise SystemExit(
                f"POST /predict/batch: expected {n} primary, uncached predictions; got succeeded="
                f"{data.get('succeeded')} models={models} cached={cached}; e.g. {json.dumps(bad)[:2000]}"
            )
        return dt, wall, len(text.encode())

    svc = app.state.service
    model = svc.models.get(PRIMARY)
    if model is None:
        raise SystemExit(f"the product did not load {PRIMARY}")
    call(cfg["batch_warmup_items"])
    seen = batch_feeds(svc, bodies, cfg["first_k"] + 10**6, size)
    stacked = {k: np.concatenate([f[k] for f in seen]) for k in seen[0]}
    outputs = ["quantiles"]
    session = model.session

    product, walls, bare_stacked, bare_items = [], [], [], []
    resp_bytes = 0
    for _ in range(cfg["batch_runs"]):
        dt, wall, resp_bytes = call()
        product.append(dt)
        walls.append(wall)
        t0 = pt()
        session.run(outputs, stacked)
        bare_stacked.append(pt() - t0)
        t0 = pt()
        for f in seen:
            session.run(outputs, f)
        bare_items.append(pt() - t0)
    med = statistics.median(product)
    ms = statistics.median(bare_stacked)
    mi = statistics.median(bare_items)
    return {
        "items": size,
        "runs": len(product),
        "rows_per_run": int(stacked[next(iter(stacked))].shape[0]),
        "request_bytes": len(bodies.body(0, size).encode()),
        "response_bytes": resp_bytes,
        "product_cpu_s": {"median": round(med, 4), "min": round(min(product), 4), "max": round(max(product), 4)},
        "product_wall_s_median": round(statistics.median(walls), 3),
        "bare_stacked_session_run_cpu_s_median": round(ms, 4),
        "bare_per_item_session_runs_cpu_s_median": round(mi, 4),
        "ratio_to_bare_stacked": ratio(med, ms),
        "ratio_to_bare_per_item": ratio(med, mi),
        "peak_rss_kib": maxrss_kib(),
    }


# ------------------------------------------------------------------------- parent
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_CODE, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the moto server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint  # it answers
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the moto server did not answer within 60 s")


def bench_env(endpoint: str) -> dict[str, str]:
    from smartgrid.api.auth import hash_key

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SMARTGRID_AUTH_MODE": "keys",
        "SMARTGRID_API_KEYS": json.dumps({USER: hash_key(API_KEY)}),
        "POWERTOOLS_METRICS_NAMESPACE": "Smartgrid",
        "POWERTOOLS_SERVICE_NAME": "smartgrid",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PLAIN_PREDICTIONS_TABLE": PLAIN_TABLE,
    }


def create_all_tables() -> list[str]:
    from smartgrid.config import get_settings
    from smartgrid.store.tables import create_tables

    get_settings.cache_clear()
    created = create_tables(get_settings())
    sys.path.insert(0, str(BASELINES))
    import plain_handler  # the baseline's own table, from its own model

    if not plain_handler.PredictionItem.exists():
        plain_handler.PredictionItem.create_table(billing_mode="PAY_PER_REQUEST", wait=True)
        created.append(PLAIN_TABLE)
    return created


def compile_bytecode() -> dict[str, Any]:
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    targets = [*paths, str(ROOT / "functions"), str(BASELINES)]
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "2", *targets], capture_output=True, text=True, check=False
    )
    return {
        "command": "python -m compileall -q -j 2 " + " ".join(_short_target(t) for t in targets),
        "seconds": round(time.perf_counter() - t0, 1),
        "returncode": res.returncode,
        "note": "Lambda packages ship .pyc; a non-zero code means some unrelated files did not compile",
    }


def _short_target(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def cold_variant(name: str) -> tuple[list[str], dict[str, str]]:
    """Command and extra environment of one cold-start variant ("{event}" and "{t0}" filled in later)."""
    if name == "floor":
        return [sys.executable, str(BASELINES / "floor.py"), "{t0}"], {}
    module = "smartgrid.api.handler" if name == "product" else "plain_handler"
    code = COLD_RUNNER.format(module=module, primary=PRIMARY)
    extra = {"PYTHONPATH": str(BASELINES)} if name == "plain" else {}
    return [sys.executable, "-c", code, "{event}", "{t0}"], extra


def run_cold(rounds: int, env: dict[str, str], tmp: Path, first_k: int) -> dict[str, Any]:
    variants = ("product", "plain", "floor")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    bodies = SingleBodies()
    k = first_k
    for r in range(rounds):
        for v in variants:
            k += 1
            event_path = tmp / f"cold-{v}-{r}.json"
            event_path.write_text(json.dumps(api_event("/predict/single", bodies.body(k), f"cold-{v}-{r}")))
            cmd, extra = cold_variant(v)
            t0 = repr(time.time())
            cmd = [c.replace("{event}", str(event_path)).replace("{t0}", t0) for c in cmd]
            res = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=300, check=False)
            line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("BENCH ")), None)
            if res.returncode != 0 or line is None:
                raise SystemExit(f"cold start of {v} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
            out = json.loads(line[6:])
            if out.get("status") != 200 or (v != "floor" and out.get("model") != PRIMARY):
                raise SystemExit(f"cold start of {v}: status {out.get('status')}, body: {out.get('body')}")
            results[v].append(out)
        print(
            f"  cold round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {results[v][-1]['cpu_s'] * 1000:.0f} ms" for v in variants),
            file=sys.stderr,
            flush=True,
        )
    cpu = {v: [x["cpu_s"] for x in results[v]] for v in variants}
    vs_plain = [p / q for p, q in zip(cpu["product"], cpu["plain"], strict=True)]
    vs_floor = [p / q for p, q in zip(cpu["product"], cpu["floor"], strict=True)]
    return {
        "rounds": rounds,
        "order": "interleaved per round: product, plain, floor",
        "cpu_ms": {
            v: {
                "median": round(statistics.median(cpu[v]) * 1000, 1),
                "min": round(min(cpu[v]) * 1000, 1),
                "max": round(max(cpu[v]) * 1000, 1),
                "all": [round(x * 1000, 1) for x in cpu[v]],
            }
            for v in variants
        },
        "wall_ms_median": {v: round(statistics.median(x["wall_s"] for x in results[v]) * 1000, 1) for v in variants},
        "peak_rss_kib_median": {v: int(statistics.median(x["maxrss_kib"] for x in results[v])) for v in variants},
        "ratio_product_to_plain": {
            "median_of_paired": round(statistics.median(vs_plain), 3),
            "of_medians": ratio(statistics.median(cpu["product"]), statistics.median(cpu["plain"])),
            "per_round": [round(x, 3) for x in vs_plain],
        },
        "ratio_product_to_floor": {
            "median_of_paired": round(statistics.median(vs_floor), 3),
            "of_medians": ratio(statistics.median(cpu["product"]), statistics.median(cpu["floor"])),
            "per_round": [round(x, 3) for x in vs_floor],
        },
    }


def run_child(kind: str, cfg: dict[str, Any], env: dict[str, str], tmp: Path) -> dict[str, Any]:
    cfg_path = tmp / f"{kind}-config.json"
    out_path = tmp / f"{kind}-result.json"
    err_path = tmp / f"{kind}-stderr.txt"
    cfg_path.write_text(json.dumps({**cfg, "out": str(out_path)}))
    with open(err_path, "w") as err:
        # the handler's log lines and EMF metrics go to stdout, as on Lambda; not needed here
        res = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config", str(cfg_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
        )
    if res.returncode != 0 or not out_path.exists():
        raise SystemExit(f"{kind} run failed (exit {res.returncode}):\n{err_path.read_text()[-4000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def goals(cold: dict[str, Any], single: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    s = single["single"]["product_cpu"]
    m = single["memory"]
    return {
        "cold_start_at_most_0.6x_plain": {
            "value": cold["ratio_product_to_plain"]["median_of_paired"],
            "goal_met": cold["ratio_product_to_plain"]["median_of_paired"] <= 0.6,
        },
        "cold_start_at_most_2.2x_floor": {
            "value": cold["ratio_product_to_floor"]["median_of_paired"],
            "goal_met": cold["ratio_product_to_floor"]["median_of_paired"] <= 2.2,
        },
        "single_p99_cpu_under_1ms": {
            "value_us": s["p99_us"],
            "goal_met": s["p99_us"] < 1000.0,
            "bare_session_run_p50_us": single["single"]["bare_session_run_cpu"]["p50_us"],
            "if_read_as_overhead_over_bare": {
                "value_us": single["single"]["overhead_over_bare_p50_us"]["p99"],
                "goal_met": single["single"]["overhead_over_bare_p50_us"]["p99"] < 1000.0,
            },
        },
        "batch_1000_at_most_2.5x_bare": {
            "value": batch["ratio_to_bare_stacked"],
            "reference": "one session.run over the batch's stacked feature rows",
            "goal_met": batch["ratio_to_bare_stacked"] is not None and batch["ratio_to_bare_stacked"] <= 2.5,
            "vs_per_item_session_runs": batch["ratio_to_bare_per_item"],
        },
        "memory_no_growth": {
            "value_kib": m["growth_kib_second_to_last_sample"],
            "tolerance_kib": MEMORY_TOLERANCE_KIB,
            "goal_met": m["growth_kib_second_to_last_sample"] <= MEMORY_TOLERANCE_KIB,
        },
    }


def options(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {
        "quick": quick,
        "cold_rounds": args.rounds or (3 if quick else 15),
        "warmup": 50,
        "single_calls": 300 if quick else 2000,
        "cache_hits": 50 if quick else 500,
        "profile_calls": 30 if quick else 200,
        "memory_total": 700 if quick else 10_000,
        "memory_every": 100 if quick else 1000,
        "batch_size": 1000,
        "batch_runs": args.batch_runs or (1 if quick else 5),
        "batch_warmup_items": 100,
        "compile_bytecode": not args.no_compile,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run with small counts")
    ap.add_argument("--rounds", type=int, default=None, help="cold-start rounds (default 15, --quick 3)")
    ap.add_argument("--batch-runs", type=int, default=None, help="timed 1000-item batches (default 5, --quick 1)")
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    ap.add_argument("--no-compile", action="store_true", help="skip byte-compiling site-packages and functions/")
    ap.add_argument("--child", choices=["warm-single", "warm-batch"], help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        cfg = json.loads(args.config.read_text())
        result = child_warm_single(cfg) if args.child == "warm-single" else child_warm_batch(cfg)
        Path(cfg["out"]).write_text(json.dumps(result))
        return 0

    opts = options(args)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "api",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(VERSIONS),
        "options": opts,
        "conditions": {
            "cpu_clock": "time.process_time (CPU of the measured process; the moto server's CPU is not counted)",
            "tracing": "disabled for every variant (POWERTOOLS_TRACE_DISABLED=true): no X-Ray daemon here",
            "dynamodb": "moto server in a separate process on 127.0.0.1",
            "logging": "Powertools defaults (INFO); the handler's stdout goes to a pipe (cold) or /dev/null (warm)",
            "onnxruntime_threads": 1,
            "peak_rss": "VmHWM of /proc/self/status; ru_maxrss would keep the parent's peak across fork and exec",
            "bare_inputs": "feeds captured from the product's own forecaster for the same histories",
        },
    }
    print("compiling bytecode ...", file=sys.stderr, flush=True)
    report["bytecode"] = compile_bytecode() if opts["compile_bytecode"] else {"skipped": True}

    moto, endpoint = start_moto()
    try:
        env_extra = bench_env(endpoint)
        os.environ.update(env_extra)
        env = {**os.environ}
        report["tables_created"] = create_all_tables()
        with tempfile.TemporaryDirectory(prefix="api-bench-") as tmpdir:
            tmp = Path(tmpdir)
            print(f"cold start: {opts['cold_rounds']} rounds ...", file=sys.stderr, flush=True)
            report["cold_start"] = run_cold(opts["cold_rounds"], env, tmp, first_k=0)
            print(f"warm single: {opts['single_calls']} calls + memory run ...", file=sys.stderr, flush=True)
            single = run_child("warm-single", {**opts, "first_k": 100_000}, env, tmp)
            print(f"warm batch: {opts['batch_runs']} x {opts['batch_size']} items ...", file=sys.stderr, flush=True)
            batch = run_child("warm-batch", {**opts, "first_k": 1_000_000}, env, tmp)
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=10)
        except subprocess.TimeoutExpired:
            moto.kill()
    report["warm_single"] = {k: v for k, v in single.items() if k != "memory"}
    report["warm_batch"] = batch
    report["memory"] = single["memory"]
    report["goals"] = goals(report["cold_start"], single, batch)
    report["wall_seconds_total"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
