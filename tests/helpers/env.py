"""The environment the tests run in. Settings are read on first use (once per process, as on
Lambda): tests/conftest.py applies ``ENVIRONMENT`` before any test asks for them."""

from __future__ import annotations

import hashlib
import json

# The API under test: two users' API keys (the server stores their SHA-256 digests).
API_KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}

# Fake AWS credentials (moto), the users' key digests, no X-Ray daemon.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "SMARTGRID_AUTH_MODE": "keys",
    "SMARTGRID_API_KEYS": json.dumps({u: hashlib.sha256(k.encode()).hexdigest() for u, k in API_KEYS.items()}),
    "POWERTOOLS_SERVICE_NAME": "smartgrid",
    "POWERTOOLS_METRICS_NAMESPACE": "Smartgrid",
    "POWERTOOLS_TRACE_DISABLED": "true",
}

# One LightGBM thread per test worker: pytest runs two workers on two cores (see config.py).
TRAIN_THREADS = "1"
