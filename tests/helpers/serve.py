"""A served API over HTTP: ``smartgrid serve`` in a subprocess, and real HTTP calls to it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from tests.helpers.paths import ROOT


def serve_env() -> dict[str, str]:
    """The caller's environment without the tests' AWS/SMARTGRID settings (serve sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SMARTGRID_", "AWS_"))}


def http_call(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    """GET (or POST ``body``) over real HTTP; the status and the JSON body, errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("x-api-key", key)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    health: dict  # the first healthy /health answer
    out: str = ""  # what serve printed, once it has stopped


@contextlib.contextmanager
def serving(port: int, key: str, *extra: str, healthy_within_s: float) -> Iterator[Served]:
    """``smartgrid serve`` in a subprocess (the tests' AWS settings left out: it sets its own),
    once /health answers 200; stopped afterwards, its output in ``out``."""
    import subprocess
    import sys
    import time
    import urllib.error

    proc = subprocess.Popen(
        [sys.executable, "-m", "smartgrid.cli", "serve", "--port", str(port), "--api-key", key, *extra],
        cwd=ROOT,
        env=serve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", {})
    try:
        deadline = time.monotonic() + healthy_within_s
        while True:
            try:
                status, health = http_call(served.base + "/health")
                if status == 200:
                    served.health = health
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"serve did not become healthy within {healthy_within_s:g} s"
            time.sleep(0.25)
        yield served
    finally:
        proc.terminate()
        served.out, _ = proc.communicate(timeout=30)
