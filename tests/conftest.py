"""Fixtures shared by every kind of test (unit, integration, infra, reliability); the helpers
the tests import are in tests/helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

# The helpers' asserts are rewritten as the tests' own are: a failing check reports its values.
pytest.register_assert_rewrite("tests.helpers")

from smartgrid.engine.csv_files import load_series  # noqa: E402
from smartgrid.engine.data import Series  # noqa: E402
from smartgrid.engine.features import HolidayCalendar  # noqa: E402
from tests.helpers.env import ENVIRONMENT, TRAIN_THREADS  # noqa: E402
from tests.helpers.paths import DATA, EXAMPLE  # noqa: E402
from tests.helpers.stack import Stack, reset_service  # noqa: E402

# Settings are read on first use (once per process, as on Lambda): set the environment
# before any test asks for them.
os.environ.setdefault("SMARTGRID_TRAIN_THREADS", TRAIN_THREADS)
os.environ.update(ENVIRONMENT)
os.environ.pop("AWS_ENDPOINT_URL", None)


# ------------------------------------------------------------------ data
@pytest.fixture(scope="session")
def gefcom() -> Series:
    return load_series(DATA / "gefcom_150d.csv.gz")


@pytest.fixture(scope="session")
def pjme() -> Series:
    return load_series(DATA / "pjme_150d.csv.gz")


@pytest.fixture(scope="session")
def calendar() -> HolidayCalendar:
    return HolidayCalendar("US")


# ------------------------------------------------------------------ API fixtures
@pytest.fixture(autouse=True)
def _reset_powertools() -> None:
    """Powertools keeps state in module globals: metrics buffer, cold-start flag, correlation id."""
    from aws_lambda_powertools.metrics.provider import cold_start

    from smartgrid.observability import logger, metrics

    metrics.clear_metrics()
    cold_start.reset_cold_start_flag()
    logger.set_correlation_id(None)


@pytest.fixture
def aws():
    """moto's in-process AWS, with the tables created from the code's own definitions."""
    from moto import mock_aws

    from smartgrid.config import get_settings
    from smartgrid.store.tables import create_tables

    with mock_aws():
        create_tables(get_settings())
        yield


@pytest.fixture
def lambda_handler(aws):
    """The real Lambda entry point (module-level app, models loaded once per process)."""
    from smartgrid.api import handler as module

    reset_service(module.app.state.service)
    return module.handler


@pytest.fixture
def example_body() -> dict:
    return json.loads(EXAMPLE.read_text())


# ------------------------------------------------------------------ jobs
@pytest.fixture
def stack_with_inbox(aws, monkeypatch) -> Iterator[Stack]:
    import boto3

    from smartgrid.config import get_settings
    from smartgrid.store.aws import reset_clients
    from smartgrid.store.provision import provision

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="smartgrid-l1")["TopicArn"]
    queue = sqs.create_queue(QueueName="ops-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("SMARTGRID_ALERT_TOPICS", json.dumps({"L1": topic}))
    get_settings.cache_clear()
    reset_clients()
    provision(get_settings())
    yield Stack(get_settings(), queue)
    get_settings.cache_clear()
    reset_clients()


@pytest.fixture
def registry_settings(aws, tmp_path, monkeypatch):
    """The provisioned stack for the model registry: API containers check the champion pointer
    on every request, downloaded sets go to tmp_path, and every registry action happens one
    second after the previous one (distinct set ids and decision keys)."""
    from datetime import UTC, datetime, timedelta

    from smartgrid.config import get_settings
    from smartgrid.domain import champion as reg
    from smartgrid.store.aws import reset_clients
    from smartgrid.store.provision import provision

    monkeypatch.setenv("SMARTGRID_MODEL_REFRESH_S", "0")
    monkeypatch.setenv("SMARTGRID_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    reset_clients()
    s = get_settings()
    provision(s)
    clock = iter(datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=i) for i in range(10_000))
    monkeypatch.setattr(reg, "utcnow", lambda: next(clock))
    yield s
    get_settings.cache_clear()
    reset_clients()
