"""The absorbing Markov chain of BRIEF §4: transitions counted in Spark, solved exactly on the driver.

A state is the last ≤ k channels of a path after consecutive repeats are collapsed (k = the
order). The chain is small (channels^k states), so its conversion probability is solved with
dense linear algebra instead of being simulated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
STATE_SEPARATOR = " > "


def collapse_repeats(channels):
    """Spark array column -> the same array without consecutive repeats of one channel."""
    return F.filter(channels, lambda c, i: (i == 0) | (c != F.get(channels, i - 1)))


def transition_counts(order: int = 1, collapse: bool = True):
    """gold.attribution_paths -> (state_from, state_to, count) of the order-k chain.

    Each path adds its conversions + nulls to every transition it makes (start included), its
    conversions to last state -> (conversion) and its nulls to last state -> (null).
    """
    if not 1 <= order <= 3:
        raise ValueError(f"Markov order must be 1, 2 or 3, got {order}")

    def transform(paths: DataFrame) -> DataFrame:
        channels = F.split(F.col("path"), STATE_SEPARATOR, -1)
        walked = paths.where(F.length("path") > 0).select(
            (collapse_repeats(channels) if collapse else channels).alias("channels"),
            F.col("total_conversions").cast("long").alias("conversions"),
            F.col("total_null").cast("long").alias("nulls"),
        ).select(
            F.transform(
                "channels",
                lambda c, i: F.array_join(
                    F.slice("channels", F.greatest(F.lit(1), i - order + 2), F.least(i + 1, F.lit(order))),
                    STATE_SEPARATOR,
                ),
            ).alias("states"),
            "conversions", "nulls",
        )
        steps = walked.select(
            F.posexplode("states").alias("pos", "state_to"), "states", "conversions", "nulls"
        ).select(
            F.coalesce(F.get("states", F.col("pos") - 1), F.lit(START)).alias("state_from"),
            "state_to",
            (F.col("conversions") + F.col("nulls")).alias("count"),
        )
        last_state = F.element_at("states", -1)
        endings = walked.select(
            last_state.alias("state_from"),
            F.explode(F.array(
                F.struct(F.lit(CONVERSION).alias("state_to"), F.col("conversions").alias("count")),
                F.struct(F.lit(NULL).alias("state_to"), F.col("nulls").alias("count")),
            )).alias("end"),
        ).select("state_from", "end.state_to", "end.count")
        return (
            steps.unionByName(endings)
            .groupBy("state_from", "state_to")
            .agg(F.sum("count").alias("count"))
            .where(F.col("count") > 0)
        )

    return transform


def state_channels(state: str) -> list[str]:
    return state.split(STATE_SEPARATOR)


@dataclass(frozen=True)
class MarkovChain:
    """Transition probabilities of an absorbing chain, from transition counts."""

    states: tuple[str, ...]  # transient states, sorted
    start: np.ndarray  # P(start -> state)
    transient: np.ndarray  # Q[i, j] = P(state i -> state j)
    to_conversion: np.ndarray  # P(state i -> conversion)

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[str, str, float]]) -> "MarkovChain":
        outgoing: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for source, target, count in counts:
            if count < 0:
                raise ValueError(f"negative transition count {source} -> {target}: {count}")
            if count:
                outgoing[source][target] += float(count)
        states = tuple(sorted(
            {s for s in outgoing if s != START} | {t for row in outgoing.values() for t in row}
            - {CONVERSION, NULL}
        ))
        index = {s: i for i, s in enumerate(states)}
        size = len(states)
        start, transient, to_conversion = np.zeros(size), np.zeros((size, size)), np.zeros(size)
        for source, row in outgoing.items():
            total = sum(row.values())
            for target, count in row.items():
                probability = count / total
                if source == START:
                    if target in index:
                        start[index[target]] += probability
                elif target == CONVERSION:
                    to_conversion[index[source]] += probability
                elif target != NULL:
                    transient[index[source], index[target]] += probability
        return cls(states, start, transient, to_conversion)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(sorted({c for s in self.states for c in state_channels(s)}))

    def conversion_probability(self, removed: str | None = None) -> float:
        """P(absorbed in conversion | start), exactly; removing a channel sends every transition
        into a state holding it to null, which is the same as dropping those states."""
        keep = [i for i, s in enumerate(self.states) if removed is None or removed not in state_channels(s)]
        if not keep:
            return 0.0
        q = self.transient[np.ix_(keep, keep)]
        absorbed = np.linalg.solve(np.eye(len(keep)) - q, self.to_conversion[keep])
        return float(self.start[keep] @ absorbed)

    def carrying_channels(self) -> set[str]:
        """Channels of the states on some route start -> conversion (every step of positive
        probability): removing any other channel cannot change P."""
        forward = set(np.flatnonzero(self.start > 0))
        backward = set(np.flatnonzero(self.to_conversion > 0))
        for reached, edges in ((forward, self.transient > 0), (backward, (self.transient > 0).T)):
            frontier = list(reached)
            while frontier:
                for j in np.flatnonzero(edges[frontier.pop()]):
                    if j not in reached:
                        reached.add(j)
                        frontier.append(j)
        return {c for i in forward & backward for c in state_channels(self.states[i])}

    def removal_effects(self) -> dict[str, float]:
        """RE(c) = (P − P_without_c) / P for every channel; 0 for all when P = 0.
        A channel on no route to conversion has RE exactly 0 (the solve would leave rounding noise
        of 1e-16 there, which would write credit rows and defeat the equal split of an all-zero
        path). Mathematically RE ∈ [0, 1]; rounding noise outside is clipped."""
        total = self.conversion_probability()
        if total <= 0:
            return {c: 0.0 for c in self.channels}
        carrying = self.carrying_channels()
        return {
            c: min(1.0, max(0.0, (total - self.conversion_probability(c)) / total)) if c in carrying else 0.0
            for c in self.channels
        }


def fit_chain(paths: DataFrame, order: int = 1, collapse: bool = True) -> MarkovChain:
    """Count transitions in Spark and bring the (small) count table to the driver."""
    counts = paths.transform(transition_counts(order, collapse)).collect()
    return MarkovChain.from_counts((r["state_from"], r["state_to"], r["count"]) for r in counts)


def channel_totals(removal_effects: Mapping[str, float], total_conversions: float) -> dict[str, float]:
    """ChannelAttribution's global allocation: RE share × total conversions of the training set."""
    share_total = sum(removal_effects.values())
    if share_total <= 0:
        return {c: 0.0 for c in removal_effects}
    return {c: re / share_total * total_conversions for c, re in removal_effects.items()}
