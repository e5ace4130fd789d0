"""``smartgrid serve``: the whole API on one machine.

An embedded AWS emulator (moto's server mode, in a thread of this process) stands in for
DynamoDB; the tables are created from the same pynamodb definitions the code uses; the
app is the same FastAPI app Lambda runs, served by uvicorn. ``AWS_ENDPOINT_URL`` points
every AWS client at the emulator, exactly as it would point them at a separate moto server.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

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


def local_environment(endpoint: str, api_key: str) -> dict[str, str]:
    """Environment for the app against the emulator: endpoint, dummy credentials, one key."""
    from .api.app import hash_key

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "SMARTGRID_AUTH_MODE": "keys",
        "SMARTGRID_API_KEYS": json.dumps({LOCAL_USER: hash_key(api_key)}),
    }


def serve(host: str, port: int, api_key: str | None, emulator_port: int | None) -> None:
    import uvicorn

    from .api.app import create_app
    from .catalog import SERVICE
    from .config import get_settings
    from .store.provision import provision

    emulator = start_emulator(port=emulator_port)
    key = api_key or secrets.token_urlsafe(18)
    os.environ.update(local_environment(emulator.endpoint, key))
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", SERVICE)
    get_settings.cache_clear()
    settings = get_settings()
    try:
        provision(settings)  # tables and buckets, as the CDK app makes them
        app = create_app(settings, flush_metrics=True)
        ms = app.state.service.models
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
        print(f"smartgrid API on {url}  (docs: {url}/docs?api_key={key})")
        print(f"AWS emulator (moto) on {emulator.endpoint}; tables: {', '.join(_tables(settings))}")
        print(f"models loaded: {ms.models_loaded} from {settings.model_dir}")
        print(f"local API key for user {LOCAL_USER!r}: {key}")
        print("try:")
        print(f"  curl -s {url}/health")
        print(f"  curl -s -H 'x-api-key: {key}' {url}/models")
        print(
            f"  curl -s -H 'x-api-key: {key}' -H 'content-type: application/json' "
            f"--data @examples/predict_single.json {url}/predict/single"
        )
        print(f"  AWS_ENDPOINT_URL={emulator.endpoint} smartgrid ops check --url {url}")
        print("Ctrl-C stops the API and the emulator.", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        emulator.stop()


def _tables(settings: Any) -> list[str]:
    from .store.tables import TABLES

    return [getattr(settings, name) for name in TABLES]
