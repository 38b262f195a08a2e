"""Drill: a batch job is SIGKILLed in the middle of its writes and run again. Its tables end up
identical to those of an uninterrupted run in another lake (Delta commits are atomic and every job
write is idempotent per logical date).

Two lakes start from the same silver and the same day-1 identity run (lake B is a byte copy of lake
A). Day 2 runs uninterrupted in B; in A it runs as `python -m touchpoint.jobs.runner identity` and
is killed once it has committed part of its tables, then rerun.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from bench.faults import ChildProcess, lake_settings, read_table, subprocess_env, wait_for
from touchpoint.core.catalog import table_path
from touchpoint.generator import GeneratorConfig, generate_jsonl

pytestmark = [pytest.mark.timeout(1800), pytest.mark.drill, pytest.mark.slow]


def history(customers: int) -> GeneratorConfig:
    return GeneratorConfig(seed=5, customers=customers, days=2, start_date="2026-03-02", events_per_customer=14,
                           late_rate=0.05, duplicate_rate=0.02, malformed_rate=0.01)


# `make test` size, and the larger one of `make drills`.
SIZES = [pytest.param(history(60), id="60-customers"),
         pytest.param(history(3000), id="3000-customers", marks=pytest.mark.long_drill)]
DAY_1, DAY_2 = dt.date(2026, 3, 2), dt.date(2026, 3, 3)
IDENTITY_TABLES = ("gold.identity_map", "gold.identity_edges", "gold.identity_guardrails", "gold.identity_merges",
                   "gold.identity_splits", "gold.identity_runs")
# Run-log columns that name Delta versions: a killed run's commits shift them, nothing else.
VERSION_COLUMNS = {"identity_map_version", "identity_edges_version", "identity_guardrails_version"}


def commits(settings, names) -> int:
    total = 0
    for name in names:
        log = Path(table_path(name, settings)) / "_delta_log"
        total += len(list(log.glob("*.json"))) if log.is_dir() else 0
    return total


def content(settings, name) -> list[tuple]:
    rows = read_table(table_path(name, settings))
    return sorted(tuple(sorted((k, repr(v)) for k, v in row.items() if k not in VERSION_COLUMNS)) for row in rows)


@pytest.mark.parametrize("traffic", SIZES)
def test_identity_killed_mid_write_then_rerun_equals_uninterrupted_run(spark, tmp_path, traffic):
    from touchpoint.jobs.runner import run_job
    from touchpoint.streaming.ingest import ingest_files

    lake_a, lake_b = tmp_path / "killed" / "lake", tmp_path / "clean" / "lake"
    killed = lake_settings(lake_a)
    clean = lake_settings(lake_b)
    file = tmp_path / "history.jsonl"
    generate_jsonl(str(file), traffic)
    ingest_files(spark, killed, file)
    run_job("identity", DAY_1, settings=killed, spark=spark)
    shutil.copytree(lake_a, lake_b)

    uninterrupted = run_job("identity", DAY_2, settings=clean, spark=spark)

    before = commits(killed, IDENTITY_TABLES)
    job = ChildProcess(["-m", "touchpoint.jobs.runner", "identity", "--date", DAY_2.isoformat()],
                       subprocess_env(lake_a), tmp_path / "identity-killed.log")
    # Kill once two of its table commits have landed: the run is half written.
    wait_for(lambda: commits(killed, IDENTITY_TABLES) >= before + 2 or not job.alive(), timeout=900, interval=0.1,
             what="two identity commits")
    assert job.alive(), f"the job ended before it could be killed:\n{job.log_tail()}"
    job.kill()
    half_written = commits(killed, IDENTITY_TABLES) - before
    runs = [r["logical_date"] for r in read_table(table_path("gold.identity_runs", killed))]
    assert DAY_2 not in runs, "the run finished before the kill"
    assert half_written >= 2

    rerun = run_job("identity", DAY_2, settings=killed, spark=spark)

    for name in IDENTITY_TABLES:
        assert content(killed, name) == content(clean, name), name
    assert rerun["identifiers"] == uninterrupted["identifiers"] > 0
    assert rerun["customers"] == uninterrupted["customers"]
