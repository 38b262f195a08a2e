"""`make bench`: every benchmark at its documented size, then the results table in bench/README.md.

    python -m bench.run_all            # full size (hours on the 2-core machine; see bench/README.md)
    python -m bench.run_all --small    # the same scripts at development size (minutes)
    python -m bench.run_all --only streaming_drain,freshness
    python -m bench.run_all --table    # only re-render the README table from bench/results/*.json

Each benchmark runs in its own Python process (one Spark application at a time), writes
bench/results/<name>.json, and a failure of one does not stop the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS, progress
from bench.faults import REPO

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"

# name -> (arguments at full size, arguments at development size)
BENCHMARKS = {
    "streaming_drain": (["--events", "5000000"], ["--events", "100000"]),
    "freshness": ([], ["--rate", "500", "--steady-seconds", "30", "--burst-seconds", "10", "--tail-seconds", "20"]),
    "batch_pipeline": (["--events", "10300000", "--days", "90"], ["--events", "60000", "--days", "30"]),
    "attribution_peers": (["--events", "3000000", "--days", "90"], ["--events", "60000", "--days", "30"]),
    "attribution_incremental": (["--events", "2000000", "--days", "90"],
                                ["--events", "60000", "--days", "30", "--repeat", "1"]),
    "profiles_incremental": (["--events", "2000000", "--days", "90"],
                             ["--events", "60000", "--days", "30", "--repeat", "1"]),
    "campaign_metrics": (["--events", "2000000", "--days", "90"],
                         ["--events", "60000", "--days", "30", "--repeat", "1"]),
    "scope_kept": (["--events", "2000000", "--days", "90"], ["--events", "60000", "--days", "30", "--repeat", "1"]),
    "identity_scale": (["--repeat", "2"], ["--groups", "5000", "--repeat", "1"]),
    "speed_identity": ([], ["--events", "40000", "--customers", "2000", "--increments", "2"]),
    "speed_customers": ([], ["--events", "40000", "--customers", "2000", "--increments", "2"]),
    "lake_maintenance": ([], ["--appends", "8", "--repeat", "1"]),
    "publish": ([], ["--rows", "100000", "--repeat", "1"]),
    "validation": ([], ["--lines", "10000", "--repeat", "1"]),
    "generator_producer": ([], ["--lines", "20000", "--seconds", "30", "--warmup-lines", "50000", "--repeat", "1"]),
    "generator_burst": ([], ["--steady-seconds", "10", "--burst-seconds", "5", "--repeat", "1", "--customers", "20000"]),
    "ingest_steps": ([], ["--events", "100000", "--max-offsets", "20000"]),
    "ingest_fixed_costs": ([], ["--appends", "5", "--partition-rows", "100000,400000", "--repeat", "1"]),
    "collector_load": ([], ["--duration", "5"]),  # the collector engineer's script; run when present
}


def available(name: str) -> bool:
    return importlib.util.find_spec(f"bench.{name}") is not None


def run(name: str, small: bool) -> int:
    arguments = BENCHMARKS[name][1 if small else 0]
    progress(f"=== {name} {' '.join(arguments)}")
    returncode = subprocess.run([sys.executable, "-m", f"bench.{name}", *arguments], cwd=REPO).returncode
    result = _load(name)
    if returncode == 0 and result is not None:  # the table says which size a result is
        result["size"] = "development (--small)" if small else "full"
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return returncode


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _when(result: dict) -> str:
    return f"{result['finished_at']}, {result.get('size', 'size not recorded')}"


def _memory(result: dict) -> str:
    peaks = result.get("peak_rss_mb") or {}
    return ", ".join(f"{role} {mb:,.0f}" for role, mb in sorted(peaks.items()) if role != "other") or "n/a"


def render_table() -> str:
    rows = ["| benchmark | measure | result | floor / target | peak RSS MB (sum per role) | measured |",
            "|---|---|---|---|---|---|"]
    machine = None
    drain = _load("streaming_drain")
    if drain:
        machine = machine or drain["machine"]
        ingest, end = drain.get("ingest", {}), drain.get("end_to_end", {})
        rows.append(f"| streaming drain ({drain['preload']['lines']:,} events) | ingest sustained events/s | "
                    f"{_fmt(ingest.get('sustained', {}).get('events_per_second'))} (wall {_fmt(ingest.get('wall_events_per_second'))}) "
                    f"| | {_memory(ingest)} | {_when(drain)} |")
        speed = drain.get("speed", {})
        if "skipped" not in speed:
            stalled_note = (f" ({', '.join(speed['sustained']['stalled'])} committed no batch)"
                            if speed.get("sustained", {}).get("stalled") else "")
            rows.append(f"| | speed layer sustained events/s{stalled_note} | "
                        f"{_fmt(speed.get('sustained', {}).get('events_per_second'))} "
                        f"(wall {_fmt(speed.get('wall_events_per_second'))}) | | {_memory(speed)} | |")
        stalled = speed.get("sustained", {}).get("stalled")
        only = f" (views of the queries that committed batches; {', '.join(stalled)}: none)" if stalled else ""
        rows.append(f"| | end to end events/s{only}; ratio to Kafka ConsumerPerformance ceiling "
                    f"({_fmt(drain['ceiling']['events_per_second'])}/s) | {_fmt(end.get('events_per_second'))}; "
                    f"{_fmt(end.get('ratio_to_ceiling'), 3)} | 20,000 / 50,000 | | |")
    fresh = _load("freshness")
    if fresh:
        machine = machine or fresh["machine"]
        p = fresh["parameters"]
        # Older results have one query's lags at the top level.
        legacy = "steady" in fresh["lag_seconds"]
        per_query = {"speed": fresh["lag_seconds"]} if legacy else fresh["lag_seconds"]
        first = True
        for query, lags in per_query.items():
            views = ("all views (one speed query)" if legacy else
                     "customer views" if query.endswith("_customers") else "campaign views")
            trigger = p.get("customer_trigger_seconds") if query.endswith("_customers") else p["trigger_seconds"]
            achieved = fresh["generator"].get("burst_valid_events_per_second")
            for phase in ("steady", "burst"):
                lag = lags[phase]
                produced = f", produced {_fmt(achieved)} valid events/s" if phase == "burst" and achieved else ""
                rows.append(f"| freshness of {views}, {phase} (requested "
                            f"{_fmt(p['rate'] * (p['burst_factor'] if phase == 'burst' else 1))}/s{produced}, "
                            f"speed trigger {trigger} s) | p50 / p95 / p99 lag s | "
                            f"{_fmt(lag.get('p50'), 2)} / {_fmt(lag.get('p95'), 2)} / {_fmt(lag.get('p99'), 2)} "
                            f"| p95 10 / 3 | {_memory(fresh) if first else ''} | {_when(fresh) if first else ''} |")
                first = False
    batch = _load("batch_pipeline")
    if batch:
        machine = machine or batch["machine"]
        rows.append(f"| batch pipeline ({batch['silver_events']:,} silver events, {batch['parameters']['days']} days) "
                    f"| full rebuild s; incremental day s; ratio | {_fmt(batch['full']['seconds'], 1)}; "
                    f"{_fmt(batch['incremental']['seconds'], 1)}; {_fmt(batch['ratio_incremental_to_full'], 3)} "
                    f"| ratio <= 0.10 | {_memory(batch)} | {_when(batch)} |")
    peers = _load("attribution_peers")
    if peers:
        machine = machine or peers["machine"]
        h, m = peers["heuristics"], peers["markov"]
        rows.append(f"| attribution heuristics ({peers['conversions']:,} conversions) | Spark s vs DuckDB s; "
                    f"max credit difference | {_fmt(h['spark_seconds'], 2)} vs {_fmt(h['duckdb_seconds'], 2)}; "
                    f"{h['agreement']['max_abs_credit_difference']} ({h['agreement']['only_spark']} / "
                    f"{h['agreement']['only_duckdb']} rows on one side only) | | {_memory(peers)} | {_when(peers)} |")
        rows.append(f"| Markov order 1 ({m['paths']:,} paths) | exact s vs ChannelAttribution s (nsim {m['nsim']:.0e}); "
                    f"max relative RE / total difference | {_fmt(m['ours_exact_seconds'], 2)} vs "
                    f"{_fmt(m['channelattribution_seconds'], 2)}; {m['max_relative_removal_effect_difference']} / "
                    f"{m['max_relative_channel_total_difference']} | | | |")
    for name, job, detail in (
            ("attribution_incremental", "attribution",
             lambda r: f"{r['conversions_recomputed']['changed']:,} conversions rebuilt"),
            ("profiles_incremental", "profiles", lambda r: r["derivation"]["changed"])):
        incremental = _load(name)
        if incremental:
            machine = machine or incremental["machine"]
            p, timing = incremental["parameters"], incremental["median_seconds"]
            rows.append(f"| incremental {job} of one day ({p['silver_events']:,} silver events, {detail(incremental)}) "
                        f"| changed customers re-derived s vs every customer s; ratio | {_fmt(timing['changed'], 1)} "
                        f"vs {_fmt(timing['all'], 1)}; {_fmt(incremental['ratio_all_to_changed'], 2)} | | "
                        f"{_memory(incremental)} | {_when(incremental)} |")
    metrics = _load("campaign_metrics")
    if metrics:
        machine = machine or metrics["machine"]
        p, timing = metrics["parameters"], metrics["median_seconds"]
        rows.append(f"| campaign_metrics of one day ({p['silver_events']:,} silver events, {metrics['conversions']:,} "
                    f"conversions) | last touch from attribution's paths s vs derived from silver s vs every event "
                    f"resolved (until session 49) s; ratio to paths | {_fmt(timing['paths'], 1)} vs "
                    f"{_fmt(timing['derived'], 1)} vs {_fmt(timing['resolved_all'], 1)}; "
                    f"{_fmt(metrics['ratio_derived_to_paths'], 2)} / {_fmt(metrics['ratio_resolved_all_to_paths'], 2)} "
                    f"| | {_memory(metrics)} | {_when(metrics)} |")
    kept = _load("scope_kept")
    if kept:
        machine = machine or kept["machine"]
        p, timing, jobs = kept["parameters"], kept["median_seconds"], kept["median_job_seconds"]
        rows.append(f"| incremental profiles then attribution of one day ({p['silver_events']:,} silver events) "
                    f"| each job derives its scope s vs attribution reads the scope profiles kept in staging s; "
                    f"ratio (attribution s) | {_fmt(timing['derived'], 1)} vs {_fmt(timing['kept'], 1)}; "
                    f"{_fmt(kept['ratio_derived_to_kept'], 2)} ({_fmt(jobs['derived']['attribution'], 1)} vs "
                    f"{_fmt(jobs['kept']['attribution'], 1)}) | | {_memory(kept)} | {_when(kept)} |")
    scale = _load("identity_scale")
    if scale:
        machine = machine or scale["machine"]
        timing, p = scale["median_seconds"], scale["parameters"]
        rows.append(f"| batch identity resolution ({scale['identifiers']:,} identifiers, {scale['customers']:,} "
                    f"customers, a chain of {2 * p['chain']:,}) | labels by union-find on the driver s vs "
                    f"large-star/small-star rounds on the executors s ({scale['rounds']['executors']} rounds); ratio "
                    f"| {_fmt(timing['driver'], 1)} vs {_fmt(timing['executors'], 1)}; "
                    f"{_fmt(scale['ratio_executors_to_driver'], 2)} | | {_memory(scale)} | {_when(scale)} |")
    identity = _load("speed_identity")
    if identity:
        machine = machine or identity["machine"]
        data, timing = identity["data"], identity["median_seconds"]
        paths = ", ".join(f"{n} {identity['kept_paths'].count(n)}" for n in sorted(set(identity["kept_paths"])))
        rows.append(f"| speed identity map per micro-batch ({data['initial_lines']:,} lines, then "
                    f"{len(data['increment_lines'])} increments of ~{data['increment_lines'][0]:,}; up to "
                    f"{max(identity['identifiers']):,} identifiers) | kept and extended s vs rebuilt s; ratio "
                    f"(kept sink: {paths}) | {_fmt(timing['kept'], 2)} vs {_fmt(timing['rebuilt'], 2)}; "
                    f"{_fmt(identity['ratio_rebuilt_to_kept'], 2)} | | {_memory(identity)} | {_when(identity)} |")
    customers = _load("speed_customers")
    if customers:
        machine = machine or customers["machine"]
        data, timing = customers["data"], customers["median_increment_seconds"]
        rows.append(f"| speed customer views per micro-batch ({data['initial_lines']:,} lines, then "
                    f"{len(data['increment_lines'])} increments of ~{data['increment_lines'][0]:,}) | median s per "
                    f"increment: whole micro-batch (identity, last touch, activity and segments) | "
                    f"{_fmt(timing['total'], 2)} ({_fmt(timing['identity'], 2)}, {_fmt(timing['last_touch'], 2)}, "
                    f"{_fmt(timing['activity_and_segments'], 2)}) | | {_memory(customers)} | {_when(customers)} |")
    upkeep = _load("lake_maintenance")
    if upkeep:
        machine = machine or upkeep["machine"]
        vacuum, sizes = upkeep["vacuum_seconds"], upkeep["parameters"]
        rows.append(f"| lake maintenance ({sizes['tables']} stream-written tables, {sizes['appends']} appends each) "
                    f"| VACUUM s with {vacuum['platform_listing_tasks']} listing tasks vs Spark's default "
                    f"{vacuum['spark_default_listing_tasks']:,}; ratio | {_fmt(vacuum['platform'], 1)} vs "
                    f"{_fmt(vacuum['spark_default'], 1)}; {_fmt(vacuum['ratio_default_to_platform'], 1)} "
                    f"| | {_memory(upkeep)} | {_when(upkeep)} |")
    publishing = _load("publish")
    if publishing:
        machine = machine or publishing["machine"]
        timing, sizes = publishing["publish_seconds"], publishing["parameters"]
        rows.append(f"| publish ({sizes['tables']} gold tables of {sizes['rows']:,} rows, {sizes['changed_rows']:,} "
                    f"rows appended to each in staging) | folders exchanged s vs Delta overwrite s; ratio | "
                    f"{_fmt(timing['exchange'], 2)} vs {_fmt(timing['overwrite'], 2)}; "
                    f"{_fmt(timing['ratio_overwrite_to_exchange'], 1)} | | {_memory(publishing)} | {_when(publishing)} |")
    steps = _load("ingest_steps")
    if steps:
        machine = machine or steps["machine"]
        p = steps["parameters"]
        rows.append(f"| ingestion steps ({p['events']:,} events, batches of {p['max_offsets']:,}) | steady events/s; "
                    f"median batch s; median s per step | {_fmt(steps['steady_events_per_second'])}; "
                    f"{steps['median_batch_seconds']}; "
                    + ", ".join(f"{name} {s}" for name, s in steps["median_step_seconds"].items())
                    + f" | | {_memory(steps)} | {_when(steps)} |")
    costs = _load("ingest_fixed_costs")
    if costs:
        machine = machine or costs["machine"]
        commits = costs["commits"]
        kinds = [kind for kind in ("with_txn", "marked", "plain") if kind in commits["median_seconds"]]
        if "dedup" in costs:  # since 2026-12-05: the scan against the keyed mirror
            dedup = (f"dedup s of {costs['parameters']['batch_rows']:,} new ids (+1 % copies) by the day's silver "
                     "rows, scan / keyed mirror", ", ".join(
                         f"{d['partition_rows']:,} rows {d['median_seconds']['scan']} / {d['median_seconds']['keyed']}"
                         for d in costs["dedup"]))
        else:
            dedup = (f"dedup s of {costs['parameters']['batch_rows']:,} new ids by the day's silver rows", ", ".join(
                f"{scan['partition_rows']:,} rows {scan['fastest_seconds']}" for scan in costs["dedup_scan"]))
        rows.append(f"| ingest fixed costs | one-row Delta append s {' / '.join(kinds)} (Spark jobs); {dedup[0]} | "
                    + " / ".join(f"{commits['median_seconds'][kind]} ({commits['median_jobs'][kind]:.0f})"
                                 for kind in kinds) + "; " + dedup[1]
                    + f" | | {_memory(costs)} | {_when(costs)} |")
        if costs.get("orders"):  # since 2026-12-05 (session 34)
            rows.append(f"| ingest orders lookup ({costs['parameters']['batch_rows']:,}-row batches, 1.3 % orders, "
                        "10 displacing) | s to plan a batch with its orders by silver's rows (over "
                        f"{costs['orders'][0]['dates']} dates), scans / keyed mirror | " + ", ".join(
                            f"{o['silver_rows']:,} rows ({o['silver_orders']:,} orders) {o['median_seconds']['scan']} / "
                            f"{o['median_seconds']['keyed']}" for o in costs["orders"]) + " | | | |")
    validation = _load("validation")
    if validation:
        machine = machine or validation["machine"]
        rows.append(f"| validator ({validation['lines']:,} generated lines, one core, no Spark) | lines/s; share in "
                    f"check_structure | {_fmt(validation['lines_per_second'])}; "
                    f"{validation['check_structure_share']:.0%} | | {_memory(validation)} | {_when(validation)} |")
    producer = _load("generator_producer")
    if producer:
        machine = machine or producer["machine"]
        medians, parameters = producer["median_cpu_us_per_line"], producer["parameters"]
        rows.append(f"| generator into Kafka (real time at {parameters['rate']:,.0f} lines/s, after "
                    f"{parameters['warmup_lines']:,} lines; bulk: {parameters['lines']:,} pre-generated lines) | "
                    "CPU µs per line, confluent-kafka / kafka-python / no sink; bulk send µs per line, "
                    f"confluent-kafka / kafka-python | {medians['confluent_kafka']['realtime']} / "
                    f"{medians['kafka_python']['realtime']} / {medians['no_sink']['realtime']}; "
                    f"{medians['confluent_kafka']['bulk']} / {medians['kafka_python']['bulk']} | | "
                    f"{_memory(producer)} | {_when(producer)} |")
    burst = _load("generator_burst")
    if burst:
        machine = machine or burst["machine"]
        medians, parameters = burst["median"], burst["parameters"]
        variants = ("one_process", "one_process_lookahead", "two_processes_lookahead")
        rows.append(f"| generator burst, alone ({parameters['rate']:,.0f} lines/s for {parameters['steady_seconds']:g} s, "
                    f"then {burst['requested_burst_lines_per_second']:,} asked for {parameters['burst_seconds']:g} s) | "
                    "lines/s sent in the burst: one process / one process with lookahead / two processes with "
                    "lookahead; CPU µs per line over the run | "
                    + " / ".join(f"{medians[v]['burst_lines_per_second']:,}" for v in variants) + "; "
                    + " / ".join(str(medians[v]["cpu_us_per_line"]) for v in variants)
                    + f" | {burst['requested_burst_lines_per_second']:,} asked | {_memory(burst)} | {_when(burst)} |")
    collector = _load("collector_load")
    if collector and "median" in collector:
        machine = machine or collector["machine"]
        medians, parameters = collector["median"], collector["params"]
        if set(medians) == {"librdkafka", "kafka-python"}:
            ours, theirs = medians["librdkafka"], medians["kafka-python"]
            rows.append(f"| HTTP collector under load ({parameters['concurrency']} clients on the same 2 cores, "
                        f"batches of {parameters['batch_size']}, {parameters['duration']:g} s x "
                        f"{parameters['rounds']} rounds) | events/s; latency p50 / p99 ms; collector CPU µs per "
                        f"event: librdkafka / kafka-python producer | {_fmt(ours['events_per_s'])} / "
                        f"{_fmt(theirs['events_per_s'])}; {ours['latency_p50_ms']} / {ours['latency_p99_ms']} "
                        f"against {theirs['latency_p50_ms']} / {theirs['latency_p99_ms']}; "
                        f"{ours['collector_cpu_us_per_event']} / {theirs['collector_cpu_us_per_event']} | | "
                        f"{_memory(collector)} | {_when(collector)} |")
    if machine is None:
        return "(no results yet: run `make bench`)"
    if machine:
        rows.append("")
        rows.append(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM, kernel "
                    f"{machine['kernel']}, Python {machine['python']}, pyspark {machine['versions'].get('pyspark')}, "
                    f"delta-spark {machine['versions'].get('delta-spark')}; load average when a run ended is in each "
                    "JSON file (the machine is shared).")
    return "\n".join(rows)


def update_readme() -> None:
    text = README.read_text() if README.exists() else ""
    table = f"{START}\n{render_table()}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + table + "\n"
    README.write_text(text)
    progress(f"updated {README.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="development sizes")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--table", action="store_true", help="only re-render the README table")
    args = parser.parse_args(argv)
    failures = []
    if not args.table:
        wanted = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
        for name in wanted:
            if not available(name):
                progress(f"=== {name}: not present, skipped")
                continue
            if run(name, args.small) != 0:
                failures.append(name)
    update_readme()
    if failures:
        progress(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
