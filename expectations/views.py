"""Derived views: DataFrames computed from the audited frames so that cross-row invariants become
ordinary column expectations (a suite expectation names its view in `meta.view`).

Every view is a pure function of the audit's frames and the suite's parameters. `inputs` are the
frames it needs besides the suite's own table; the runner fails the view's expectations, without
running them, when one is missing (an invariant that cannot be checked is not a passing one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

Frames = Mapping[str, DataFrame]
ViewBuilder = Callable[[Frames, Mapping[str, Any], str], DataFrame]  # (frames, parameters, table) -> view

CONVERSIONS = "gold.attribution_conversions"
ERASED_CUSTOMERS = "erased_customers"


@dataclass(frozen=True)
class View:
    name: str
    inputs: tuple[str, ...]  # frame keys needed besides the suite's table
    build: ViewBuilder
    description: str


def relative_error(actual: Column, expected: Column) -> Column:
    """|actual − expected| / max(1, |expected|): absolute for small amounts, relative for large ones;
    null when either side is null."""
    return F.abs(actual - expected) / F.greatest(F.lit(1.0), F.abs(expected))


def _models(frame: DataFrame, parameters: Mapping[str, Any]) -> DataFrame:
    return frame.sparkSession.createDataFrame([(m,) for m in parameters["attribution_models"]], "model string")


def credit_sums_per_conversion(frames: Frames, parameters: Mapping[str, Any], table: str) -> DataFrame:
    """One row per (model, conversion_id) that is expected (every model × every conversion of
    gold.attribution_conversions) or has credit rows, with
    - expected: the pair is a known conversion under one of the models;
    - credit_rows, credit_sum, credit_error = |credit_sum − 1|;
    - revenue_credit_sum, conversion_revenue, revenue_error = relative_error(revenue_credit_sum, conversion_revenue).
    A missing side leaves its columns null (no credits: credit_sum null; unknown conversion: expected false).
    """
    credits, conversions = frames[table], frames[CONVERSIONS]
    expected = (
        conversions.select("conversion_id", F.col("revenue").cast("double").alias("conversion_revenue"),
                           F.lit(True).alias("expected"))
        .crossJoin(F.broadcast(_models(credits, parameters)))
    )
    sums = credits.groupBy("model", "conversion_id").agg(
        F.count(F.lit(1)).alias("credit_rows"),
        F.sum("credit").alias("credit_sum"),
        F.sum("revenue_credit").alias("revenue_credit_sum"),
    )
    return expected.join(sums, ["model", "conversion_id"], "full").select(
        "model", "conversion_id",
        F.coalesce("expected", F.lit(False)).alias("expected"),
        "credit_rows", "credit_sum",
        F.abs(F.col("credit_sum") - F.lit(1.0)).alias("credit_error"),
        "revenue_credit_sum", "conversion_revenue",
        relative_error(F.col("revenue_credit_sum"), F.col("conversion_revenue")).alias("revenue_error"),
    )


def revenue_per_model(frames: Frames, parameters: Mapping[str, Any], table: str) -> DataFrame:
    """One row per model of the suite: revenue_credit_total (Σ revenue_credit of the model, 0 when it has
    none), conversion_revenue_total (Σ revenue of gold.attribution_conversions) and
    revenue_error = relative_error(revenue_credit_total, conversion_revenue_total)."""
    credits, conversions = frames[table], frames[CONVERSIONS]
    totals = credits.groupBy("model").agg(F.sum("revenue_credit").alias("revenue_credit_total"))
    conversion_total = conversions.agg(
        F.coalesce(F.sum(F.col("revenue").cast("double")), F.lit(0.0)).alias("conversion_revenue_total"))
    return (
        _models(credits, parameters).join(totals, "model", "left").crossJoin(conversion_total)
        .select("model",
                F.coalesce("revenue_credit_total", F.lit(0.0)).alias("revenue_credit_total"),
                "conversion_revenue_total")
        .withColumn("revenue_error", relative_error(F.col("revenue_credit_total"), F.col("conversion_revenue_total")))
    )


def table_columns(frames: Frames, parameters: Mapping[str, Any], table: str) -> DataFrame:
    """One row per column of the table: column_name (so that a column's absence is checkable)."""
    frame = frames[table]
    return frame.sparkSession.createDataFrame([(c,) for c in frame.columns], "column_name string")


def erasure_flags(frames: Frames, parameters: Mapping[str, Any], table: str) -> DataFrame:
    """The exported rows as (destination, customer_id, erased): erased is true when the customer is
    in the frame `erased_customers` (a customer_id column)."""
    erased = (frames[ERASED_CUSTOMERS].select("customer_id").where(F.col("customer_id").isNotNull())
              .distinct().withColumn("erased", F.lit(True)))
    return (frames[table].join(erased, "customer_id", "left")
            .select("destination", "customer_id", F.coalesce("erased", F.lit(False)).alias("erased")))


VIEWS: dict[str, View] = {
    v.name: v for v in (
        View("credit_sums_per_conversion", (CONVERSIONS,), credit_sums_per_conversion,
             "credit and revenue sums per (model, conversion_id) against every expected pair"),
        View("revenue_per_model", (CONVERSIONS,), revenue_per_model,
             "Σ revenue_credit per model against the total conversion revenue"),
        View("table_columns", (), table_columns, "the table's column names"),
        View("erasure_flags", (ERASED_CUSTOMERS,), erasure_flags, "exported rows flagged when the customer is erased"),
    )
}
