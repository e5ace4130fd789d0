"""``serve``: the whole API on one machine, on an embedded AWS emulator (moto) or an external one."""

# An embedded AWS emulator (moto's server mode, in a thread of this process) stands in for
# DynamoDB; the tables are created from the same pynamodb definitions the code uses; the app is
# the same FastAPI app Lambda runs, served by uvicorn. ``AWS_ENDPOINT_URL`` points every AWS
# client at the emulator, exactly as it would point them at a separate moto server. With
# ``--aws-endpoint URL`` no emulator is started: the tables and buckets are provisioned on the one
# already running at URL (a moto server in its own process, LocalStack), which keeps the stored
# items out of this process (the load and soak benchmark measures this process's memory).

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from smartgrid.cli.common import errors

commands = typer.Typer()

LOCAL_USER = "local-user"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Emulator:
    server: Any
    endpoint: str

    def stop(self) -> None:
        self.server.stop()


def start_emulator(host: str = "127.0.0.1", port: int | None = None) -> Emulator:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per AWS call

    port = port or free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return Emulator(server, f"http://{host}:{port}")


def external_endpoint(url: str, timeout_s: float = 5.0) -> str:
    """Check that an AWS emulator's URL is well formed and something listens there."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--aws-endpoint must be an http(s) URL such as http://127.0.0.1:5000, not {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(
            f"no AWS emulator answers at {url} ({exc}); start it first, e.g. python -m moto.server -p {port}"
        ) from exc
    return url.rstrip("/")


def local_environment(endpoint: str, api_key: str) -> dict[str, str]:
    """Environment for the app against the emulator: endpoint, dummy credentials, one key."""
    from smartgrid.api.auth import hash_key

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "SMARTGRID_AUTH_MODE": "keys",
        "SMARTGRID_API_KEYS": json.dumps({LOCAL_USER: hash_key(api_key)}),
    }


def serve(
    host: str, port: int, api_key: str | None, emulator_port: int | None, aws_endpoint: str | None = None
) -> None:
    import uvicorn

    from smartgrid.api.app import create_app
    from smartgrid.catalog import SERVICE
    from smartgrid.config import get_settings
    from smartgrid.store.provision import BUCKETS, provision

    emulator: Emulator | None = None
    if aws_endpoint:
        if emulator_port is not None:
            raise ValueError("--emulator-port is the embedded emulator's port; it does not go with --aws-endpoint")
        endpoint = external_endpoint(aws_endpoint)
    else:
        emulator = start_emulator(port=emulator_port)
        endpoint = emulator.endpoint
    key = api_key or secrets.token_urlsafe(18)
    os.environ.update(local_environment(endpoint, key))
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", SERVICE)
    get_settings.cache_clear()
    settings = get_settings()
    try:
        provision(settings)  # tables and buckets, as the CDK app makes them
        app = create_app(settings, flush_metrics=True)
        ms = app.state.service.models
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
        print(f"smartgrid API on {url}  (docs: {url}/docs?api_key={key})")
        tables = ", ".join(_tables(settings))
        if emulator is None:
            buckets = ", ".join(getattr(settings, name) for name in BUCKETS)
            print(f"external AWS emulator at {endpoint} (not started here); provisioned there: tables {tables}")
            print(f"  and buckets {buckets}")
        else:
            print(f"AWS emulator (moto) on {endpoint}; tables: {tables}")
        print(f"models loaded: {ms.models_loaded} from {settings.model_dir}")
        print(f"local API key for user {LOCAL_USER!r}: {key}")
        print("try:")
        print(f"  curl -s {url}/health")
        print(f"  curl -s -H 'x-api-key: {key}' {url}/models")
        print(
            f"  curl -s -H 'x-api-key: {key}' -H 'content-type: application/json' "
            f"--data @examples/predict_single.json {url}/predict/single"
        )
        print(f"  AWS_ENDPOINT_URL={endpoint} smartgrid ops check --url {url}")
        if emulator is None:
            print("Ctrl-C stops the API (the external emulator keeps running).", flush=True)
        else:
            print("Ctrl-C stops the API and the emulator.", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if emulator is not None:
            emulator.stop()


def _tables(settings: Any) -> list[str]:
    from smartgrid.store.tables import TABLES

    return [getattr(settings, name) for name in TABLES]


@commands.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port")] = 8000,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SMARTGRID_LOCAL_API_KEY", help="Local API key (default: random)")
    ] = None,
    emulator_port: Annotated[
        int | None, typer.Option("--emulator-port", min=1, max=65535, help="Port of the embedded AWS emulator")
    ] = None,
    aws_endpoint: Annotated[
        str | None,
        typer.Option(
            "--aws-endpoint",
            metavar="URL",
            help="Use the AWS emulator already running at URL (e.g. python -m moto.server -p 5000) instead of "
            "starting one: tables and buckets are provisioned there",
        ),
    ] = None,
) -> None:
    """Run the API on this machine, on an embedded AWS emulator (moto), with the bundled models."""
    with errors():
        serve(host, port, api_key, emulator_port, aws_endpoint)
