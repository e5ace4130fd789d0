"""Faults injected at the AWS transport, from outside the product code.

moto answers every botocore request through one ``before-send`` handler, the
``BotocoreStubber`` instance that ``moto.core.models`` appends to botocore's
``BUILTIN_HANDLERS`` (so every client and every pynamodb connection has it). ``AwsFaults``
wraps that handler's ``__call__``: a request that matches a rule (service, operation, table,
bucket/key) is answered with a real AWS error response (DynamoDB's JSON 1.0 errors, S3's XML
errors), or fails as the HTTP client would (``EndpointConnectionError``: connection refused;
``ReadTimeoutError``: no answer in time), for all matching requests, the first N, those after
the first N, or a fraction; everything else falls through to moto. So botocore's own retries
(standard mode: throttling and transient errors), its error parsing and pynamodb's exceptions
all run as they would against AWS. Against a moto *server* (``AWS_ENDPOINT_URL``) the stubber
passes, and so do the rules: what falls through is sent over HTTP.

``SlowMotoServer`` is moto's ``ThreadedMotoServer`` with a WSGI wrapper in front that delays
chosen requests (a slow S3), for jobs run as subprocesses against it.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.retries import standard
from moto.core.botocore_stubber import BotocoreStubber, MockRawResponse
from moto.server import ThreadedMotoServer

_ORIGINAL_CALL = BotocoreStubber.__call__


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Call:
    """One AWS request as seen on the wire (before moto or the network answers it)."""

    service: str  # botocore's hyphenized service id: "dynamodb", "s3", ...
    operation: str  # "PutItem", "BatchWriteItem", "GetObject", ...
    method: str
    url: str
    tables: tuple[str, ...] = ()  # DynamoDB: every table the request touches
    bucket: str | None = None  # S3
    key: str | None = None  # S3 (URL-decoded)
    body: dict[str, Any] | None = None  # DynamoDB: the JSON request

    def touches(self, table: str) -> bool:
        return table in self.tables


def _text(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes | bytearray):
        return bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        return body
    return ""  # a stream (S3 uploads): not read here


def parse_call(event_name: str, request: AWSPreparedRequest) -> Call:
    """Service and operation from the event (``before-send.<service>.<operation>``) and the
    request itself: DynamoDB's ``X-Amz-Target`` (``DynamoDB_20120810.PutItem``) and the table
    names in its JSON body; S3's bucket and key from the URL (virtual-hosted or path style)."""
    _, service, operation = [*event_name.split(".", 2), "", ""][:3]
    headers = request.headers
    if service == "dynamodb":
        target = headers.get("X-Amz-Target") or ""
        target = target.decode() if isinstance(target, bytes) else target
        if "." in target:
            operation = target.split(".", 1)[1]
        try:
            body = json.loads(_text(request.body) or "{}")
        except ValueError:
            body = {}
        tables: list[str] = []
        if isinstance(body.get("TableName"), str):
            tables.append(body["TableName"])
        tables.extend(body.get("RequestItems") or {})
        for item in body.get("TransactItems") or []:
            for part in item.values():
                if isinstance(part, dict) and isinstance(part.get("TableName"), str):
                    tables.append(part["TableName"])
        return Call(service, operation, request.method, request.url, tuple(dict.fromkeys(tables)), body=body)
    if service == "s3":
        parts = urlsplit(request.url)
        host, path = parts.hostname or "", parts.path.lstrip("/")
        bucket: str | None
        if ".s3." in host or host.endswith(".s3.amazonaws.com") or ".s3-" in host:
            bucket, key = host.split(".s3", 1)[0], path
        else:  # path style (an endpoint URL such as a moto server)
            bucket, _, key = path.partition("/")
        return Call(service, operation, request.method, request.url, bucket=bucket or None, key=unquote(key) or None)
    return Call(service, operation, request.method, request.url)


# --------------------------------------------------------------------------- faults
Passthrough = Callable[[AWSPreparedRequest], AWSResponse]


class Fault:
    """What a matching request gets instead of (or on top of) moto's answer."""

    name = "fault"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        raise NotImplementedError


def _respond(request: AWSPreparedRequest, status: int, headers: dict[str, str], body: bytes) -> AWSResponse:
    return AWSResponse(request.url, status, headers, MockRawResponse(body))


@dataclass(frozen=True)
class AwsError(Fault):
    """A real AWS error response: DynamoDB's JSON 1.0 error (``__type``, ``message``, with
    ``x-amz-crc32`` as DynamoDB sends it) or S3's XML ``<Error>``."""

    status: int
    code: str
    message: str
    namespace: str = "com.amazonaws.dynamodb.v20120810"  # DynamoDB's __type prefix

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.status} {self.code}"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        rid = uuid.uuid4().hex.upper()
        if call.service == "s3":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
                f"<RequestId>{rid[:16]}</RequestId><HostId>{rid}</HostId></Error>"
            ).encode()
            headers = {
                "Content-Type": "application/xml",
                "x-amz-request-id": rid[:16],
                "x-amz-id-2": rid,
                "Content-Length": str(len(body)),
            }
            if call.method == "HEAD":  # S3 answers HEAD errors without a body
                body, headers["Content-Length"] = b"", "0"
            return _respond(request, self.status, headers, body)
        body = json.dumps({"__type": f"{self.namespace}#{self.code}", "message": self.message}).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-RequestId": rid,
            "x-amz-crc32": str(zlib.crc32(body) & 0xFFFFFFFF),
            "Content-Length": str(len(body)),
        }
        return _respond(request, self.status, headers, body)


@dataclass(frozen=True)
class Refused(Fault):
    """Connection refused: the request never reaches the service."""

    name = "connection refused"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        raise EndpointConnectionError(endpoint_url=request.url)


@dataclass(frozen=True)
class Timeout(Fault):
    """No answer within the read timeout (``after_send``: the service did the work, and the
    answer was lost: the nastiest case for writes)."""

    after_send: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return "response lost" if self.after_send else "read timeout"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        if self.after_send:
            passthrough(request)
        raise ReadTimeoutError(endpoint_url=request.url)


@dataclass(frozen=True)
class Truncated(Fault):
    """The service's answer with its body cut to ``keep`` bytes (Content-Length adjusted: a
    proxy or a disk that returned less than was stored)."""

    keep: int
    name = "truncated body"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        response = passthrough(request)
        body = response.content[: self.keep]
        headers = {k: v for k, v in response.headers.items() if not k.lower().startswith("x-amz-checksum")}
        headers["Content-Length"] = str(len(body))
        return _respond(request, response.status_code, headers, body)


@dataclass(frozen=True)
class Unprocessed(Fault):
    """DynamoDB BatchWriteItem under throttling: the requests for ``tables`` are not written
    and come back as ``UnprocessedItems``; the rest are written (as DynamoDB does when part
    of a batch is throttled)."""

    tables: frozenset[str]
    name = "unprocessed items"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        assert call.operation == "BatchWriteItem" and call.body is not None
        items = call.body.get("RequestItems") or {}
        held = {t: r for t, r in items.items() if t in self.tables}
        rest = {t: r for t, r in items.items() if t not in self.tables}
        answer: dict[str, Any] = {"UnprocessedItems": {}}
        if rest:
            body = json.dumps({**call.body, "RequestItems": rest}).encode()
            headers = dict(request.headers.items())
            headers["Content-Length"] = str(len(body))
            inner = AWSPreparedRequest(request.method, request.url, headers, body, request.stream_output)
            got = passthrough(inner)
            answer = json.loads(got.content or b"{}")
            if got.status_code != 200:
                return _respond(request, got.status_code, dict(got.headers.items()), got.content)
        answer.setdefault("UnprocessedItems", {}).update(held)
        body = json.dumps(answer).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-RequestId": uuid.uuid4().hex.upper(),
            "x-amz-crc32": str(zlib.crc32(body) & 0xFFFFFFFF),
        }
        return _respond(request, 200, headers, body)


@dataclass(frozen=True)
class Latency(Fault):
    """The service answers, ``seconds`` late (within the client's timeouts)."""

    seconds: float
    name = "latency"

    def apply(self, call: Call, request: AWSPreparedRequest, passthrough: Passthrough) -> AWSResponse:
        time.sleep(self.seconds)
        return passthrough(request)


# The errors AWS sends, as botocore receives them.
THROUGHPUT_EXCEEDED = AwsError(
    400,
    "ProvisionedThroughputExceededException",
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API.",
)
THROTTLING = AwsError(
    400, "ThrottlingException", "Rate of requests exceeds the allowed throughput.", "com.amazon.coral.availability"
)
DYNAMODB_INTERNAL = AwsError(500, "InternalServerError", "Internal server error")
DYNAMODB_UNAVAILABLE = AwsError(503, "ServiceUnavailable", "The service is currently unavailable or busy.")
SLOW_DOWN = AwsError(503, "SlowDown", "Please reduce your request rate.")
S3_INTERNAL = AwsError(500, "InternalError", "We encountered an internal error. Please try again.")
S3_UNAVAILABLE = AwsError(503, "ServiceUnavailable", "Service is unable to handle request.")
REFUSED = Refused()
TIMEOUT = Timeout()
RESPONSE_LOST = Timeout(after_send=True)


# --------------------------------------------------------------------------- rules
@dataclass
class Rule:
    """Which requests get ``fault``: of ``service``, optionally only these operations, tables
    (any touched), bucket, key prefix, or a predicate. Of the matching requests, the first
    ``after`` pass, then ``times`` are faulted (None: all), each with probability ``rate``."""

    fault: Fault
    service: str
    operations: frozenset[str] | None = None
    tables: frozenset[str] | None = None
    bucket: str | None = None
    key_prefix: str | None = None
    where: Callable[[Call], bool] | None = None
    after: int = 0
    times: int | None = None
    rate: float = 1.0
    seed: int = 0
    matched: int = 0  # matching requests seen
    injected: int = 0  # of which faulted
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def matches(self, call: Call) -> bool:
        if call.service != self.service:
            return False
        if self.operations is not None and call.operation not in self.operations:
            return False
        if self.tables is not None and not any(t in self.tables for t in call.tables):
            return False
        if self.bucket is not None and call.bucket != self.bucket:
            return False
        if self.key_prefix is not None and not (call.key or "").startswith(self.key_prefix):
            return False
        return self.where is None or self.where(call)

    def fires(self) -> bool:
        """Called for a matching request (under the injector's lock)."""
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.injected >= self.times:
            return False
        if self.rate < 1.0 and self._random.random() >= self.rate:
            return False
        self.injected += 1
        return True


@dataclass(frozen=True)
class Seen:
    call: Call
    outcome: str  # "passed" or the fault's name
    thread: str


class AwsFaults:
    """The injector (a context manager; one at a time). ``add`` rules, ``clear`` them to lift
    the faults; ``seen`` lists every AWS request made meanwhile with what it got.

    ``throttle_backoff_s``: botocore waits ``rand() * 2**i`` seconds before the i-th retry of a
    throttled request; the tests scale that base (1 s) down to keep their run short. Whether
    and how often to retry is still botocore's own decision. ``serialize``: moto answers one
    request at a time (DynamoDB's conditional writes are atomic; moto's in-process backend,
    called from several threads at once, does not promise it)."""

    _active: AwsFaults | None = None

    def __init__(self, throttle_backoff_s: float | None = 0.02, serialize: bool = False) -> None:
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.throttle_backoff_s = throttle_backoff_s
        self.serialize = serialize
        self._lock = threading.Lock()
        self._moto_lock = threading.Lock()
        self._stack = contextlib.ExitStack()

    # -- rules
    def add(
        self,
        fault: Fault,
        service: str,
        *,
        operations: set[str] | frozenset[str] | tuple[str, ...] | None = None,
        tables: set[str] | frozenset[str] | tuple[str, ...] | None = None,
        bucket: str | None = None,
        key_prefix: str | None = None,
        where: Callable[[Call], bool] | None = None,
        after: int = 0,
        times: int | None = None,
        rate: float = 1.0,
        seed: int = 0,
    ) -> Rule:
        rule = Rule(
            fault,
            service,
            frozenset(operations) if operations is not None else None,
            frozenset(tables) if tables is not None else None,
            bucket,
            key_prefix,
            where,
            after,
            times,
            rate,
            seed,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def dynamodb(self, fault: Fault, *tables: str, **kw: Any) -> Rule:
        """Every request touching any of ``tables`` (all tables if none given)."""
        return self.add(fault, "dynamodb", tables=set(tables) if tables else None, **kw)

    def s3(self, fault: Fault, bucket: str | None = None, key_prefix: str | None = None, **kw: Any) -> Rule:
        return self.add(fault, "s3", bucket=bucket, key_prefix=key_prefix, **kw)

    def clear(self) -> None:
        """Lift every fault (the services answer normally again)."""
        with self._lock:
            self.rules.clear()

    def calls(self, service: str | None = None, *, table: str | None = None, outcome: str | None = None) -> list[Call]:
        with self._lock:
            seen = list(self.seen)
        return [
            s.call
            for s in seen
            if (service is None or s.call.service == service)
            and (table is None or s.call.touches(table))
            and (outcome is None or s.outcome == outcome)
        ]

    def reset_seen(self) -> None:
        with self._lock:
            self.seen.clear()

    # -- the handler
    def _handle(self, stubber: BotocoreStubber, event_name: str, request: AWSPreparedRequest, **kwargs: Any) -> Any:
        call = parse_call(event_name, request)
        with self._lock:
            rule = next((r for r in self.rules if r.matches(call) and r.fires()), None)
            self.seen.append(Seen(call, rule.fault.name if rule else "passed", threading.current_thread().name))

        def passthrough(req: AWSPreparedRequest) -> AWSResponse:
            with self._moto_lock if self.serialize else contextlib.nullcontext():
                response = _ORIGINAL_CALL(stubber, event_name, req, **kwargs)
            if response is None:  # moto's stubber is off (a moto server): send it over HTTP
                from botocore.httpsession import URLLib3Session

                response = URLLib3Session().send(req)
            return response

        if rule is None:
            with self._moto_lock if self.serialize else contextlib.nullcontext():
                return _ORIGINAL_CALL(stubber, event_name, request, **kwargs)
        return rule.fault.apply(call, request, passthrough)

    def __enter__(self) -> AwsFaults:
        if AwsFaults._active is not None:
            raise RuntimeError("one AwsFaults at a time")
        injector = self

        def patched(stubber: BotocoreStubber, event_name: str, request: AWSPreparedRequest, **kwargs: Any) -> Any:
            return injector._handle(stubber, event_name, request, **kwargs)

        self._stack.enter_context(_patched_attr(BotocoreStubber, "__call__", patched))
        if self.throttle_backoff_s is not None:
            scaled = {**standard.ExponentialBackoff._DEFAULT_BACKOFF_CONFIG}
            scaled["throttling_base_scale"] = self.throttle_backoff_s
            self._stack.enter_context(_patched_attr(standard.ExponentialBackoff, "_DEFAULT_BACKOFF_CONFIG", scaled))
        AwsFaults._active = self
        return self

    def __exit__(self, *exc: object) -> None:
        AwsFaults._active = None
        self.clear()
        self._stack.close()


@contextlib.contextmanager
def _patched_attr(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


# --------------------------------------------------------------------------- moto server
class _Delays:
    """WSGI middleware: requests for which ``rule(method, path)`` returns seconds wait that
    long before moto sees them (an S3 that takes its time to store each object)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rule: Callable[[str, str], float] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        rule = self.rule
        if rule is not None:
            delay = rule(environ.get("REQUEST_METHOD", ""), unquote(environ.get("PATH_INFO", "")))
            if delay:
                time.sleep(delay)
        return self.app(environ, start_response)


class SlowMotoServer(ThreadedMotoServer):
    """moto's threaded server (this process's moto backends, over HTTP), whose requests can be
    delayed: ``server.delay(lambda method, path: seconds)``; ``server.delay(None)`` lifts it."""

    def __init__(self, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.delays: _Delays | None = None

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def _server_entry(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.delays = _Delays(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, self.delays, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def delay(self, rule: Callable[[str, str], float] | None) -> None:
        assert self.delays is not None, "start() first"
        self.delays.rule = rule
