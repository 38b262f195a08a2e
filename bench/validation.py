"""The per-record validator alone (`core.events.validate_payload`), on one core, no Spark.

    python -m bench.validation [--lines 50000] [--repeat 3] [--malformed-rate 0.02] [--seed 42]

Validation runs once per record in ingestion's `mapInArrow` (and in the HTTP collector), so its
lines/s on one core bound what each executor core can ingest. The payloads are the generator's
(seeded, with `--malformed-rate` garbage lines); they are generated first and not timed. Reports the
median lines/s over `--repeat` passes, and the share of a pass spent in `check_structure` (JSON
types of every envelope field), timed alone on the decoded events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time

from bench.common import progress, write_result
from bench.faults import RssSampler


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--malformed-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from itertools import islice

    from touchpoint.core.events import Rejected, check_structure, decode, validate_payload
    from touchpoint.generator import GeneratorConfig, iter_records

    config = GeneratorConfig(seed=args.seed, customers=max(10, args.lines // 20), days=2, start_date="2026-03-01",
                             events_per_customer=20, malformed_rate=args.malformed_rate)
    payloads = [record.payload for record in islice(iter_records(config), args.lines)]
    arrival = dt.datetime(2026, 3, 3, tzinfo=dt.timezone.utc)
    progress(f"generated {len(payloads):,} payloads")
    for payload in payloads[:1000]:  # warm the parsers' caches (user agents, currencies)
        validate_payload(payload, arrival)

    rates, rejected = [], 0
    with RssSampler(roots=lambda: [os.getpid()]) as sampler:
        for attempt in range(args.repeat):
            started = time.perf_counter()
            outcomes = [validate_payload(payload, arrival) for payload in payloads]
            rates.append(len(payloads) / (time.perf_counter() - started))
            rejected = sum(isinstance(outcome, Rejected) for outcome in outcomes)
            progress(f"pass {attempt + 1}: {rates[-1]:,.0f} lines/s")

    events = []
    for payload in payloads:
        try:
            events.append(decode(payload))
        except Rejected:
            continue
    started = time.perf_counter()
    for event in events:
        try:
            check_structure(event)
        except Rejected:
            pass
    structure_seconds = time.perf_counter() - started
    median = statistics.median(rates)
    result = {
        "parameters": vars(args),
        "lines": len(payloads), "rejected": rejected,
        "lines_per_second": round(median), "all_lines_per_second": [round(rate) for rate in rates],
        "check_structure_share": round(structure_seconds / (len(payloads) / median), 3),
        "peak_rss_mb": sampler.peaks_mb,
    }
    progress(f"validate_payload: {median:,.0f} lines/s on one core; check_structure "
             f"{result['check_structure_share']:.0%} of it")
    write_result("validation", result)
    return result


if __name__ == "__main__":
    main()
