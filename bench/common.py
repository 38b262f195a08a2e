"""Shared plumbing of the benchmark scripts: progress lines, the machine description, results files,
Kafka's own consumer performance tool, and timings of micro-batches from a streaming checkpoint."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from bench.faults import JARS, REPO

RESULTS = Path(__file__).resolve().parent / "results"
_T0 = time.monotonic()


def stream_default(name: str):
    """The platform's default for a `stream.*` setting, so a bench measures what users run."""
    from touchpoint.core.config import StreamSettings

    return StreamSettings.model_fields[name].default


def frame_digest(frame) -> list:
    """[rows, an order-free hash sum of every column] of a DataFrame: equal digests, same rows."""
    from pyspark.sql import functions as F

    row = frame.select(F.count(F.lit(1)), F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)"))).first()
    return [row[0], str(row[1])]


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:8.1f}s] {message}", flush=True)


def alternate_ways(ways: tuple[str, ...], repeat: int, run: Callable[[str], tuple[float, dict, object]],
                   describe: Callable[[dict], str]) -> dict:
    """`repeat` rounds of every way in one process, the order reversed each round (whichever runs
    second finds files in the page cache and a warmer JIT). `run(way)` returns its seconds, a summary
    and a digest of its output; every run of every way must give the same digest. `describe(summary)`
    is printed after each run. Returns each way's seconds and summaries in run order, the median
    seconds and the one digest."""
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    summaries: dict[str, list[dict]] = {way: [] for way in ways}
    first = None
    for round_number in range(repeat):
        for way in ways if round_number % 2 == 0 else ways[::-1]:
            took, summary, digest = run(way)
            seconds[way].append(took)
            summaries[way].append(summary)
            progress(f"round {round_number + 1} {way}: {took} s ({describe(summary)})")
            if first is None:
                first = (way, digest)
            elif digest != first[1]:
                raise AssertionError(f"round {round_number + 1} {way} gave other output than round 1 "
                                     f"{first[0]}: {digest} against {first[1]}")
    return {"seconds": seconds, "summaries": summaries, "digest": first[1] if first else None,
            "median_seconds": {way: round(statistics.median(values), 2) for way, values in seconds.items()}}


def machine() -> dict:
    """What the numbers were measured on (the machine is shared: load is part of the record)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory_gb = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    versions = {}
    for package in ("pyspark", "delta-spark", "deltalake", "duckdb", "kafka-python"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "kernel": platform.release(),
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "versions": versions, "kafka_jars": sorted(p.name for p in (JARS / "kafka").glob("kafka_*.jar"))[:1]}


def realtime_traffic(seed: int, customers: int):
    """The real-time generator's config of the freshness and generator benchmarks: two days up to
    today, so the pacer's clock stamps fall in its window, and enough traffic that the generator is
    never the one to stop first."""
    from touchpoint.generator import GeneratorConfig

    return GeneratorConfig(seed=seed, customers=customers, days=2, start_date=dt.date.today() - dt.timedelta(days=2),
                           events_per_customer=20)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has reaped."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    progress(f"wrote {path.relative_to(REPO)}")
    return path


def consumer_perf(bootstrap: str, topic: str, messages: int, timeout_ms: int = 120_000) -> dict:
    """Kafka's own ConsumerPerformance tool (kafka-tools, from the project's broker jars) on a topic:
    the ceiling an ingest consumer could reach on this machine with this broker."""
    command = ["java", "-Xmx512m", "-cp", str(JARS / "kafka" / "*"), "org.apache.kafka.tools.ConsumerPerformance",
               "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(messages),
               "--group", f"bench-perf-{int(time.time())}", "--timeout", str(timeout_ms)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"ConsumerPerformance failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    header = [h.strip() for h in next(l for l in lines if l.startswith("start.time")).split(",")]
    values = [v.strip() for v in lines[-1].split(",")]
    row = dict(zip(header, values))
    # The fetch rate leaves out the consumer group join, as the sustained stream rates leave out start-up.
    return {"messages": int(row["data.consumed.in.nMsg"]), "mb": float(row["data.consumed.in.MB"]),
            "events_per_second": float(row["fetch.nMsg.sec"]), "fetch_mb_per_second": float(row["fetch.MB.sec"]),
            "events_per_second_including_group_join": float(row["nMsg.sec"]), "wall_seconds": round(wall, 1)}


def checkpoint_commit_times(checkpoint: Path) -> dict[int, float]:
    """batch_id -> wall time its commit file was written (epoch seconds)."""
    commits = checkpoint / "commits"
    if not commits.is_dir():
        return {}
    return {int(p.name): p.stat().st_mtime for p in commits.iterdir() if p.name.isdigit()}


def sustained_rate(per_batch: dict[int, int], commit_times: dict[int, float]) -> dict:
    """Events/s between the end of the first batch and the end of the last (start-up and the first,
    JIT-cold batch excluded), and the overall count."""
    batches = sorted(b for b in per_batch if b in commit_times)
    if len(batches) < 2:
        return {"batches": len(batches), "events_per_second": None}
    first, last = batches[0], batches[-1]
    events = sum(per_batch[b] for b in batches[1:])
    seconds = commit_times[last] - commit_times[first]
    return {"batches": len(batches), "measured_events": events, "seconds": round(seconds, 1),
            "events_per_second": round(events / seconds, 1) if seconds > 0 else None}


def run_python(args: list[str], env: dict[str, str], log: Path, timeout: float = 24 * 3600) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.run([sys.executable, *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
