"""Benchmark 4, attribution peers on the same paths:

- heuristics (first_touch, last_touch, linear, position_based, time_decay): our Spark model code
  (`touchpoint.jobs.attribution_models.credits`) against the same models written as DuckDB SQL,
  both over gold.attribution_conversions (conversions with ordered paths) read from the same Delta
  table (DuckDB through delta-rs). Both write their credit rows to Parquet; agreement is a full
  outer join of the two outputs on (model, conversion_id, touch_event_id).
- Markov (order 1): our exact solution (`touchpoint.jobs.markov.fit_chain`, Spark counts + numpy)
  against ChannelAttribution's simulated `markov_model`, over gold.attribution_paths; agreement is
  the largest relative difference of removal effects and of channel totals (RE share x conversions).

    python -m bench.attribution_peers [--lake DIR] [--events 3000000] [--days 90] [--repeat 2]

With `--lake` (e.g. the one `bench.batch_pipeline --lake DIR` kept) it uses the tables there;
otherwise it generates `events` lines over `days` days and runs ingest, identity and attribution
first. Each timed run is repeated `--repeat` times; the fastest is reported (the first is cold).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import progress, write_result
from bench.faults import JARS, REPO, RssSampler, read_table

HEURISTICS = ("first_touch", "last_touch", "linear", "position_based", "time_decay")

DUCKDB_CREDITS = """
CREATE OR REPLACE TEMP TABLE touches AS
SELECT conversion_id, customer_id, conversion_ts, revenue, len(path) AS n,
       generate_subscripts(path, 1) - 1 AS pos, unnest(path) AS t
FROM conversions WHERE len(path) > 0;

CREATE OR REPLACE TEMP TABLE credits AS
WITH weighted AS (
    SELECT *, pow(2.0, -(epoch_us(conversion_ts) - epoch_us(t.touch_ts))::DOUBLE / {half_life_us}) AS decay
    FROM touches
), per_model AS (
    SELECT 'first_touch' AS model, *, CASE WHEN pos = 0 THEN 1.0 ELSE 0.0 END AS credit FROM weighted
    UNION ALL
    SELECT 'last_touch', *, CASE WHEN pos = n - 1 THEN 1.0 ELSE 0.0 END FROM weighted
    UNION ALL
    SELECT 'linear', *, 1.0 / n FROM weighted
    UNION ALL
    SELECT 'position_based', *, CASE WHEN n = 1 THEN 1.0 WHEN n = 2 THEN 0.5
                                     WHEN pos = 0 OR pos = n - 1 THEN 0.4 ELSE 0.2 / (n - 2) END FROM weighted
    UNION ALL
    SELECT 'time_decay', *, decay / sum(decay) OVER (PARTITION BY conversion_id) FROM weighted
)
SELECT model, conversion_id, customer_id, conversion_ts, t.touch_event_id AS touch_event_id,
       t.touch_ts AS touch_ts, t.channel AS channel, t.campaign AS campaign, credit,
       credit * revenue AS revenue_credit
FROM per_model WHERE credit > 0
UNION ALL
SELECT m.model, conversion_id, customer_id, conversion_ts, NULL, NULL, 'direct', NULL, 1.0, revenue
FROM conversions, (SELECT unnest({models}) AS model) m WHERE len(path) = 0;
"""

AGREEMENT = """
SELECT count(*) AS rows,
       count(*) FILTER (WHERE s.model IS NULL) AS only_duckdb,
       count(*) FILTER (WHERE d.model IS NULL) AS only_spark,
       max(abs(s.credit - d.credit)) AS max_abs_credit_difference
FROM read_parquet('{spark}/*.parquet') s
FULL OUTER JOIN read_parquet('{duck}') d
  ON s.model = d.model AND s.conversion_id = d.conversion_id
 AND coalesce(s.touch_event_id, '') = coalesce(d.touch_event_id, '')
"""


def build_lake(spark, settings, events: int, days: int, seed: int, workdir: Path) -> dict:
    from touchpoint.generator import GeneratorConfig, generate_jsonl
    from touchpoint.jobs.runner import run_job
    from touchpoint.streaming.ingest import ingest_files

    start = dt.date(2026, 1, 1)
    customers = max(10, math.ceil(events / (20 * 1.016)))
    config = GeneratorConfig(seed=seed, customers=customers, days=days, start_date=start, events_per_customer=20)
    report = generate_jsonl(str(workdir / "history.jsonl"), config)
    progress(f"generated {report['lines']:,} lines; ingesting")
    ingest_files(spark, settings, workdir / "history.jsonl")
    last_day = start + dt.timedelta(days=days - 1)
    for job in ("identity", "attribution"):
        progress(f"running {job} for {last_day}")
        run_job(job, last_day, settings=settings, spark=spark)
    return {"lines": report["lines"], "customers": customers, "days": days, "logical_date": last_day.isoformat()}


def timed(function, repeat: int) -> tuple[float, object]:
    best, value = math.inf, None
    for _ in range(repeat):
        started = time.monotonic()
        value = function()
        best = min(best, time.monotonic() - started)
    return round(best, 3), value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=None)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--nsim", type=float, default=1e6, help="ChannelAttribution simulations (nsim_start)")
    args = parser.parse_args(argv)
    os.chdir(REPO)

    import duckdb
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs.attribution_models import MICROS_PER_DAY, credits
    from touchpoint.jobs.markov import channel_totals, fit_chain

    workdir = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    lake = Path(args.lake) if args.lake else workdir / "lake"
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS))
    spark = get_spark("bench-attribution-peers", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            if args.lake is None:
                result["data"] = build_lake(spark, settings, args.events, args.days, args.seed, workdir)
            conversions_path = table_path("gold.attribution_conversions", settings)
            conversions = spark.read.format("delta").load(conversions_path)
            result["conversions"] = conversions.count()
            result["touchpoints_in_paths"] = conversions.select(F.sum(F.size("path"))).first()[0]
            progress(f"{result['conversions']:,} conversions, {result['touchpoints_in_paths']:,} path touchpoints")

            spark_out, duck_out = workdir / "spark_credits", workdir / "duckdb_credits.parquet"

            def spark_heuristics():
                (conversions.transform(credits(settings.attribution, models=HEURISTICS))
                 .write.mode("overwrite").parquet(str(spark_out)))

            half_life_us = float(settings.attribution.half_life_days) * MICROS_PER_DAY
            script = DUCKDB_CREDITS.format(half_life_us=half_life_us, models=list(HEURISTICS))

            def duckdb_heuristics():
                connection = duckdb.connect()
                from deltalake import DeltaTable

                connection.register("conversions", DeltaTable(conversions_path).to_pyarrow_dataset())
                connection.execute(script)
                connection.execute(f"COPY credits TO '{duck_out}' (FORMAT parquet)")
                connection.close()

            spark_seconds, _ = timed(spark_heuristics, args.repeat)
            progress(f"spark heuristics {spark_seconds}s")
            duck_seconds, _ = timed(duckdb_heuristics, args.repeat)
            progress(f"duckdb heuristics {duck_seconds}s")
            row = duckdb.sql(AGREEMENT.format(spark=spark_out, duck=duck_out)).fetchall()[0]
            result["heuristics"] = {
                "models": list(HEURISTICS), "spark_seconds": spark_seconds, "duckdb_seconds": duck_seconds,
                "spark_to_duckdb_time_ratio": round(spark_seconds / duck_seconds, 2) if duck_seconds else None,
                "agreement": {"rows": row[0], "only_duckdb": row[1], "only_spark": row[2],
                              "max_abs_credit_difference": row[3]},
            }

            paths_path = table_path("gold.attribution_paths", settings)
            paths_pd = read_table_pandas(paths_path)
            paths_spark = spark.read.format("delta").load(paths_path)

            def ours():
                return fit_chain(paths_spark, order=1).removal_effects()

            ours_seconds, effects = timed(ours, args.repeat)
            import ChannelAttribution

            def theirs():
                return ChannelAttribution.markov_model(
                    paths_pd, "path", "total_conversions", var_null="total_null", order=1, out_more=True,
                    max_step=1000, nsim_start=args.nsim, seed=1, verbose=False, flg_pro=False)

            ca_seconds, ca = timed(theirs, args.repeat)
            their_effects = dict(zip(ca["removal_effects"]["channel_name"], ca["removal_effects"]["removal_effect"]))
            total = float(paths_pd["total_conversions"].sum())
            our_totals = channel_totals(effects, total)
            their_totals = dict(zip(ca["result"]["channel_name"], ca["result"]["total_conversions"]))

            def max_relative(a: dict, b: dict) -> float:
                return max(abs(a[c] - b.get(c, 0.0)) / abs(a[c]) for c in a if a[c])

            result["markov"] = {
                "paths": len(paths_pd), "total_conversions": total, "nsim": args.nsim,
                "ours_exact_seconds": ours_seconds, "channelattribution_seconds": ca_seconds,
                "channels": sorted(effects), "same_channels": set(effects) == set(their_effects),
                "max_relative_removal_effect_difference": round(max_relative(effects, their_effects), 5),
                "max_relative_channel_total_difference": round(max_relative(our_totals, their_totals), 5),
                "removal_effects": {"ours": effects, "channelattribution": their_effects},
            }
            progress(f"markov exact {ours_seconds}s vs ChannelAttribution {ca_seconds}s")
        result["peak_rss_mb"] = dict(memory.peaks_mb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("attribution_peers", result)
    return result


def read_table_pandas(path: str):
    import pandas as pd

    return pd.DataFrame(read_table(path))


if __name__ == "__main__":
    main()
