"""HTTP collector: `POST /v1/events` -> Kafka `events.raw` (docs/COLLECTOR.md).

A source like the generator: it feeds the raw topic and the ingest stream does the rest. Each
event is judged by `touchpoint.core.events.validate_payload`, the very function the ingest stream
runs, so the per-event answer equals what silver will do. Accepted *and* rejected events are
produced to the topic: the stream re-validates and puts the rejected ones in silver.quarantine with
the same code, so nothing a client sent inside the size limit is ever dropped. The 202 is sent only
after the broker acknowledged every record (acks=all; the producer is librdkafka's).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from touchpoint.core.config import Settings, parse_source_keys
from touchpoint.core.events import Rejected, validate_payload

log = logging.getLogger(__name__)

# The collector writes the authenticated source name into every JSON object it forwards, here.
SOURCE_FIELD = "collector_source"
API_KEY_HEADER = "x-api-key"


# ---- API keys -------------------------------------------------------------------------------------

def load_api_keys(settings: Settings) -> dict[str, str]:
    """source -> key from `collector.api_keys` and the `collector.api_keys_file` (the file wins)."""
    keys = {source: secret.get_secret_value() for source, secret in settings.collector.api_keys.items()}
    if settings.collector.api_keys_file is not None:
        path = Path(settings.collector.api_keys_file).expanduser()
        keys.update(parse_source_keys(path.read_text(), f"keys file {path}"))
    return keys


class KeyRing:
    """Finds the source of a presented key in constant time: every stored key is compared, always,
    and the comparison runs on SHA-256 digests so the key lengths do not leak either."""

    def __init__(self, keys: dict[str, str]):
        self._digests = [(source, hashlib.sha256(key.encode()).digest()) for source, key in keys.items()]

    def __len__(self) -> int:
        return len(self._digests)

    def source_of(self, presented: str | None) -> str | None:
        candidate = hashlib.sha256((presented or "").encode()).digest()
        found = None
        for source, digest in self._digests:
            if hmac.compare_digest(candidate, digest) and presented:
                found = source
        return found


# ---- rate limiting --------------------------------------------------------------------------------

@dataclass
class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; one request takes one token."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.updated = float(self.burst), self.clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


# ---- request -> Kafka records ---------------------------------------------------------------------

@dataclass(frozen=True)
class OutgoingRecord:
    value: bytes
    key: bytes | None
    result: dict[str, Any]  # this record's entry in the response


class BadRequest(Exception):
    def __init__(self, status: int, code: str, reason: str):
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True)
class Batch:
    records: list[OutgoingRecord]
    parsed: bool  # False: the body was not JSON and is forwarded raw as one record


def records_for_body(body: bytes, source: str, arrival: dt.datetime, settings: Settings) -> Batch:
    """The Kafka records one request body becomes, each with its accept/reject verdict.

    A JSON object is one event and a JSON array a batch of events. A body that is not JSON at
    all becomes one record of the raw bytes, so the stream quarantines it with its reason.
    """
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Batch([_record(0, body, None, arrival, settings)], parsed=False)
    except RecursionError:
        # Not forwarded: the validator would hit the same recursion limit inside the ingest stream.
        raise BadRequest(400, "too_deeply_nested", "the JSON nests deeper than the parser allows; "
                         "nothing was stored") from None
    if isinstance(parsed, list):
        if not parsed:
            raise BadRequest(400, "empty_batch", "the batch holds no events")
        if len(parsed) > settings.collector.max_batch_events:
            raise BadRequest(413, "batch_too_large", f"the batch holds {len(parsed)} events, "
                             f"the limit is {settings.collector.max_batch_events}; nothing was stored")
        events = parsed
    else:
        events = [parsed]
    records = []
    for index, event in enumerate(events):
        if isinstance(event, dict):
            event = {**event, SOURCE_FIELD: source}
        value = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        records.append(_record(index, value, event if isinstance(event, dict) else None, arrival, settings))
    return Batch(records, parsed=True)


def _record(index: int, value: bytes, event: dict | None, arrival: dt.datetime,
            settings: Settings) -> OutgoingRecord:
    outcome = validate_payload(value, arrival, settings.reporting_currency)
    if isinstance(outcome, Rejected):
        result = {"index": index, "event_id": outcome.event_id, "status": "rejected", "code": outcome.code,
                  "reason": outcome.reason}
    else:
        result = {"index": index, "event_id": outcome["event_id"], "status": "accepted"}
    return OutgoingRecord(value, _partition_key(event), result)


def _partition_key(event: dict | None) -> bytes | None:
    """Key by device (or user, else event id) like the generator, so one device's events stay in order."""
    if not event:
        return None
    for name in ("anonymous_id", "user_id", "event_id"):
        value = event.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().encode("utf-8")
    return None


# ---- the app --------------------------------------------------------------------------------------

class _Acks:
    """Delivery reports of one request's records: done when each has one, holding the first error."""

    def __init__(self, expected: int):
        self.outstanding = expected
        self.error: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        if expected == 0:
            self._done.set()

    def report(self, error, _message) -> None:
        with self._lock:
            if error is not None and self.error is None:
                self.error = str(error)
            self.outstanding -= 1
            if self.outstanding == 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class KafkaSink:
    """The collector's producer: librdkafka, idempotent with acks=all (core.kafka_producer). `send`
    returns only once the broker acked every record of the request, and raises when one failed or
    the acks took longer than `produce_timeout_seconds`. The server's worker threads send at once;
    one thread of the sink serves librdkafka's delivery reports for all of them."""

    def __init__(self, settings: Settings, topic: str | None = None):
        from confluent_kafka import Producer

        from touchpoint.core.kafka_producer import producer_config, topic_partitions

        self.topic = topic or settings.kafka_topic
        self.timeout = settings.collector.produce_timeout_seconds
        timeout_ms = max(10, int(self.timeout * 1000))  # librdkafka wants it above linger.ms
        self.producer = Producer(producer_config(
            settings.kafka_bootstrap, linger_ms=2, client_id="touchpoint-collector",
            # A record not acked in time fails its request (503, the client resends) instead of
            # being retried long after the answer.
            message_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
            # Java's and kafka-python's partitioner (murmur2 of the key): a device keeps the
            # partition earlier collectors gave it, so its events stay in order.
            partitioner="murmur2_random"))
        # A missing topic or an unreachable broker stops the start, not the first request.
        topic_partitions(self.producer, self.topic, settings.kafka_bootstrap, self.timeout)
        self._closing = threading.Event()
        self._reports = threading.Thread(target=self._serve_reports, name="collector-delivery-reports", daemon=True)
        self._reports.start()

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.1)  # returns at once when a report is there; runs its callback here

    def send(self, records: list[OutgoingRecord], timestamp_ms: int) -> None:
        acks = _Acks(len(records))
        deadline = time.monotonic() + self.timeout
        for record in records:
            while True:
                try:
                    self.producer.produce(self.topic, record.value, record.key, timestamp=timestamp_ms,
                                          on_delivery=acks.report)
                    break
                except BufferError:  # librdkafka's queue is full: the reports thread empties it
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"the producer's queue stayed full for {self.timeout:g}s") from None
                    time.sleep(0.005)
        if not acks.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"the broker did not ack {acks.outstanding} of {len(records)} records "
                               f"within {self.timeout:g}s")
        if acks.error is not None:
            raise RuntimeError(f"Kafka did not store every record: {acks.error}")

    def close(self) -> None:
        self._closing.set()
        self._reports.join()
        self.producer.flush(self.timeout)  # serves the last reports itself


class Collector:
    def __init__(self, settings: Settings, sink: KafkaSink | None = None, topic: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.keys = KeyRing(load_api_keys(settings))
        if not len(self.keys):
            raise ValueError("no API keys configured: set TOUCHPOINT_COLLECTOR__API_KEYS='source=key,...' "
                             "or collector.api_keys_file (see docs/COLLECTOR.md)")
        self.topic = topic
        self.sink = sink
        self._owns_sink = sink is None
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.buckets_lock = threading.Lock()
        self.app = Starlette(
            routes=[Route("/v1/events", self.post_events, methods=["POST"]),
                    Route("/healthz", self.health, methods=["GET"])],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        # The producer connects at startup, so the first request does not pay for the metadata fetch
        # and a missing topic stops the start.
        if self._owns_sink:
            try:
                self.sink = await run_in_threadpool(KafkaSink, self.settings, self.topic)
            except Exception as error:
                app.state.startup_error = error  # for running_in_thread's message; uvicorn logs it too
                raise
        try:
            yield
        finally:
            if self._owns_sink:
                await run_in_threadpool(self.sink.close)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "kafka": self.sink is not None})

    def _bucket(self, source: str) -> TokenBucket:
        with self.buckets_lock:
            if source not in self.buckets:
                limits = self.settings.collector
                self.buckets[source] = TokenBucket(limits.rate_per_second, limits.rate_burst, self.clock)
            return self.buckets[source]

    async def post_events(self, request: Request) -> JSONResponse:
        presented = request.headers.get(API_KEY_HEADER)
        if presented is None and request.headers.get("authorization", "").lower().startswith("bearer "):
            presented = request.headers["authorization"][7:].strip()
        source = self.keys.source_of(presented)
        if source is None:
            return _error(401, "unauthorized", "missing or unknown API key", {"WWW-Authenticate": "Bearer"})
        wait = self._bucket(source).take()
        if wait > 0:
            return _error(429, "rate_limited", f"rate limit of source {source!r} exceeded",
                          {"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            body = await _read_limited(request, self.settings.collector.max_request_bytes)
        except BadRequest as error:
            return _error(error.status, error.code, error.reason)
        # One arrival instant for the verdict and the Kafka timestamp, so the stream judges alike.
        arrival_ms = int(time.time() * 1000)
        arrival = dt.datetime.fromtimestamp(arrival_ms / 1000, dt.timezone.utc)
        try:
            # Validation is CPU work: off the event loop, so small requests are not held up behind a batch.
            batch = await run_in_threadpool(records_for_body, body, source, arrival, self.settings)
        except BadRequest as error:
            return _error(error.status, error.code, error.reason)
        try:
            await run_in_threadpool(self.sink.send, batch.records, arrival_ms)
        except Exception as error:  # broker down or slow: the client retries, event_id dedup absorbs resends
            log.warning("collector: produce failed for source %s: %s: %s", source, error.__class__.__name__, error)
            return _error(503, "kafka_unavailable", "the events could not be stored; retry later",
                          {"Retry-After": "1"})
        results = [r.result for r in batch.records]
        accepted = sum(r["status"] == "accepted" for r in results)
        log.info("collector: source=%s accepted=%d rejected=%d", source, accepted, len(results) - accepted)
        if not batch.parsed:
            # Not JSON: a client error, stored in quarantine all the same; resending cannot help.
            return JSONResponse({"error": results[0]["code"], "reason": results[0]["reason"],
                                 "stored": "quarantine", "accepted": 0, "rejected": 1, "results": results},
                                status_code=400)
        return JSONResponse({"accepted": accepted, "rejected": len(results) - accepted, "results": results},
                            status_code=202)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing anything over `limit` before reading it where Content-Length tells."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, "bad_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise BadRequest(413, "request_too_large", f"the body is {declared} bytes, the limit is {limit}; "
                             "nothing was stored")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked bodies carry no Content-Length
                raise BadRequest(413, "request_too_large", f"the body exceeds the limit of {limit} bytes; "
                                 "nothing was stored")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest(400, "client_disconnected", "the body ended early") from None
    body = b"".join(chunks)
    if not body:
        raise BadRequest(400, "empty_body", "the request has no body")
    return body


def _error(status: int, code: str, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


def create_app(settings: Settings, topic: str | None = None, sink: KafkaSink | None = None) -> Starlette:
    return Collector(settings, sink=sink, topic=topic).app


def serve(settings: Settings, host: str | None = None, port: int | None = None, topic: str | None = None) -> None:
    """Run the collector with uvicorn until interrupted."""
    import uvicorn

    app = create_app(settings, topic=topic)
    uvicorn.run(app, host=host or settings.collector.host, port=port if port is not None else settings.collector.port,
                log_level="info", access_log=False)


@contextlib.contextmanager
def running_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
    """A real uvicorn server for `app` in a background thread (tests, the load benchmark): yields
    its base URL; port 0 takes a free port."""
    import socket

    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))

    def serve() -> None:
        try:
            server.run(sockets=[listener])
        except SystemExit:  # uvicorn exits when the app's startup fails: reported below
            pass

    thread = threading.Thread(target=serve, name="collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            listener.close()
            reason = getattr(app.state, "startup_error", None)
            raise RuntimeError(f"the collector did not start: {reason}" if reason is not None else
                               "the collector did not start (is Kafka up? see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout)
        listener.close()
