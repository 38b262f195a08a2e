"""The Markov chain of BRIEF §4: transition counting in Spark, exact solve on hand-solved chains."""

import pytest

from touchpoint.jobs.markov import CONVERSION, NULL, START, MarkovChain, channel_totals, fit_chain, transition_counts

PATHS_SCHEMA = "path string, total_conversions long, total_conversion_value double, total_null long"


def chain_of(*transitions):
    return MarkovChain.from_counts(transitions)


def test_cyclic_first_order_chain_solved_by_hand():
    # paths "a > b > a" (1 conversion) and "b" (1 null):
    # x_a = 1/2 + 1/2 x_b, x_b = 1/2 x_a  =>  x_a = 2/3, x_b = 1/3, P = 1/2 (2/3 + 1/3) = 1/2
    chain = chain_of((START, "a", 1), (START, "b", 1), ("a", "b", 1), ("b", "a", 1),
                     ("a", CONVERSION, 1), ("b", NULL, 1))
    assert chain.conversion_probability() == pytest.approx(0.5, abs=1e-15)
    assert chain.conversion_probability("a") == 0.0  # only b is left, and b never converts alone
    assert chain.conversion_probability("b") == pytest.approx(0.25, abs=1e-15)  # 1/2 · 1/2
    assert chain.removal_effects() == pytest.approx({"a": 1.0, "b": 0.5}, abs=1e-15)


def test_branching_chain_and_channelattribution_style_totals():
    # "a > b" converts once, "a" ends in null once, "b" converts once and ends in null once:
    # P = 1/2 · (1/2 · 2/3) + 1/2 · 2/3 = 1/2; without a: 1/3 -> RE 1/3; without b: 0 -> RE 1.
    chain = chain_of((START, "a", 2), (START, "b", 2), ("a", "b", 1), ("a", NULL, 1),
                     ("b", CONVERSION, 2), ("b", NULL, 1))
    effects = chain.removal_effects()
    assert effects == pytest.approx({"a": 1 / 3, "b": 1.0}, abs=1e-15)
    # RE share × total conversions (2): a 2 · (1/3)/(4/3) = 0.5, b 1.5
    assert channel_totals(effects, 2) == pytest.approx({"a": 0.5, "b": 1.5}, abs=1e-12)


def test_no_conversions_gives_zero_removal_effects():
    chain = chain_of((START, "a", 3), ("a", NULL, 3))
    assert chain.conversion_probability() == 0.0
    assert chain.removal_effects() == {"a": 0.0}
    assert chain_of().removal_effects() == {}


def counts(spark, rows, order=1, collapse=True):
    paths = spark.createDataFrame(rows, PATHS_SCHEMA)
    found = paths.transform(transition_counts(order, collapse)).collect()
    return {(r["state_from"], r["state_to"]): r["count"] for r in found}


def test_a_channel_on_no_route_to_conversion_has_a_removal_effect_of_exactly_zero():
    # p leads only to null (and to b, which only leads to null): removing either cannot change P. The
    # solve leaves rounding noise there unless the route is checked (tests/test_oracle_attribution.py
    # found credit rows of 1.7e-16 and a lost equal split from it).
    chain = MarkovChain.from_counts([
        (START, "a", 7), (START, "p", 3), ("a", "c", 2), ("a", CONVERSION, 3), ("a", "p", 2), ("c", "a", 1),
        ("c", CONVERSION, 1), ("p", "b", 1), ("p", NULL, 4), ("b", NULL, 2), ("b", "p", 1),
    ])
    assert chain.carrying_channels() == {"a", "c"}
    effects = chain.removal_effects()
    assert (effects["p"], effects["b"], effects["a"]) == (0.0, 0.0, 1.0)
    assert 0.0 < effects["c"] < 1.0


def test_transition_counts_collapse_repeats_like_channelattribution(spark):
    rows = [("a > a > b", 2, 20.0, 1), ("b > b", 0, 0.0, 3), ("a", 1, 5.0, 0)]
    assert counts(spark, rows) == {
        (START, "a"): 4, (START, "b"): 3,
        ("a", "b"): 3, ("a", CONVERSION): 1,
        ("b", CONVERSION): 2, ("b", NULL): 4,
    }
    assert counts(spark, rows, collapse=False) == {
        (START, "a"): 4, (START, "b"): 3,
        ("a", "a"): 3, ("a", "b"): 3, ("a", CONVERSION): 1,
        ("b", "b"): 3, ("b", CONVERSION): 2, ("b", NULL): 4,
    }


def test_higher_order_states_are_the_last_k_channels(spark):
    rows = [("a > b > b > c > d", 1, 1.0, 0)]
    assert counts(spark, rows, order=3) == {
        (START, "a"): 1, ("a", "a > b"): 1, ("a > b", "a > b > c"): 1, ("a > b > c", "b > c > d"): 1,
        ("b > c > d", CONVERSION): 1,
    }
    assert counts(spark, rows, order=2, collapse=False) == {
        (START, "a"): 1, ("a", "a > b"): 1, ("a > b", "b > b"): 1, ("b > b", "b > c"): 1,
        ("b > c", "c > d"): 1, ("c > d", CONVERSION): 1,
    }


def test_order_two_separates_what_order_one_mixes(spark):
    # "a > b" converts, "c > b" does not. Order 1 mixes them in state b (P(b -> conversion) = 1/2),
    # so removing a or c halves P; order 2 keeps (a, b) and (c, b) apart: a carries every
    # conversion and c none.
    paths = spark.createDataFrame([("a > b", 1, 10.0, 0), ("c > b", 0, 0.0, 1)], PATHS_SCHEMA)
    first = fit_chain(paths, order=1)
    second = fit_chain(paths, order=2)
    assert first.conversion_probability() == pytest.approx(0.5, abs=1e-15)
    assert second.conversion_probability() == pytest.approx(0.5, abs=1e-15)
    assert first.removal_effects() == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.5}, abs=1e-15)
    assert second.removal_effects() == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.0}, abs=1e-15)
    assert second.states == ("a", "a > b", "c", "c > b")


def test_bad_order_is_rejected():
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        transition_counts(4)
