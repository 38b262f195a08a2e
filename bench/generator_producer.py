"""The generator's CPU per line into Kafka: its producer (`touchpoint.generator.KafkaSink`, librdkafka
through confluent-kafka, since 2026-12-05) against the kafka-python producer it used before, set up as
that one was (idempotent, acks=all, lz4, linger 20 ms, 256 KiB batches, partition = CRC-32 of the key).

    python -m bench.generator_producer [--lines 200000] [--rate 5000] [--seconds 80]
                                       [--warmup-lines 200000] [--repeat 3]

Why it matters: the freshness benchmark runs the generator on the same 2 cores as the broker and the
streams, so every CPU-second it spends is taken from ingestion and the speed layer.

Three measures, CPU time of this process (the producers' own threads included), per line:
- `generation`: the seeded simulation and its serialised payloads alone, no sink;
- `bulk`: the pre-generated lines sent as fast as the producer takes them (a preload);
- `realtime`: the generator paced at `--rate` lines/s for `--seconds` (as in `bench.freshness`),
  generation included, over the lines after the first `--warmup-lines` (the simulation's start
  schedules its first sessions: about 80 µs a line for the first 200,000 lines, with no sink);
  small batches, so a producer's per-request costs show. The whole run's figure is reported too.
Both producers run in each round, alternating which goes first; medians over `--repeat` rounds.
Every send is checked: the topic's offsets grow by exactly the lines sent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
import zlib
from itertools import islice

from bench.collector_load import topic_records
from bench.common import progress, realtime_traffic, write_result
from bench.faults import RssSampler

PRODUCERS = ("confluent_kafka", "kafka_python")
NO_SINK = "no_sink"  # the paced generator alone: what the producers add to it


class KafkaPythonSink:
    """The generator's producer before 2026-12-05, for comparison only."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaProducer

        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                      compression_type="lz4", linger_ms=20, batch_size=256 * 1024,
                                      max_request_size=2_000_000, request_timeout_ms=60_000,
                                      delivery_timeout_ms=300_000, max_block_ms=20_000)
        self.partitions = sorted(self.producer.partitions_for(topic))
        self.errors: list[str] = []

    def write(self, record) -> None:
        partition = self.partitions[zlib.crc32(record.key) % len(self.partitions)]
        self.producer.send(self.topic, value=record.payload, key=record.key, partition=partition).add_errback(
            lambda error: self.errors.append(repr(error)))

    def close(self) -> dict:
        self.producer.flush()
        self.producer.close()
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} records not delivered: {self.errors[:3]}")
        return {}


def open_sink(producer: str, bootstrap: str, topic: str):
    from touchpoint.generator import KafkaSink

    if producer == "confluent_kafka":
        return KafkaSink(bootstrap, topic, "lz4", arrival_timestamps=False)
    return KafkaPythonSink(bootstrap, topic)


def bulk(producer: str, bootstrap: str, topic: str, records: list) -> float:
    """CPU µs per line to send pre-generated lines."""
    started = time.process_time()
    sink = open_sink(producer, bootstrap, topic)
    for record in records:
        sink.write(record)
    sink.close()
    return (time.process_time() - started) / len(records) * 1e6


def realtime(producer: str, bootstrap: str, topic: str, config, rate: float, seconds: float,
             warmup_lines: int) -> dict:
    """CPU µs per line of the paced generator (generation included): over the lines after the first
    `warmup_lines` (the steady state) and over the whole run; and the rate it achieved."""
    from touchpoint.generator import GenerationReport, Pacer, iter_records

    report = GenerationReport()
    sink = open_sink(producer, bootstrap, topic) if producer != NO_SINK else None
    pacer = Pacer(rate, duration=seconds)
    started, wall = time.process_time(), time.monotonic()
    warm, lines = None, 0
    for record in iter_records(config, report, clock=pacer, stop=pacer.expired):
        if sink is not None:
            sink.write(record)
        lines += 1
        if lines == warmup_lines:
            warm = time.process_time()
    if sink is not None:
        sink.close()
    ended = time.process_time()
    if warm is None:
        raise ValueError(f"{lines:,} lines in {seconds:.0f}s: fewer than --warmup-lines {warmup_lines:,}")
    return {"cpu_us_per_line": round((ended - warm) / (lines - warmup_lines) * 1e6, 2),
            "whole_run_cpu_us_per_line": round((ended - started) / lines * 1e6, 2), "lines": lines,
            "lines_per_second": round(lines / (time.monotonic() - wall))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=80)
    parser.add_argument("--warmup-lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--customers", type=int, default=200_000)
    args = parser.parse_args(argv)

    from touchpoint.core.config import load_settings, require_kafka
    from touchpoint.generator import GenerationReport, iter_records
    from touchpoint.infra import kafka

    settings = load_settings()
    require_kafka(settings)
    bootstrap = settings.kafka_bootstrap
    topic = f"bench.generator.{args.seed}.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topic(topic, settings=settings)
    config = realtime_traffic(args.seed, args.customers)
    result: dict = {"parameters": {**vars(args), "topic": topic, "compression": "lz4"}}
    try:
        with RssSampler(roots=lambda: [os.getpid()]) as sampler:
            started = time.process_time()
            records = list(islice(iter_records(config, GenerationReport()), args.lines))
            generation = (time.process_time() - started) / len(records) * 1e6
            progress(f"generated {len(records):,} lines: {generation:.1f} µs of CPU a line")
            sent = 0
            rounds: dict[str, dict[str, list]] = {p: {"bulk": [], "realtime": []} for p in PRODUCERS}
            rounds[NO_SINK] = {"realtime": []}
            for attempt in range(args.repeat):
                order = PRODUCERS if attempt % 2 == 0 else PRODUCERS[::-1]
                for producer in order:
                    cost = bulk(producer, bootstrap, topic, records)
                    sent += len(records)
                    rounds[producer]["bulk"].append(round(cost, 2))
                    paced = realtime(producer, bootstrap, topic, config, args.rate, args.seconds, args.warmup_lines)
                    sent += paced["lines"]
                    rounds[producer]["realtime"].append(paced)
                    progress(f"round {attempt + 1} {producer}: bulk {cost:.1f} µs/line; real time "
                             f"{paced['cpu_us_per_line']} µs/line after the warm-up ({paced['whole_run_cpu_us_per_line']} over "
                             f"the run) at {paced['lines_per_second']:,}/s")
                paced = realtime(NO_SINK, bootstrap, topic, config, args.rate, args.seconds, args.warmup_lines)
                rounds[NO_SINK]["realtime"].append(paced)
                progress(f"round {attempt + 1} no sink: real time {paced['cpu_us_per_line']} µs/line after the warm-up")
            in_topic = topic_records(bootstrap, topic)
            if in_topic != sent:
                raise RuntimeError(f"the topic holds {in_topic:,} records, {sent:,} were sent")
        result["generation_cpu_us_per_line"] = round(generation, 2)
        result["rounds"] = rounds
        result["median_cpu_us_per_line"] = {
            p: {**({"bulk": round(statistics.median(rounds[p]["bulk"]), 2)} if p in PRODUCERS else {}),
                "realtime": round(statistics.median(r["cpu_us_per_line"] for r in rounds[p]["realtime"]), 2)}
            for p in (*PRODUCERS, NO_SINK)}
        result["records_in_topic"] = in_topic
        result["peak_rss_mb"] = sampler.peaks_mb
    finally:
        kafka.delete_topic(topic, settings=settings)
    medians = result["median_cpu_us_per_line"]
    progress(f"CPU µs per line: {medians}")
    write_result("generator_producer", result)
    return result


if __name__ == "__main__":
    main()
