"""Security checks by outside tools and at the API's edges.

- pip-audit on every locked dependency (both locks); detect-secrets on every file in the
  repository; checkov on the synthesized templates is in tests/infra/test_infra.py (it needs the
  synth the CLI test makes).
- API keys never reach the logs; every route but /health refuses a missing or wrong key; one
  client cannot read or write another's predictions.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smartgrid.catalog import PROBLEM_JSON
from smartgrid.store.tables import ActualsItem, PredictionItem
from tests.helpers.apigw import Client, rest_event
from tests.helpers.env import API_KEYS
from tests.helpers.paths import ROOT
from tests.helpers.uv_tools import uv_command, uv_env

BIN = Path(sys.executable).parent
# The scans (pip-audit, detect-secrets) are marked slow; the checks at the API's edges are not.

# ------------------------------------------------------------------ dependencies: pip-audit
# Vulnerabilities accepted on purpose, each with its reason: {"PYSEC-... / GHSA-...": "why"}.
# Empty: none is known to apply.
ACCEPTED_VULNERABILITIES: dict[str, str] = {}


def _locked_requirements(tmp_path: Path) -> list[Path]:
    """Every package of uv.lock (runtime, extras, dev groups) and of checkov's own lock."""
    out = []
    for name, project in (("project", ROOT), ("scanners", ROOT / "tools" / "scanners")):
        path = tmp_path / f"{name}-requirements.txt"
        where = ["--project", str(project), "--output-file", str(path)]
        subprocess.run(
            uv_command("export", "--frozen", "--all-extras", "--all-groups", "--no-emit-project", "--quiet", *where),
            check=True,
            timeout=120,
            env=uv_env(),
        )
        out.append(path)
    return out


def _audit(requirements: Path, report: Path) -> list[dict[str, Any]]:
    """pip-audit on one exported lock (fully pinned and hashed: nothing is resolved again)."""
    args = [str(BIN / "pip-audit"), "--disable-pip", "--require-hashes", "--requirement", str(requirements)]
    args += ["--format", "json", "--output", str(report), "--progress-spinner", "off", "--timeout", "10"]
    args += ["--cache-dir", str(report.parent / "cache")]
    for vuln in ACCEPTED_VULNERABILITIES:
        args += ["--ignore-vuln", vuln]
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("pip-audit's vulnerability service did not answer within 10 minutes")
    assert report.exists(), run.stderr[-3000:]
    deps: list[dict[str, Any]] = json.loads(report.read_text())["dependencies"]
    return deps


@pytest.mark.slow
def test_pip_audit_finds_no_known_vulnerability_in_the_locked_dependencies(tmp_path):
    deps = [d for path in _locked_requirements(tmp_path) for d in _audit(path, path.with_suffix(".audit.json"))]
    assert len(deps) > 150  # both locks were read
    skipped = [d["skip_reason"] for d in deps if "skip_reason" in d]
    if all("skip_reason" in d for d in deps):
        # This workplace reaches PyPI's simple index but not its per-release JSON API (404) nor
        # OSV: the audit cannot run here. It runs wherever pip-audit's service answers.
        pytest.skip(f"pip-audit could not reach its vulnerability service ({len(deps)} packages): {skipped[0]}")
    assert skipped == [], f"not audited: {skipped}"
    found = {d["name"]: [v["id"] for v in d["vulns"]] for d in deps if d.get("vulns")}
    assert found == {}, f"known vulnerabilities (fix, or accept in ACCEPTED_VULNERABILITIES with a reason): {found}"


# ------------------------------------------------------------------ secrets: detect-secrets
# Lines that look like secrets to detect-secrets and are not, each with its reason.
NOT_SECRETS = {
    r'"sha256": "[0-9a-f]{64}"': "content checksums of the bundled models and of benchmark inputs",
    r'(?i)aws_secret_access_key"?\s*[=:]\s*"(testing|local|bench)"': "moto's dummy credentials for the emulator",
    r'API_KEY = "[a-z-]+-not-a-secret"': "the benchmarks' keys for their own throwaway local servers",
    r'"git_commit": "[0-9a-f]{40}': "the commit a benchmark result was measured at",
}
BINARY = (".onnx", ".gz", ".png", ".zip", ".parquet")


def _detect_secrets(paths: list[str], cwd: Path) -> dict[str, list[dict[str, Any]]]:
    args = [str(BIN / "detect-secrets"), "scan"]
    for pattern in NOT_SECRETS:
        args += ["--exclude-lines", pattern]
    run = subprocess.run(args + paths, cwd=cwd, capture_output=True, text=True, timeout=300, check=True)
    results: dict[str, list[dict[str, Any]]] = json.loads(run.stdout)["results"]
    return results


@pytest.mark.slow
def test_no_secret_or_key_is_committed():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = [f for f in listed if not f.endswith(BINARY) and (ROOT / f).is_file()]
    assert len(files) > 100
    found = _detect_secrets(files, ROOT)
    assert found == {}, {f: [(s["type"], s["line_number"]) for s in found[f]] for f in found}


@pytest.mark.slow
def test_detect_secrets_is_live(tmp_path):
    """The same scan finds a planted AWS key, a private key and a hard-coded API key."""
    planted = tmp_path / "leak.py"
    lines = [
        'aws_access_key_id = "AKIA' + "Q" * 16 + '"',
        'api_key = "' + "9f8e7d6c5b4a" * 3 + '"',  # pragma: allowlist secret
        "-----BEGIN RSA " + "PRIVATE KEY-----",
    ]
    planted.write_text("\n".join(lines) + "\n")
    found = _detect_secrets([planted.name], tmp_path)
    kinds = {s["type"] for s in found[planted.name]}
    assert {"AWS Access Key", "Private Key", "Secret Keyword"} <= kinds, kinds


# ------------------------------------------------------------------ keys never logged
def test_api_keys_never_reach_the_logs(lambda_handler, example_body):
    import io

    from smartgrid.observability import logger

    buf = io.StringIO()
    handler = logger.registered_handler
    old = handler.setStream(buf)  # type: ignore[attr-defined]
    try:
        _log_requests_and_events(lambda_handler, example_body)
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]
    logged = buf.getvalue()
    assert '"message":"request"' in logged and "[redacted]" in logged  # there were logs, masked
    for key in (*API_KEYS.values(), WRONG_KEY):
        assert key not in logged


WRONG_KEY = "wrong-key-5d41402abc4b2a76b9719d911017c592"  # pragma: allowlist secret


def _log_requests_and_events(lambda_handler: Any, example_body: dict) -> None:
    from smartgrid.observability import logger

    alice = Client(lambda_handler, "rest")
    assert alice.post("/predict/single", example_body).status == 200
    assert alice.get("/predictions").status == 200
    assert alice.request("GET", "/models", None, user=None, headers={"x-api-key": WRONG_KEY}).status == 403
    # the key in a query string (/docs?api_key=... for the browser) and an unexpected error
    assert alice.request("GET", "/docs", None, user=None, query={"api_key": API_KEYS["alice"]}).status == 200
    # an event logged whole, as POWERTOOLS_LOGGER_LOG_EVENT=true would: headers and the
    # request context of a REST API with a usage plan carry the key's value
    event = rest_event("GET", "/models", None, {"x-api-key": API_KEYS["bob"]}, {"api_key": API_KEYS["bob"]})
    event["requestContext"]["identity"] = {"apiKey": API_KEYS["bob"], "apiKeyId": "k1"}
    logger.info("event", extra={"event": event})
    try:
        raise ValueError(f"refused x-api-key: {API_KEYS['bob']}")
    except ValueError:
        logger.exception("an error that quotes a key")


# ------------------------------------------------------------------ every route needs a key
def _operations() -> list[tuple[str, str]]:
    from smartgrid.api.handler import app

    ops = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method not in ("HEAD", "OPTIONS"):
                ops.append((method, route.path))  # type: ignore[attr-defined]
    return ops


def test_every_route_but_health_refuses_a_missing_or_wrong_key(lambda_handler):
    """A missing key, or an empty one, is a 401 (no credentials); any other key that is not a
    user's is a 403, the digest the server stores for bob included."""
    client = Client(lambda_handler, "rest")
    ops = _operations()
    assert ("GET", "/health") in ops and len(ops) >= 8  # the app's own routes, not a list kept here
    bobs_stored_digest = hashlib.sha256(API_KEYS["bob"].encode()).hexdigest()  # as in SMARTGRID_API_KEYS
    wrong = ("not-a-key", bobs_stored_digest, API_KEYS["alice"].upper(), API_KEYS["alice"] + " ", WRONG_KEY)
    for method, path in ops:
        body = {} if method == "POST" else None
        if path == "/health":
            assert client.request(method, path, body, user=None).status == 200
            assert client.request(method, path, body, user=None, headers={"x-api-key": WRONG_KEY}).status == 200
            continue
        for sent in (None, ""):  # no header, an empty header
            headers = None if sent is None else {"x-api-key": sent}
            r = client.request(method, path, body, user=None, headers=headers)
            assert r.status == 401, (method, path, repr(sent), r.status, r.text)
            assert r.headers["content-type"] == PROBLEM_JSON, (method, path, repr(sent))
        for bad in wrong:
            r = client.request(method, path, body, user=None, headers={"x-api-key": bad})
            assert r.status == 403, (method, path, repr(bad), r.status, r.text)
            assert r.headers["content-type"] == PROBLEM_JSON, (method, path, repr(bad))
    assert list(PredictionItem.scan()) == []


# ------------------------------------------------------------------ isolation between clients
def test_one_client_cannot_read_or_write_anothers_predictions(lambda_handler, example_body):
    client = Client(lambda_handler, "rest")
    made = client.post("/predict/single", example_body, user="alice")
    assert made.status == 200
    pid = made.json()["prediction_id"]
    # bob's list has none of alice's, and asking for hers by user_id is refused
    assert client.get("/predictions", user="bob").json()["items"] == []
    r = client.get("/predictions", user="bob", query={"user_id": "alice"})
    assert r.status == 403 and r.headers["content-type"] == PROBLEM_JSON
    # bob cannot attach actuals to alice's prediction: it does not exist for him
    steps = [s["timestamp"] for s in made.json()["forecast"][:3]]
    r = client.post("/actuals", {"prediction_id": pid, "timestamps": steps, "load": [1.0, 2.0, 3.0]}, user="bob")
    assert r.status == 404
    assert list(ActualsItem.scan()) == []
    # the same Idempotency-Key from bob is bob's own: no replay of alice's answer
    key = {"Idempotency-Key": "shared-key-1"}
    first = client.request("POST", "/predict/single", example_body, user="alice", headers=key)
    other = client.request("POST", "/predict/single", example_body, user="bob", headers=key)
    assert first.status == other.status == 200
    assert other.json()["prediction_id"] != first.json()["prediction_id"]
    assert {p.prediction_id for p in PredictionItem.query("bob")} == {other.json()["prediction_id"]}
    # alice still sees exactly her own two
    mine = {p["prediction_id"] for p in client.get("/predictions", user="alice").json()["items"]}
    assert mine == {pid, first.json()["prediction_id"]}
