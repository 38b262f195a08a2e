"""Invariants of gold.attribution_credits (issue 5), enforced on every run and reusable by
expectation suites: `attribution_violations` returns the offending rows, `assert_attribution_invariants`
fails with a readable message.
"""

from __future__ import annotations

from typing import Iterable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from touchpoint.jobs.attribution_models import MODELS, micros

CREDIT_SUM_TOLERANCE = 1e-9
REVENUE_RELATIVE_TOLERANCE = 1e-9

VIOLATION_COLUMNS = ("check", "model", "conversion_id", "detail")


class AttributionInvariantError(AssertionError):
    """The attribution tables broke an invariant; the run must not publish them."""


def attribution_violations(
    credits: DataFrame, conversions: DataFrame, lookback_us: int, models: Iterable[str] = MODELS
) -> DataFrame:
    """Rows of (check, model, conversion_id, detail), empty when every invariant holds:

    - credits_sum_to_one: per conversion and model |Σ credit − 1| < 1e-9 (a missing model counts);
    - credit_in_unit_interval: every credit in [0, 1];
    - touch_inside_window: conv_ts − lookback ≤ touch_ts ≤ conv_ts for every touchpoint row;
    - revenue_conserved: per model Σ revenue_credit = Σ conversion revenue (relative 1e-9).
    """
    models = list(models)
    conv_us = micros("conversion_ts")
    touch_us = micros("touch_ts")
    outside_window = F.col("touch_event_id").isNotNull() & (
        (touch_us < conv_us - lookback_us) | (touch_us > conv_us)
    )
    per_conversion = credits.groupBy("model", "conversion_id").agg(
        F.sum("credit").alias("credit_sum"),
        F.sum(((F.col("credit") < 0) | (F.col("credit") > 1)).cast("int")).alias("out_of_range"),
        F.sum(outside_window.cast("int")).alias("outside_window"),
    )
    expected = conversions.select("conversion_id").crossJoin(
        credits.sparkSession.createDataFrame([(m,) for m in models], "model string")
    )
    checked = expected.join(per_conversion, ["model", "conversion_id"], "full")
    not_one = F.coalesce(F.abs(F.col("credit_sum") - 1.0) >= CREDIT_SUM_TOLERANCE, F.lit(True))
    row_violations = checked.select(
        "model", "conversion_id",
        F.filter(F.array(
            F.when(not_one, F.struct(F.lit("credits_sum_to_one").alias("check"),
                                     F.concat(F.lit("sum of credits = "),
                                              F.coalesce(F.col("credit_sum").cast("string"), F.lit("none")))
                                     .alias("detail"))),
            F.when(F.col("out_of_range") > 0, F.struct(F.lit("credit_in_unit_interval").alias("check"),
                                                       F.concat(F.col("out_of_range").cast("string"),
                                                                F.lit(" credits outside [0, 1]")).alias("detail"))),
            F.when(F.col("outside_window") > 0, F.struct(F.lit("touch_inside_window").alias("check"),
                                                         F.concat(F.col("outside_window").cast("string"),
                                                                  F.lit(" touchpoints outside the lookback window"))
                                                         .alias("detail"))),
        ), lambda v: v.isNotNull()).alias("found"),
    ).select("model", "conversion_id", F.explode("found").alias("v")).select(
        F.col("v.check").alias("check"), "model", "conversion_id", F.col("v.detail").alias("detail"))

    revenue = conversions.agg(F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("expected")).crossJoin(
        credits.sparkSession.createDataFrame([(m,) for m in models], "model string"))
    credited = credits.groupBy("model").agg(F.sum("revenue_credit").alias("credited"))
    revenue_violations = (
        revenue.join(credited, "model", "left")
        .withColumn("credited", F.coalesce("credited", F.lit(0.0)))
        .where(F.abs(F.col("credited") - F.col("expected"))
               > REVENUE_RELATIVE_TOLERANCE * F.greatest(F.lit(1.0), F.abs("expected")))
        .select(F.lit("revenue_conserved").alias("check"), "model", F.lit(None).cast("string").alias("conversion_id"),
                F.format_string("revenue credited %s, conversion revenue %s", "credited", "expected").alias("detail"))
    )
    return row_violations.unionByName(revenue_violations)


def assert_attribution_invariants(
    credits: DataFrame, conversions: DataFrame, lookback_us: int, models: Iterable[str] = MODELS, shown: int = 10
) -> None:
    """Raise AttributionInvariantError listing the first violations, if any."""
    # Ordered: the same first few whatever the partitions, taken by one job over all of them (a
    # bare limit scans partitions in growing waves, a job each: all of them when there are none).
    found = (attribution_violations(credits, conversions, lookback_us, models)
             .orderBy(*VIOLATION_COLUMNS).limit(shown).collect())
    if found:
        lines = [f"{v['check']}: model={v['model']} conversion={v['conversion_id']}: {v['detail']}" for v in found]
        raise AttributionInvariantError(
            "attribution invariants violated (first %d shown):\n  %s" % (len(found), "\n  ".join(lines))
        )
