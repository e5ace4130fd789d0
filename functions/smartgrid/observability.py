"""One Logger, Metrics and Tracer for the whole runtime (Powertools for AWS Lambda).

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME /
POWERTOOLS_METRICS_NAMESPACE (set by the CDK app from the same constants), defaulting to
``smartgrid`` / ``Smartgrid``. The Tracer does not auto-patch: patching imports botocore
and pynamodb at start-up even for requests that never use them. The data-access layer
patches botocore when it first creates a client (``trace_aws_sdk``).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "smartgrid"
NAMESPACE = "Smartgrid"

# The operations manual's metric names (its Prometheus metrics), emitted as EMF.
API_REQUESTS_TOTAL = "api_requests_total"
API_REQUEST_DURATION_SECONDS = "api_request_duration_seconds"
API_REQUESTS_ERRORS_TOTAL = "api_requests_errors_total"
MODEL_INFERENCE_DURATION_SECONDS = "model_inference_duration_seconds"
MODEL_ANOMALIES_DETECTED = "model_anomalies_detected"
MODEL_PREDICTION_ERROR_ABSOLUTE = "model_prediction_error_absolute"
# Ours, for the degraded modes the manual describes.
CACHE_ERRORS_TOTAL = "cache_errors_total"
FALLBACK_FORECASTS_TOTAL = "fallback_forecasts_total"

logger = Logger(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)
tracer = Tracer(service=SERVICE, auto_patch=False)

_patched = False


def trace_aws_sdk() -> None:
    """Patch botocore for X-Ray once, when the first AWS client is about to be used."""
    global _patched
    if not _patched:
        _patched = True
        tracer.patch(["botocore"])
