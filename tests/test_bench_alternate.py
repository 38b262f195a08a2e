"""bench.common.alternate_ways: the frame the comparing benchmarks time their ways in."""

from __future__ import annotations

import pytest

from bench.common import alternate_ways


def test_ways_alternate_and_the_medians_are_of_each_ways_runs():
    order = []
    seconds = {"a": iter([3.0, 1.0, 2.0]), "b": iter([10.0, 30.0, 20.0])}

    def run(way):
        order.append(way)
        return next(seconds[way]), {"way": way, "run": len(order)}, ["rows", 7]

    outcome = alternate_ways(("a", "b"), 3, run, lambda summary: summary["way"])
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert outcome["seconds"] == {"a": [3.0, 1.0, 2.0], "b": [10.0, 30.0, 20.0]}
    assert outcome["median_seconds"] == {"a": 2.0, "b": 20.0}
    assert outcome["summaries"] == {"a": [{"way": "a", "run": 1}, {"way": "a", "run": 4}, {"way": "a", "run": 5}],
                                    "b": [{"way": "b", "run": 2}, {"way": "b", "run": 3}, {"way": "b", "run": 6}]}
    assert outcome["digest"] == ["rows", 7]


def test_a_run_with_other_output_stops_the_comparison():
    digests = iter([[5, "h1"], [5, "h1"], [5, "h2"], [5, "h1"]])
    runs = []

    def run(way):
        runs.append(way)
        return 1.0, {}, next(digests)

    with pytest.raises(AssertionError, match=r"round 2 b gave other output than round 1 a: \[5, 'h2'\] against \[5, 'h1'\]"):
        alternate_ways(("a", "b"), 2, run, lambda summary: "")
    assert runs == ["a", "b", "b"]
