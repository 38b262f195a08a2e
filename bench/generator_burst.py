"""How fast the generator sends during a burst, alone on the machine (no streams), by how it runs.

    python -m bench.generator_burst [--rate 5000] [--burst-factor 10] [--burst-seconds 20]
                                    [--steady-seconds 30] [--repeat 2]

Why it matters: `bench.freshness` asks for a 10x burst of its 5,000 lines/s, and one Python process
simulating each line as it sends it makes about 30,000 lines/s (bench.generator_producer: 31 µs of
CPU a line). A burst it cannot send is not measured.

Each run paces the generator in real time into a fresh Kafka topic: `--rate` lines/s for
`--steady-seconds`, then `--burst-factor` x for `--burst-seconds`, and it stops at the burst's end.
At the base rate the pacer is never behind, so the burst's lines are the run's lines minus
rate x steady seconds (the pacer sends line n at its due time, never before); the burst rate is
those over the burst's seconds. Variants, all in each round (the order alternates):
- `one_process`: one process, each line simulated as it is sent (the generator before 2026-12-06);
- `one_process_lookahead`: one process that simulated up to the burst's lines ahead while its
  pacing waited (`iter_records(lookahead=...)`);
- `two_processes_lookahead`: two processes, each a shard of the customers at half the rate, each
  with half the lookahead (`generate(processes=2)`).
Also the CPU seconds of the whole run (this process and the children it reaped) per line sent.
Every run is checked: the topic's offsets grow by exactly the lines its report counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid

from bench.collector_load import topic_records
from bench.common import own_cpu_seconds, progress, realtime_traffic, write_result
from bench.faults import RssSampler

VARIANTS = {"one_process": (1, False), "one_process_lookahead": (1, True), "two_processes_lookahead": (2, True)}


def burst_run(config, bootstrap: str, topic: str, args, processes: int, lookahead: int) -> dict:
    from touchpoint.generator import generate

    cpu_before, sent_before = own_cpu_seconds(), topic_records(bootstrap, topic)
    report = generate(config, output="kafka", topic=topic, bootstrap=bootstrap, rate=args.rate,
                      burst_factor=args.burst_factor, burst_start=args.steady_seconds,
                      burst_seconds=args.burst_seconds, duration=args.steady_seconds + args.burst_seconds,
                      processes=processes, lookahead=lookahead)
    cpu = own_cpu_seconds() - cpu_before
    in_topic = topic_records(bootstrap, topic) - sent_before
    if in_topic != report["lines"]:
        raise RuntimeError(f"the topic gained {in_topic:,} records, the generator counted {report['lines']:,}")
    burst_lines = report["lines"] - round(args.rate * args.steady_seconds)
    return {"lines": report["lines"], "burst_lines": burst_lines,
            "burst_lines_per_second": round(burst_lines / args.burst_seconds),
            "cpu_us_per_line": round(cpu / report["lines"] * 1e6, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--burst-factor", type=float, default=10)
    parser.add_argument("--burst-seconds", type=float, default=20)
    parser.add_argument("--steady-seconds", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--customers", type=int, default=200_000)
    args = parser.parse_args(argv)

    from touchpoint.core.config import load_settings, require_kafka
    from touchpoint.infra import kafka

    settings = load_settings()
    require_kafka(settings)
    bootstrap = settings.kafka_bootstrap
    topic = f"bench.generator-burst.{args.seed}.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topic(topic, settings=settings)
    config = realtime_traffic(args.seed, args.customers)
    lookahead = int(args.rate * args.burst_factor * args.burst_seconds)
    result: dict = {"parameters": {**vars(args), "topic": topic, "lookahead": lookahead}}
    rounds: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        with RssSampler(roots=lambda: [os.getpid()]) as sampler:
            for attempt in range(args.repeat):
                order = list(VARIANTS) if attempt % 2 == 0 else list(VARIANTS)[::-1]
                for name in order:
                    processes, ahead = VARIANTS[name]
                    run = burst_run(config, bootstrap, topic, args, processes, lookahead if ahead else 0)
                    rounds[name].append(run)
                    progress(f"round {attempt + 1} {name}: {run['burst_lines_per_second']:,} lines/s in the burst "
                             f"(asked {args.rate * args.burst_factor:,.0f}); {run['cpu_us_per_line']} µs of CPU a "
                             "line over the run")
        result["rounds"] = rounds
        result["median"] = {name: {"burst_lines_per_second": round(statistics.median(
                                       r["burst_lines_per_second"] for r in runs)),
                                   "cpu_us_per_line": round(statistics.median(r["cpu_us_per_line"] for r in runs), 2)}
                            for name, runs in rounds.items()}
        result["requested_burst_lines_per_second"] = round(args.rate * args.burst_factor)
        result["peak_rss_mb"] = sampler.peaks_mb
    finally:
        kafka.delete_topic(topic, settings=settings)
    progress(f"medians: {result['median']}")
    write_result("generator_burst", result)
    return result


if __name__ == "__main__":
    main()
