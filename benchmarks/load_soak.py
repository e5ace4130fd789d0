"""Load and soak of ``smartgrid serve`` on one machine, driven by locust over loopback HTTP.

    python3 -m uv run --frozen --all-extras python benchmarks/load_soak.py            # ~14 min
    python3 -m uv run --frozen --all-extras python benchmarks/load_soak.py --quick    # ~3 min smoke run

Set-up. A moto server runs in its own process (every stored prediction and cache entry lives
there, not in the API's memory); ``smartgrid serve --aws-endpoint URL`` runs the API (uvicorn,
one process, the same FastAPI app Lambda runs, the bundled models) in a subprocess pointed at it
and provisions the tables and buckets there; this script is the load generator. All three share
the machine's cores (2 here) with whatever else runs, so the saturation figure is a one-machine
figure: the load generator and the emulator take CPU the API would have in production, and the
emulator's DynamoDB latency is not DynamoDB's. The per-step CPU use of each process is recorded
so a reader can see which one ran out. Throughput is measured on a shared machine: repeat runs
differ; compare runs only from the same quiet machine. The API process answers one request at a
time (the endpoints are ``async def`` and do their model run and DynamoDB calls in the event
loop, as one Lambda container does), so throughput saturates at 1-2 users: more users only
queue; its ceiling is about 1 / (API CPU + emulator time) per request, not the core count.

Traffic (one API key, the local user), weights out of 100: 70 POST /predict/single with a body
never sent before (examples/predict_single.json with its last load value changed, as
tests/helpers/bodies.py ``vary`` does: a cache miss, a model run and two DynamoDB calls), 10 POST
/predict/single with one of 8 bodies sent before (cache hits), 10 POST /anomalies/detect (the
example's 28 days), 5 GET /health, 5 GET /models. Every response that is not 2xx and every
connection error or timeout counts as an error.

Step test: closed loop, zero wait, users 1, 2, 4, 8, 16, 32 (``--users``), each step
``--step-seconds`` measured after ``--warmup-seconds`` at its user count; it stops after the
first step that is saturated: errors, p99 above 500 ms (the latency alarm, docs/requirements.md#alerts),
or requests/s not more than 5% above the best step so far. The saturation throughput is the best
requests/s of a step with no errors and p99 <= 500 ms (the best of any step is recorded too).

Soak: half the saturation throughput (``--soak-fraction``) offered at a fixed rate for
``--soak-seconds`` (600 by default): N users with ``constant_throughput`` wait times (each user's
schedule at a random phase, see ``constant_throughput_random_phase``), N chosen so each user
sends about one request a second (a response slower than a second delays that user's
next request: the offered rate is fixed only while latency stays under a second, so the
achieved rate is reported next to the target). The API process's RSS (psutil) is sampled every
``--sample-seconds``; after ``--soak-warmup`` seconds a least-squares line is fitted to it and
reported as MiB per 10 minutes with its standard error, and separately for each half of the
fitted span (a leak grows in both; a cache filling up only in the first). Growth is called
beyond noise when the lower end of the slope's ~95% interval (slope - 2 SE) is above zero and
the fitted growth over the fitted span exceeds 2 MiB (the API benchmark's tolerance: allocator
arenas move RSS in steps). The API's in-memory cache tier holds up to 1024 predictions, so RSS
rises until about 1024 new bodies have been answered (the step test usually does that); the
60 s soak of ``--quick`` is too short for a memory verdict, only for checking the script.

Why locust as a library in this process rather than ``locust --headless --csv``: each request's
exact latency comes from locust's request event (its CSV percentiles are rounded, to 2
significant digits above 100 ms), the measured window of each step starts and ends exactly
where the script decides (after the step's warm-up, no CSV history to cut), and the RSS/CPU
sampler runs as a greenlet in the same loop with nothing to parse afterwards. FastHttpUser
(geventhttpclient) is used because it needs several times less CPU per request than
HttpUser (requests), and CPU is what the generator takes from the API on this machine. Either
way the generator is one gevent loop on one core.

Results: a table on stdout; JSON in benchmarks/results/load.json (``--quick``: load-quick.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
import psutil
from example_bodies import EXAMPLE, ExampleTemplate
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from machine_facts import cpu_model, versions

from smartgrid.catalog import ALERTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
API_KEY = "load-soak-key-not-a-secret"
# the latency alarm of docs/requirements.md#alerts (latency-p99-info; its threshold is in ms)
P99_LIMIT_MS = float(next(a.threshold for a in ALERTS if a.id == "latency-p99-info"))
GROWTH_STEP = 1.05  # a step must beat the best so far by more than 5% to count as growth
MEMORY_TOLERANCE_MIB = 2.0
HOT_BODIES = 8
MIX = {"miss": 70, "hit": 10, "anomalies": 10, "health": 5, "models": 5}
VERSIONS = ("locust", "gevent", "geventhttpclient", "moto", "uvicorn", "fastapi", "onnxruntime", "boto3", "psutil")

MOTO_CODE = """
import logging, sys, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
threading.Event().wait()
"""


# ------------------------------------------------------------------------- request bodies
class Bodies:
    """POST bodies, encoded once: distinct /predict/single bodies by string substitution of the
    last load value (base + k/1000, 3 decimals as ``vary`` rounds; k > 0 for new bodies,
    k < 0 for the few hot bodies of the cache hits), and one /anomalies/detect body."""

    def __init__(self) -> None:
        self.template = ExampleTemplate()
        self.counter = itertools.count(1)
        self.hot = [self.single(-(i + 1)) for i in range(HOT_BODIES)]
        h = json.loads(EXAMPLE.read_text())["history"]
        self.anomalies = json.dumps({"timestamps": h["timestamps"], "load": h["load"]}).encode()

    def single(self, k: int) -> bytes:
        return self.template.with_last_load(round(self.template.base + k * 0.001, 3)).encode()

    def miss(self) -> bytes:
        return self.single(next(self.counter))


BODIES = Bodies()
HEADERS = {"x-api-key": API_KEY, "content-type": "application/json", "accept": "application/json"}


# ------------------------------------------------------------------------- the locust user
class ApiUser(FastHttpUser):
    """One client of the API; ``wait_time`` is set by subclasses (``user_class``)."""

    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0
    start_spread_s = 0.0  # the soak's users start at random times within this

    def on_start(self) -> None:
        if self.start_spread_s:
            gevent.sleep(random.uniform(0, self.start_spread_s))

    def _call(self, method: str, path: str, name: str, body: bytes | None = None) -> bytes | None:
        with self.client.request(method, path, data=body, headers=HEADERS, name=name, catch_response=True) as response:
            code = response.status_code or 0
            if not 200 <= code < 300:
                response.failure(response.error or f"HTTP {code}")
                return None
            response.success()
            content: bytes = response.content or b""
            return content

    @task(MIX["miss"])
    def predict_miss(self) -> None:
        out = self._call("POST", "/predict/single", "POST /predict/single (new body)", BODIES.miss())
        if out is not None:
            RECORDER.cached(b'"cached":true' in out)

    @task(MIX["hit"])
    def predict_hit(self) -> None:
        body = BODIES.hot[int(time.monotonic() * 1000) % HOT_BODIES]
        out = self._call("POST", "/predict/single", "POST /predict/single (repeated body)", body)
        if out is not None:
            RECORDER.cached(b'"cached":true' in out)

    @task(MIX["anomalies"])
    def anomalies(self) -> None:
        self._call("POST", "/anomalies/detect", "POST /anomalies/detect", BODIES.anomalies)

    @task(MIX["health"])
    def health(self) -> None:
        self._call("GET", "/health", "GET /health")

    @task(MIX["models"])
    def models(self) -> None:
        self._call("GET", "/models", "GET /models")


def constant_throughput_random_phase(rate: float) -> Any:
    """locust's ``constant_throughput(rate)`` (one task start every 1/rate s, no catch-up after a
    slow response) with each user's schedule at a random phase. Locust starts floor(spawn_rate)
    users per dispatch in the same instant and ``constant_throughput`` keeps them in lockstep:
    N requests at once every period, which at a server that answers one request at a time
    queues them (smoke runs on a busy machine, half the saturation rate: p50 230-400 ms in
    lockstep, 46-68 ms at random phases)."""
    period = 1.0 / rate

    def wait(user: Any) -> float:
        now = time.monotonic()
        due: float | None = getattr(user, "_soak_due", None)
        due = now + random.uniform(0, period) if due is None else max(due + period, now)
        user._soak_due = due
        return due - now

    return wait


def user_class(wait: Any, start_spread_s: float = 0.0) -> type[ApiUser]:
    attrs = {"wait_time": wait, "abstract": False, "start_spread_s": start_spread_s}
    return type("LoadUser", (ApiUser,), attrs)


# ------------------------------------------------------------------------- measurement
@dataclass
class Window:
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    # name -> latencies (ms) of every request, failures included: p50/p99 include failed requests
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # name -> count
    error_kinds: dict[str, int] = field(default_factory=dict)
    hits: int = 0
    computed: int = 0


class Recorder:
    """Every request's latency from locust's request event, in the current window."""

    def __init__(self) -> None:
        self.window = Window()

    def on_request(self, name: str, response_time: float, exception: Any = None, **_: Any) -> None:
        w = self.window
        if exception is not None:
            w.errors[name] = w.errors.get(name, 0) + 1
            kind = str(exception)[:80]
            w.error_kinds[kind] = w.error_kinds.get(kind, 0) + 1
        w.samples.setdefault(name, []).append(response_time)

    def cached(self, hit: bool) -> None:
        if hit:
            self.window.hits += 1
        else:
            self.window.computed += 1

    def start(self) -> None:
        self.window = Window()

    def take(self) -> Window:
        w = self.window
        w.ended = time.monotonic()
        self.window = Window()
        return w


RECORDER = Recorder()


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summarise(w: Window) -> dict[str, Any]:
    seconds = (w.ended or time.monotonic()) - w.started
    every = [x for v in w.samples.values() for x in v]
    errors = sum(w.errors.values())
    return {
        "seconds": round(seconds, 1),
        "requests": len(every),
        "requests_per_s": round(len(every) / seconds, 2) if seconds else None,
        "p50_ms": pct(every, 50),
        "p99_ms": pct(every, 99),
        "max_ms": round(max(every), 1) if every else None,
        "errors": errors,
        "error_kinds": w.error_kinds,
        "predict_cached_responses": w.hits,
        "predict_computed_responses": w.computed,
        "per_endpoint": {
            name: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "errors": w.errors.get(name, 0)}
            for name, v in sorted(w.samples.items())
        },
    }


class CpuMeter:
    """CPU seconds of each process (and the whole machine) between two readings."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.last = self._read()

    def _read(self) -> dict[str, float]:
        out = {"wall": time.monotonic(), "machine_busy": _machine_busy()}
        for name, p in self.procs.items():
            t = p.cpu_times()
            out[name] = t.user + t.system
        return out

    def lap(self) -> dict[str, float]:
        now = self._read()
        wall = now["wall"] - self.last["wall"]
        cores = os.cpu_count() or 1
        result = {f"{k}_cpu_pct": round(100 * (now[k] - self.last[k]) / wall, 1) for k in self.procs}
        result["machine_cpu_pct_of_all_cores"] = round(
            100 * (now["machine_busy"] - self.last["machine_busy"]) / (wall * cores), 1
        )
        self.last = now
        return result


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


def rss_mib(p: psutil.Process) -> float:
    return round(p.memory_info().rss / 2**20, 2)


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least-squares slope (per second) and its standard error."""
    n = len(xs)
    if n < 3:
        return {"slope": None, "se": None}
    x = np.asarray(xs)
    y = np.asarray(ys)
    xm = x - x.mean()
    sxx = float((xm**2).sum())
    slope = float((xm * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * xm)
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    return {"slope": slope, "se": se}


# ------------------------------------------------------------------------- processes
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, timeout: float = 5.0) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def wait_until(check: Any, proc: subprocess.Popen[Any], what: str, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise SystemExit(f"{what} exited with code {proc.returncode}\n{tail}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} did not answer within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def serve_command() -> list[str]:
    """``smartgrid serve``: the console script next to this interpreter (it execs Python, so its
    pid is the API process), else ``python -m smartgrid.cli``."""
    script = Path(sys.executable).with_name("smartgrid")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("smartgrid")
    return [found, "serve"] if found else [sys.executable, "-m", "smartgrid.cli", "serve"]


@contextmanager
def servers(tmp: Path) -> Iterator[dict[str, Any]]:
    moto_port, api_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    moto = subprocess.Popen(
        [sys.executable, "-c", MOTO_CODE, str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    api: subprocess.Popen[Any] | None = None
    log = tmp / "serve.log"
    try:
        wait_until(lambda: get(endpoint + "/moto-api/") > 0, moto, "the moto server", 60)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTGRID_", "AWS_"))}
        cmd = [*serve_command(), "--port", str(api_port), "--api-key", API_KEY, "--aws-endpoint", endpoint]
        with open(log, "w") as out:  # serve's log lines and EMF metrics (stdout, as on Lambda)
            api = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: get(base + "/health") == 200, api, "smartgrid serve", 120, log)
        startup = log.read_text()
        if f"external AWS emulator at {endpoint}" not in startup:
            raise SystemExit(f"smartgrid serve did not say it uses the external emulator:\n{startup[-2000:]}")
        yield {
            "base": base,
            "endpoint": endpoint,
            "api": psutil.Process(api.pid),
            "moto": psutil.Process(moto.pid),
            "command": " ".join([Path(cmd[0]).name, *cmd[1:]]),
            "log": log,
        }
    finally:
        if api is not None:
            stop(api)
        stop(moto)


def first_requests(base: str) -> dict[str, Any]:
    """One computed and one cached prediction by plain HTTP before locust starts; warms the
    hot bodies so the 'repeated body' requests are hits from the start."""
    import urllib.request

    def post(body: bytes) -> dict[str, Any]:
        req = urllib.request.Request(base + "/predict/single", data=body, headers=HEADERS, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    first = post(BODIES.miss())
    if first.get("model_kind") != "primary" or len(first.get("forecast", [])) != 24:
        raise SystemExit(f"unexpected first prediction: {json.dumps(first)[:500]}")
    for body in BODIES.hot:
        post(body)
    again = post(BODIES.hot[0])
    if again.get("cached") is not True:
        raise SystemExit("a repeated body was not answered from the cache")
    return {"model": first.get("model"), "model_kind": first.get("model_kind")}


# ------------------------------------------------------------------------- phases
def make_env(base: str, wait: Any, start_spread_s: float = 0.0) -> Environment:
    env = Environment(user_classes=[user_class(wait, start_spread_s)], host=base, catch_exceptions=True)
    env.events.request.add_listener(RECORDER.on_request)
    env.create_local_runner()
    return env


def task_exceptions(env: Environment) -> int:
    assert env.runner is not None
    return sum(int(e["count"]) for e in env.runner.exceptions.values())


def step_test(base: str, procs: dict[str, psutil.Process], opts: dict[str, Any]) -> dict[str, Any]:
    env = make_env(base, constant(0))
    runner = env.runner
    assert runner is not None
    steps: list[dict[str, Any]] = []
    best = 0.0
    reason = f"no saturation up to {opts['users'][-1]} users"
    try:
        for users in opts["users"]:
            runner.start(users, spawn_rate=max(users, 1) * 4)
            gevent.sleep(opts["warmup_seconds"])
            exc_before = task_exceptions(env)
            meter = CpuMeter(procs)
            RECORDER.start()
            gevent.sleep(opts["step_seconds"])
            s = summarise(RECORDER.take())
            s["errors"] += task_exceptions(env) - exc_before
            row = {"users": users, **s, "cpu": meter.lap(), "api_rss_mib": rss_mib(procs["api"])}
            steps.append(row)
            print_step(row)
            rps = float(s["requests_per_s"] or 0.0)
            if s["errors"]:
                reason = f"errors at {users} users"
            elif (s["p99_ms"] or 0.0) > P99_LIMIT_MS:
                reason = f"p99 above {P99_LIMIT_MS:.0f} ms at {users} users"
            elif rps <= best * GROWTH_STEP:
                reason = f"requests/s grew by no more than {100 * (GROWTH_STEP - 1):.0f}% at {users} users"
            else:
                best = max(best, rps)
                continue
            break
    finally:
        runner.quit()
    ok = [s for s in steps if not s["errors"] and (s["p99_ms"] or 0.0) <= P99_LIMIT_MS]
    sat = max(ok, key=lambda s: s["requests_per_s"]) if ok else None
    top = max(steps, key=lambda s: s["requests_per_s"])
    return {
        "stopped_because": reason,
        "steps": steps,
        "saturation": {
            "requests_per_s": sat["requests_per_s"] if sat else None,
            "users": sat["users"] if sat else None,
            "p50_ms": sat["p50_ms"] if sat else None,
            "p99_ms": sat["p99_ms"] if sat else None,
            "rule": "best requests/s of a step with no errors and p99 <= 500 ms",
        },
        "best_any_step": {"requests_per_s": top["requests_per_s"], "users": top["users"]},
    }


def soak(base: str, procs: dict[str, psutil.Process], target: float, opts: dict[str, Any]) -> dict[str, Any]:
    users = max(2, min(64, math.ceil(target)))  # about one request a second per user
    per_user = target / users
    env = make_env(base, constant_throughput_random_phase(per_user), start_spread_s=1.0 / per_user)
    runner = env.runner
    assert runner is not None
    api = procs["api"]
    samples: list[dict[str, float]] = []
    intervals: list[dict[str, Any]] = []
    t0 = time.monotonic()
    meter = CpuMeter(procs)
    RECORDER.start()
    total = Window()
    runner.start(users, spawn_rate=users)  # created at once, each starts at a random time within its period

    def sample() -> None:
        while True:
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "api_rss_mib": rss_mib(api),
                    "moto_rss_mib": rss_mib(procs["moto"]),
                }
            )
            gevent.sleep(opts["sample_seconds"])

    sampler = gevent.spawn(sample)
    try:
        end = t0 + opts["soak_seconds"]
        while (now := time.monotonic()) < end:
            gevent.sleep(min(opts["interval_seconds"], end - now))
            w = RECORDER.take()
            merge(total, w)
            s = summarise(w)
            intervals.append(
                {
                    "t_end_s": round(time.monotonic() - t0, 1),
                    **{k: s[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")},
                    "api_rss_mib": samples[-1]["api_rss_mib"] if samples else None,
                }
            )
            print(
                f"  soak {intervals[-1]['t_end_s']:6.0f} s: {s['requests_per_s']:6.1f} req/s  p50 {s['p50_ms']} ms  "
                f"p99 {s['p99_ms']} ms  errors {s['errors']}  API RSS {intervals[-1]['api_rss_mib']} MiB",
                file=sys.stderr,
                flush=True,
            )
    finally:
        sampler.kill()
        runner.quit()
    samples.append(
        {"t_s": round(time.monotonic() - t0, 1), "api_rss_mib": rss_mib(api), "moto_rss_mib": rss_mib(procs["moto"])}
    )
    cpu = meter.lap()
    total.started, total.ended = t0, time.monotonic()
    s = summarise(total)
    s["errors"] += task_exceptions(env)
    return {
        "target_requests_per_s": round(target, 2),
        "users": users,
        "per_user_requests_per_s": round(per_user, 3),
        **s,
        "cpu": cpu,
        "memory": memory_verdict(samples, opts["soak_warmup"]),
        "intervals": intervals,
        "rss_samples": samples,
    }


def merge(total: Window, w: Window) -> None:
    for name, v in w.samples.items():
        total.samples.setdefault(name, []).extend(v)
    for name, n in w.errors.items():
        total.errors[name] = total.errors.get(name, 0) + n
    for kind, n in w.error_kinds.items():
        total.error_kinds[kind] = total.error_kinds.get(kind, 0) + n
    total.hits += w.hits
    total.computed += w.computed


def memory_verdict(samples: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    fitted = [s for s in samples if s["t_s"] >= warmup_s]
    fit = linear_fit([s["t_s"] for s in fitted], [s["api_rss_mib"] for s in fitted])
    rss = [s["api_rss_mib"] for s in samples]
    out: dict[str, Any] = {
        "api_rss_mib_at_start": rss[0],
        "api_rss_mib_at_fit_start": fitted[0]["api_rss_mib"] if fitted else None,
        "api_rss_mib_at_end": rss[-1],
        "api_rss_mib_min": min(rss),
        "api_rss_mib_max": max(rss),
        "moto_rss_mib_at_start": samples[0]["moto_rss_mib"],
        "moto_rss_mib_at_end": samples[-1]["moto_rss_mib"],
        "samples": len(samples),
        "fit_from_s": warmup_s,
        "fit_samples": len(fitted),
    }
    if fit["slope"] is None or fit["se"] is None:
        return {**out, "slope_mib_per_10min": None, "growth_beyond_noise": None}
    slope, se = fit["slope"] * 600, fit["se"] * 600
    span = fitted[-1]["t_s"] - fitted[0]["t_s"]
    growth = fit["slope"] * span
    mid = fitted[0]["t_s"] + span / 2
    halves = [[x for x in fitted if x["t_s"] <= mid], [x for x in fitted if x["t_s"] >= mid]]
    half_slopes = [linear_fit([x["t_s"] for x in h], [x["api_rss_mib"] for x in h])["slope"] for h in halves]
    out.update(
        {
            "slope_mib_per_10min": round(slope, 3),
            "slope_se_mib_per_10min": round(se, 3),
            "slope_halves_mib_per_10min": [round(h * 600, 3) if h is not None else None for h in half_slopes],
            "fitted_span_s": round(span, 1),
            "fitted_growth_mib_over_span": round(growth, 3),
            "growth_beyond_noise": bool(slope - 2 * se > 0 and growth > MEMORY_TOLERANCE_MIB),
            "rule": f"slope - 2 SE > 0 and fitted growth over the fitted span > {MEMORY_TOLERANCE_MIB} MiB",
        }
    )
    return out


# ------------------------------------------------------------------------- report
def print_step(row: dict[str, Any]) -> None:
    cpu = row["cpu"]
    print(
        f"  {row['users']:3d} users: {row['requests_per_s']:7.1f} req/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
        f"  errors {row['errors']}  CPU% api {cpu['api_cpu_pct']} moto {cpu['moto_cpu_pct']} "
        f"locust {cpu['locust_cpu_pct']} machine {cpu['machine_cpu_pct_of_all_cores']}",
        file=sys.stderr,
        flush=True,
    )


def table(report: dict[str, Any]) -> str:
    lines = [
        f"load and soak of `{report['setup']['command']}` "
        f"({report['date_utc']}, {report['machine']['cpu_count']} shared cores)",
        "",
        "| users | req/s | p50 ms | p99 ms | errors | CPU % api / moto / locust |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["step_test"]["steps"]:
        c = s["cpu"]
        lines.append(
            f"| {s['users']} | {s['requests_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['errors']} | "
            f"{c['api_cpu_pct']} / {c['moto_cpu_pct']} / {c['locust_cpu_pct']} |"
        )
    sat = report["step_test"]["saturation"]
    lines += ["", f"stopped: {report['step_test']['stopped_because']}"]
    lines.append(f"saturation: {sat['requests_per_s']} req/s at {sat['users']} users (p99 {sat['p99_ms']} ms)")
    sk = report.get("soak")
    if sk:
        m = sk["memory"]
        lines += [
            "",
            f"soak {sk['seconds']:.0f} s at target {sk['target_requests_per_s']} req/s ({sk['users']} users): "
            f"{sk['requests_per_s']} req/s, p50 {sk['p50_ms']} ms, p99 {sk['p99_ms']} ms, errors {sk['errors']}",
            f"API RSS {m['api_rss_mib_at_start']} -> {m['api_rss_mib_at_end']} MiB "
            f"(min {m['api_rss_mib_min']}, max {m['api_rss_mib_max']}); fit from {m['fit_from_s']:.0f} s: "
            f"{m['slope_mib_per_10min']} +/- {m.get('slope_se_mib_per_10min')} MiB per 10 min "
            f"(halves: {m.get('slope_halves_mib_per_10min')}); "
            f"fitted growth {m.get('fitted_growth_mib_over_span')} MiB over {m.get('fitted_span_s')} s; "
            f"growth beyond noise: {m['growth_beyond_noise']}",
        ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_total_mib": round(psutil.virtual_memory().total / 2**20),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def options(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    users = [int(u) for u in args.users.split(",")]
    if not users or any(u < 1 for u in users):
        raise SystemExit("--users: a comma-separated list of positive counts")
    return {
        "quick": q,
        "users": users,
        "step_seconds": args.step_seconds or (10 if q else 30),
        "warmup_seconds": args.warmup_seconds if args.warmup_seconds is not None else (3 if q else 5),
        "soak_seconds": args.soak_seconds or (60 if q else 600),
        "soak_fraction": args.soak_fraction,
        "soak_warmup": args.soak_warmup if args.soak_warmup is not None else (10 if q else 60),
        "sample_seconds": args.sample_seconds or (2 if q else 5),
        "interval_seconds": 15 if q else 60,
        "mix_weights": MIX,
        "hot_bodies": HOT_BODIES,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 s steps, 60 s soak (about 3 minutes)")
    ap.add_argument("--users", default="1,2,4,8,16,32", help="step user counts (default 1,2,4,8,16,32)")
    ap.add_argument("--step-seconds", type=float, default=None, help="measured seconds per step (30; --quick 10)")
    ap.add_argument("--warmup-seconds", type=float, default=None, help="unmeasured seconds per step (5; --quick 3)")
    ap.add_argument("--soak-seconds", type=float, default=None, help="soak length (600; --quick 60)")
    ap.add_argument("--soak-fraction", type=float, default=0.5, help="soak rate as a fraction of saturation")
    ap.add_argument(
        "--soak-warmup", type=float, default=None, help="seconds before the RSS fit starts (60; --quick 10)"
    )
    ap.add_argument("--sample-seconds", type=float, default=None, help="RSS sampling period (5; --quick 2)")
    ap.add_argument("--json", type=Path, default=None, help="output (results/load.json; --quick: load-quick.json)")
    args = ap.parse_args()
    opts = options(args)
    out_path = args.json or RESULTS / ("load-quick.json" if args.quick else "load.json")

    t_start = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "load_soak",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "machine": machine(),
        "versions": versions(VERSIONS),
        "options": opts,
    }
    with tempfile.TemporaryDirectory(prefix="load-soak-") as tmpdir, servers(Path(tmpdir)) as srv:
        procs = {"api": srv["api"], "moto": srv["moto"], "locust": psutil.Process()}
        report["setup"] = {
            "command": srv["command"],
            "emulator": "moto server (ThreadedMotoServer) in its own process on 127.0.0.1",
            "load_generator": "locust FastHttpUser, library mode, this process (one gevent loop)",
            "shared_cores": os.cpu_count(),
            "api_process_rss_mib_before_traffic": rss_mib(srv["api"]),
            "first_prediction": first_requests(srv["base"]),
            "p99_limit_ms": P99_LIMIT_MS,
        }
        print(f"step test: users {opts['users']}, {opts['step_seconds']:.0f} s each ...", file=sys.stderr, flush=True)
        report["step_test"] = step_test(srv["base"], procs, opts)
        sat = report["step_test"]["saturation"]["requests_per_s"]
        if sat:
            target = sat * opts["soak_fraction"]
            print(f"soak: {target:.1f} req/s for {opts['soak_seconds']:.0f} s ...", file=sys.stderr, flush=True)
            report["soak"] = soak(srv["base"], procs, target, opts)
        else:
            report["soak"] = None
            print("soak skipped: no step met the p99 and error limits", file=sys.stderr)
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds_total"] = round(time.monotonic() - t_start, 1)
    text = table(report)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
