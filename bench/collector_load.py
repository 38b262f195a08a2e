"""Loopback load test of the HTTP collector: requests/s, events/s, latency percentiles and the
collector's CPU per event, with its producer (librdkafka) against the kafka-python one it had.

    .venv/bin/python -m bench.collector_load [--duration 20] [--concurrency 16] [--batch-size 10]
                                             [--single-share 0.2] [--invalid-rate 0.02] [--seed 7]
                                             [--producer both|librdkafka|kafka-python] [--rounds 2]

Starts the collector as its own process (its own GIL, as deployed) on a free loopback port,
producing to a fresh topic of the running broker (`touchpoint up`), and drives it from this
process with `concurrency` asyncio workers over keep-alive HTTP/1.1 connections for `duration`
seconds. A share `single_share` of requests carries one event, the others a JSON array of
`batch_size`; `invalid_rate` of the events have no identifier, so they are answered "rejected"
and still produced for quarantine. Event contents come from a fixed seed.

`--producer both` (the default) runs `rounds` rounds, each of the two collectors once, in
alternating order: `touchpoint collect` (librdkafka, `touchpoint.collector.KafkaSink`) and the same
app on `KafkaPythonSink` below (the kafka-python producer the collector had until session 35, kept
here as the baseline). Latency is measured per request, from send to the 202, which the collector
returns only after the broker acked every record (acks=all). The collector process's CPU seconds
(user + system) are sampled around the load. After each round the topic's end offsets must equal
the events the collector reported as stored. The load's client (this process) takes its share of
the same 2 cores (`client_cpu_seconds`), so events/s is a floor for the collector; its CPU per
event is the comparison. Writes bench/results/collector_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from bench.common import progress, write_result

API_KEY = "bench-load-key-0123456789"
EVENT_TYPES = ("page_view", "page_view", "page_view", "ad_click", "email_click", "add_to_cart", "order")


def make_event(rng: random.Random, number: int, invalid_rate: float) -> dict:
    event_type = rng.choice(EVENT_TYPES)
    event = {"event_id": f"load-{number}", "event_type": event_type,
             "event_ts": f"2026-03-01T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
             "anonymous_id": f"device-{rng.randrange(5000)}",
             "context": {"page_url": f"https://shop.example/p/{rng.randrange(300)}?utm_source=google&utm_medium=cpc",
                         "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0", "country": "DE"}}
    if event_type == "order":
        event["properties"] = {"order_id": f"order-{number}", "revenue": round(rng.uniform(5, 300), 2),
                               "currency": "EUR"}
    if rng.random() < invalid_rate:
        del event["anonymous_id"]  # no identifier: rejected, produced for quarantine
    return event


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


async def drive(url: str, args: argparse.Namespace) -> dict:
    import httpx

    rng = random.Random(args.seed)
    next_id = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counts = {"requests": 0, "events_sent": 0, "accepted": 0, "rejected": 0}
    deadline = time.monotonic() + args.duration
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    def next_body() -> tuple[bytes, int]:
        nonlocal next_id
        size = 1 if rng.random() < args.single_share else args.batch_size
        events = [make_event(rng, next_id + i, args.invalid_rate) for i in range(size)]
        next_id += size
        return json.dumps(events[0] if size == 1 else events).encode(), size

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            body, size = next_body()
            started = time.perf_counter()
            response = await client.post("/v1/events", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            counts["requests"] += 1
            counts["events_sent"] += size
            if response.status_code == 202:
                answer = response.json()
                counts["accepted"] += answer["accepted"]
                counts["rejected"] += answer["rejected"]

    async def report_progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            progress(f"{counts['requests']} requests, {counts['accepted'] + counts['rejected']} events stored")

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        ticker = asyncio.create_task(report_progress())
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        ticker.cancel()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    stored = counts["accepted"] + counts["rejected"]
    return {
        **counts, "elapsed_s": round(elapsed, 3), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "requests_per_s": round(counts["requests"] / elapsed, 1), "events_per_s": round(stored / elapsed, 1),
        "latency_ms": {name: round(1000 * percentile(ordered, q), 2)
                       for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))},
    }


def topic_records(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        numbers = consumer.partitions_for_topic(topic)
        for _ in range(20):  # None while the client's metadata lacks the topic, as on a loaded machine
            if numbers:
                break
            time.sleep(0.25)
            numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise ValueError(f"topic {topic!r} has no partitions at {bootstrap}: does it exist?")
        partitions = [TopicPartition(topic, p) for p in numbers]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


class KafkaPythonSink:
    """The collector's producer until session 35 (kafka-python), the baseline: `send` returns only
    once the broker acked every record."""

    def __init__(self, settings, topic: str):
        from kafka import KafkaProducer

        self.topic = topic
        self.timeout = settings.collector.produce_timeout_seconds
        self.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
            max_request_size=2_000_000, request_timeout_ms=int(self.timeout * 1000),
            max_block_ms=int(self.timeout * 1000), client_id="touchpoint-collector",
        )

    def send(self, records, timestamp_ms: int) -> None:
        futures = [self.producer.send(self.topic, value=r.value, key=r.key, timestamp_ms=timestamp_ms)
                   for r in records]
        deadline = time.monotonic() + self.timeout
        for future in futures:
            future.get(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.producer.flush(timeout=self.timeout)
        self.producer.close(timeout=self.timeout)


def serve_baseline(port: int, topic: str) -> None:
    """The collector app on the kafka-python producer, served like `touchpoint collect` serves it."""
    import uvicorn

    from touchpoint.collector import create_app
    from touchpoint.core.config import get_settings

    settings = get_settings()
    sink = KafkaPythonSink(settings, topic)
    try:
        uvicorn.run(create_app(settings, topic=topic, sink=sink), host="127.0.0.1", port=port, log_level="info",
                    access_log=False)
    finally:
        sink.close()


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the collector exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the collector did not answer /healthz in time")


PRODUCERS = ("librdkafka", "kafka-python")


def one_round(args: argparse.Namespace, settings, producer: str) -> dict:
    """One collector process with `producer` on a fresh topic, driven for `args.duration` seconds."""
    from bench.faults import RssSampler
    from touchpoint.infra import kafka

    topic = f"bench.collector.{uuid.uuid4().hex[:10]}"
    kafka.ensure_topic(topic, settings=settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TOUCHPOINT_COLLECTOR__API_KEYS": f"bench={API_KEY}",
           "TOUCHPOINT_COLLECTOR__RATE_PER_SECOND": "1000000", "TOUCHPOINT_COLLECTOR__RATE_BURST": "1000000"}
    command = ([sys.executable, "-m", "touchpoint", "collect", "--port", str(port), "--topic", topic]
               if producer == "librdkafka" else
               [sys.executable, "-m", "bench.collector_load", "--serve-kafka-python", str(port), "--topic", topic])
    progress(f"starting the collector ({producer}) on {url} -> topic {topic}")
    # Its log goes to a file: a pipe nobody reads would stop the server once full.
    server_log = tempfile.NamedTemporaryFile(prefix="collector-", suffix=".log", delete=False)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        try:
            wait_until_up(url, server)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; its log: {server_log.name}") from None
        progress(f"driving {args.concurrency} workers for {args.duration}s, batches of {args.batch_size}")
        with RssSampler(lambda: [server.pid]) as memory:
            cpu_before, client_before = memory.cpu_by_root().get(server.pid, 0.0), time.process_time()
            measured = asyncio.run(drive(url, args))
            cpu_used = memory.cpu_by_root().get(server.pid, 0.0) - cpu_before
            client_cpu = time.process_time() - client_before
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    os.unlink(server_log.name)  # kept only when the round failed
    in_kafka = topic_records(settings.kafka_bootstrap, topic)
    kafka.delete_topic(topic, settings=settings)
    stored = measured["accepted"] + measured["rejected"]
    cpu_us = round(1e6 * cpu_used / stored, 1) if stored else None
    progress(f"{producer}: {measured['requests_per_s']} requests/s, {measured['events_per_s']} events/s, "
             f"p99 {measured['latency_ms']['p99']} ms, collector CPU {cpu_us} µs/event; "
             f"{in_kafka} records in Kafka for {stored} stored")
    return {"producer": producer, **measured, "collector_cpu_seconds": round(cpu_used, 1),
            "client_cpu_seconds": round(client_cpu, 1),
            "collector_cpu_us_per_event": cpu_us, "collector_peak_rss_mb": memory.peaks_mb,
            "records_in_kafka": in_kafka, "all_stored_in_kafka": in_kafka == stored}


def run(args: argparse.Namespace) -> dict:
    from statistics import median

    from touchpoint.core.config import get_settings, require_kafka

    settings = get_settings()
    require_kafka(settings)
    producers = PRODUCERS if args.producer == "both" else (args.producer,)
    rounds = []
    for number in range(args.rounds):
        order = producers if number % 2 == 0 else tuple(reversed(producers))
        rounds += [one_round(args, settings, producer) for producer in order]
    medians = {}
    for producer in producers:
        mine = [r for r in rounds if r["producer"] == producer]
        medians[producer] = {
            "requests_per_s": round(median(r["requests_per_s"] for r in mine), 1),
            "events_per_s": round(median(r["events_per_s"] for r in mine), 1),
            "latency_p50_ms": round(median(r["latency_ms"]["p50"] for r in mine), 2),
            "latency_p99_ms": round(median(r["latency_ms"]["p99"] for r in mine), 2),
            "collector_cpu_us_per_event": round(median(r["collector_cpu_us_per_event"] for r in mine), 1),
        }
    params = {k: v for k, v in vars(args).items() if k not in ("serve_kafka_python", "topic")}
    # The collector process's peak per producer (the load's client is this process, not counted).
    peaks = {f"collector_{producer.replace('-', '_')}": max(sum(r["collector_peak_rss_mb"].values())
                                                              for r in rounds if r["producer"] == producer)
             for producer in producers}
    return {"params": params, "rounds": rounds, "peak_rss_mb": peaks, "median": medians,
            "all_stored_in_kafka": all(r["all_stored_in_kafka"] for r in rounds)}


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    options.add_argument("--concurrency", type=int, default=16, help="concurrent client workers")
    options.add_argument("--batch-size", type=int, default=10, help="events per batch request")
    options.add_argument("--single-share", type=float, default=0.2, help="share of single-event requests")
    options.add_argument("--invalid-rate", type=float, default=0.02, help="share of events without an identifier")
    options.add_argument("--seed", type=int, default=7)
    options.add_argument("--producer", choices=("both", *PRODUCERS), default="both",
                         help="the collector's producer, or both in alternating rounds")
    options.add_argument("--rounds", type=int, default=2, help="rounds (each producer once per round)")
    options.add_argument("--serve-kafka-python", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options.add_argument("--topic", help=argparse.SUPPRESS)
    return options


def main(argv: list[str] | None = None) -> dict | None:
    args = parser().parse_args(argv)
    if args.serve_kafka_python is not None:  # a baseline collector process of one_round
        serve_baseline(args.serve_kafka_python, args.topic)
        return None
    result = run(args)
    write_result("collector_load", result)
    if not result["all_stored_in_kafka"]:
        raise SystemExit("the collector reported events as stored that are not in Kafka")
    return result


if __name__ == "__main__":
    main()
