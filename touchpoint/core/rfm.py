"""RFM scoring (BRIEF §5 profiles): quintile scores 1..5 and the R+F segment map.

Quintiles follow `pandas.qcut(x, 5)`: the edges are the 20/40/60/80 % quantiles with linear
interpolation (numpy's default) and the bins are closed on the right, so a score is
1 + the number of edges strictly below the value. Then:
- R: by recency (time since the last order), 5 = most recent: `qcut(recency, 5, labels=[5,4,3,2,1])`;
- F: by order count, ties broken by ranking first (then by customer_id, so it is deterministic):
  `qcut(orders.rank(method="first"), 5, labels=[1,2,3,4,5])`;
- M: by lifetime revenue: `qcut(revenue, 5, labels=[1,2,3,4,5])`.
Equal R or M values share a score (bins may then be uneven); pandas would refuse duplicate edges.

Order statistics are found with a distributed sort (range partitioning, per-partition counts),
so nothing that grows with the number of customers goes to the driver or to one task.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

QUANTILES = (0.2, 0.4, 0.6, 0.8)

# The two-digit R+F map. Anchored patterns; every one of the 25 pairs matches exactly one.
RFM_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("hibernating", r"^[12][12]$"),
    ("at_risk", r"^[12][34]$"),
    ("cant_lose", r"^[12]5$"),
    ("about_to_sleep", r"^3[12]$"),
    ("need_attention", r"^33$"),
    ("loyal_customers", r"^[34][45]$"),
    ("promising", r"^41$"),
    ("new_customers", r"^51$"),
    ("potential_loyalists", r"^[45][23]$"),
    ("champions", r"^5[45]$"),
)


def segment_of(r_score: int, f_score: int) -> str:
    """The segment of one (R, F) pair (the Python twin of `rfm_segment`)."""
    code = f"{r_score}{f_score}"
    matches = [name for name, pattern in RFM_SEGMENTS if re.match(pattern, code)]
    if len(matches) != 1:
        raise ValueError(f"R+F {code!r} matches {matches}")
    return matches[0]


def rfm_segment(r_score: Column, f_score: Column) -> Column:
    """Segment name from the R and F scores; null when either is null."""
    code = F.concat(r_score.cast("string"), f_score.cast("string"))
    segment = None
    for name, pattern in RFM_SEGMENTS:
        segment = (F.when(code.rlike(pattern), F.lit(name)) if segment is None
                   else segment.when(code.rlike(pattern), F.lit(name)))
    return segment


def bins_above(value: Column, edges: Sequence[float]) -> Column:
    """How many quintile edges lie strictly below `value` (0..4)."""
    total = F.lit(0)
    for edge in edges:
        total = total + F.when(value > F.lit(float(edge)), 1).otherwise(0)
    return total


def interpolated_quantile(order_statistics: dict[int, float], n: int, q: float) -> float:
    """Linear-interpolated quantile (numpy's default) from 0-based order statistics."""
    h = (n - 1) * q
    lower = int(h)
    low, high = order_statistics[lower], order_statistics[min(lower + 1, n - 1)]
    return low + (h - lower) * (high - low)


def needed_positions(n: int) -> list[int]:
    """The 0-based order statistics the four quintile edges of n values interpolate between."""
    positions = set()
    for q in QUANTILES:
        lower = int((n - 1) * q)
        positions.update({lower, min(lower + 1, n - 1)})
    return sorted(positions)


def with_position(frame: DataFrame, order: Sequence[Column], checkpoint: Callable[[DataFrame], DataFrame],
                  partitions: int) -> DataFrame:
    """Add `position`: the 0-based index of each row in the total order `order` (must be a total order).

    Range-partitions and sorts, then numbers rows within each partition; the per-partition row
    counts (one number per partition) give the offsets. Checkpointed first, so the numbering and
    the counts see the same partitioning.
    """
    numbered = checkpoint(
        frame.repartitionByRange(partitions, *order).sortWithinPartitions(*order)
        .withColumn("_part", F.spark_partition_id())
        .withColumn("_row", F.monotonically_increasing_id() - (F.spark_partition_id().cast("long") * (1 << 33)))
    )
    counts = sorted((row["_part"], row["n"]) for row in
                    numbered.groupBy("_part").agg(F.count(F.lit(1)).alias("n")).collect())
    offsets, total = {}, 0
    for part, n in counts:
        offsets[part] = total
        total += n
    offset = F.lit(0).cast("long")
    for part, start in offsets.items():
        offset = F.when(F.col("_part") == part, F.lit(start)).otherwise(offset)
    return numbered.withColumn("position", offset + F.col("_row")).drop("_part", "_row")


def quintile_edges(frame: DataFrame, value: str, n: int, checkpoint: Callable[[DataFrame], DataFrame],
                   partitions: int) -> list[float]:
    """The four quintile edges of column `value` over the n rows of `frame` (n > 0)."""
    ranked = with_position(frame.select(value), [F.col(value)], checkpoint, partitions)
    rows = ranked.where(F.col("position").isin(needed_positions(n))).collect()  # at most 8 rows
    order_statistics = {row["position"]: float(row[value]) for row in rows}
    return [interpolated_quantile(order_statistics, n, q) for q in QUANTILES]


def rfm_scores(customers: DataFrame, checkpoint: Callable[[DataFrame], DataFrame], partitions: int) -> DataFrame:
    """(customer_id, recency, orders, revenue, ...) of customers with orders -> + rfm_recency/frequency/monetary.

    `recency` is any number that grows with the time since the last order.
    """
    n = customers.count()
    if n == 0:
        return customers.select("*", *[F.lit(None).cast("int").alias(c)
                                       for c in ("rfm_recency", "rfm_frequency", "rfm_monetary")])
    recency_edges = quintile_edges(customers, "recency", n, checkpoint, partitions)
    monetary_edges = quintile_edges(customers, "revenue", n, checkpoint, partitions)
    # F: rank(method="first") over order counts, equal counts ordered by customer_id.
    by_orders = with_position(customers, [F.col("orders"), F.col("customer_id")], checkpoint, partitions)
    rank_edges = [1 + (n - 1) * q for q in QUANTILES]  # the quantiles of the ranks 1..n
    return by_orders.select(
        *customers.columns,
        (F.lit(5) - bins_above(F.col("recency"), recency_edges)).alias("rfm_recency"),
        (F.lit(1) + bins_above(F.col("position") + 1, rank_edges)).alias("rfm_frequency"),
        (F.lit(1) + bins_above(F.col("revenue"), monetary_edges)).alias("rfm_monetary"),
    )
