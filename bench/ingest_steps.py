"""Where an ingestion micro-batch spends its time: N generated events pre-loaded into Kafka, drained
by the ingest stream (`--available-now`) in this process, with the sink's per-step timings.

    python -m bench.ingest_steps [--events 2000000] [--seed 42] [--max-offsets 500000] [--topic T] [--scan-dedup]

The sink (`streaming.ingest.IngestSink`) logs each step's duration at DEBUG; this script captures
those lines and reports, per step, the median over the steady batches (full batches after the first,
cold one): bronze append (which also reads the batch from Kafka), validation and tally, dedup against
silver, the quarantine, reconciliation and silver appends. `--topic` reuses a pre-loaded topic (it is
then kept), so two versions of the code can be compared on the same records one after the other.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import tempfile
import uuid
from pathlib import Path

from bench.common import progress, stream_default, write_result
from bench.faults import JARS, RssSampler, lake_settings, reconciliation_totals

_STEP_LINE = re.compile(r"batch (\d+): (.+?)(?: append)? took ([\d.]+)s")


class _StepTimes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.per_batch: dict[int, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _STEP_LINE.fullmatch(record.getMessage())
        if match:
            self.per_batch.setdefault(int(match[1]), {})[match[2]] = float(match[3])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-offsets", type=int, default=stream_default("max_offsets_per_trigger"),
                        help="stream.max_offsets_per_trigger (default: the platform's)")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--topic", default=None, help="a topic already pre-loaded (kept afterwards)")
    parser.add_argument("--scan-dedup", action="store_true",
                        help="stream.keyed_dedup off: each batch scans silver (the dedup until 2026-12-05)")
    args = parser.parse_args(argv)

    from bench.streaming_drain import preload
    from touchpoint.core.config import load_settings, require_kafka
    from touchpoint.core.spark import get_spark
    from touchpoint.infra import kafka
    from touchpoint.streaming.ingest import start_stream

    broker = load_settings(jars_dir=str(JARS))
    require_kafka(broker)
    topic = args.topic or f"bench.steps.{args.seed}.{args.events}.{uuid.uuid4().hex[:6]}"
    result: dict = {"parameters": {**vars(args), "topic": topic, "trigger": "availableNow", "shuffle_partitions": 2}}
    workdir = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    try:
        if args.topic is None:
            kafka.ensure_topic(topic, partitions=args.partitions, settings=broker)
            progress(f"preloading {args.events:,} events into {topic}")
            result["preload"] = preload(topic, broker.kafka_bootstrap, args.events, args.seed)
            progress(f"preloaded {result['preload']['lines']:,} lines")
        settings = lake_settings(workdir / "lake", spark_driver_memory=args.driver_memory,
                                 stream={"max_offsets_per_trigger": args.max_offsets, "starting_offsets": "earliest",
                                         "keyed_dedup": not args.scan_dedup})
        steps = _StepTimes()
        sink_log = logging.getLogger("touchpoint.streaming.ingest")
        sink_log.addHandler(steps)
        sink_log.setLevel(logging.DEBUG)
        with RssSampler(lambda: [os.getpid()]) as memory:
            spark = get_spark("bench-ingest-steps", settings=settings)
            progress("ingesting (available now)")
            query = start_stream(spark, settings, topic=topic, trigger_once=True)
            query.awaitTermination()
            batches = {p["batchId"]: {"rows": p["numInputRows"], "seconds": p["durationMs"]["triggerExecution"] / 1000}
                       for p in query.recentProgress if p["numInputRows"]}
            spark.stop()
        if not batches:
            raise SystemExit(f"no micro-batch read any record from {topic}: preload it or pass a --topic with events")
        # Full batches after the cold first one (the two partitions' offset ranges round, so "full" is 90 %).
        steady = [b for b, info in batches.items() if b > min(batches) and info["rows"] >= 0.9 * args.max_offsets]
        for batch_id in sorted(batches):
            progress(f"batch {batch_id}: {batches[batch_id]['rows']:,} rows in {batches[batch_id]['seconds']:.1f}s; "
                     + ", ".join(f"{step} {s:.1f}s" for step, s in steps.per_batch.get(batch_id, {}).items()))
        step_names = list(dict.fromkeys(name for b in steady for name in steps.per_batch.get(b, {})))
        steady_seconds = sum(batches[b]["seconds"] for b in steady)
        result.update({
            "batches": {str(b): {**info, "steps": steps.per_batch.get(b, {})} for b, info in sorted(batches.items())},
            "steady_batches": len(steady),
            "steady_events_per_second": (round(sum(batches[b]["rows"] for b in steady) / steady_seconds, 1)
                                         if steady else None),
            "median_batch_seconds": round(statistics.median(batches[b]["seconds"] for b in steady), 2) if steady else None,
            "median_step_seconds": {name: round(statistics.median(steps.per_batch[b].get(name, 0.0) for b in steady), 2)
                                    for name in step_names},
            "reconciliation": reconciliation_totals(settings),
            "peak_rss_mb": memory.peaks_mb,
            "peak_anon_rss_mb": memory.peaks_anon_mb,
        })
        if "preload" in result:
            p = result["preload"]
            result["exact"] = result["reconciliation"] == {
                "bronze": p["lines"], "silver": p["expected_silver"], "quarantine": p["expected_quarantine"],
                "duplicates": p["expected_duplicates"]}
        progress(f"steady: {result['steady_events_per_second']} events/s; median steps {result['median_step_seconds']}")
    finally:
        if args.topic is None:
            kafka.delete_topic(topic, settings=broker)
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("ingest_steps", result)
    return result


if __name__ == "__main__":
    main()
