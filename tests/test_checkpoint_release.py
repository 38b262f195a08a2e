"""`core.spark.local_checkpoint` / `release_checkpoint`: attribution and the speed sink free their
local checkpoints when a run or micro-batch ends, not when the driver next collects garbage."""

import pytest


def _cached_rdds(spark) -> dict[int, int]:
    return {info.id(): info.numCachedPartitions() for info in spark.sparkContext._jsc.sc().getRDDStorageInfo()}


def test_release_frees_the_checkpointed_blocks_now(spark):
    from touchpoint.core.spark import release_checkpoint

    before = set(_cached_rdds(spark))
    doubled = spark.range(10).selectExpr("id * 2 AS doubled").localCheckpoint(eager=False)
    assert sorted(r["doubled"] for r in doubled.collect()) == list(range(0, 20, 2))
    held = {rdd: parts for rdd, parts in _cached_rdds(spark).items() if rdd not in before}
    assert list(held.values()) == [2]  # one RDD, both partitions of local[2]
    release_checkpoint(doubled)
    assert not set(_cached_rdds(spark)) - before


def test_release_refuses_a_frame_that_is_not_a_checkpoint(spark):
    from touchpoint.core.spark import release_checkpoint

    with pytest.raises(ValueError, match="localCheckpoint"):
        release_checkpoint(spark.range(3).localCheckpoint(eager=False).where("id > 0"))


def test_local_checkpoint_block_computes_once_and_frees_on_exit_even_after_an_error(spark):
    from touchpoint.core.spark import local_checkpoint

    before = set(_cached_rdds(spark))
    with pytest.raises(RuntimeError, match="the batch failed"):
        with local_checkpoint(spark.range(4).selectExpr("id + 1 AS n")) as numbers:
            assert sorted(r["n"] for r in numbers.collect()) == [1, 2, 3, 4]
            assert len(set(_cached_rdds(spark)) - before) == 1
            raise RuntimeError("the batch failed")
    assert not set(_cached_rdds(spark)) - before


def _estimate(frame) -> int:
    """Spark's size estimate of a frame's optimised plan, in bytes."""
    return int(str(frame._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))


def test_a_checkpoint_with_its_own_size_is_estimated_at_its_blocks_not_at_its_plan(spark):
    """Four rounds that each join a frame to itself, checkpointed each time: a plain local checkpoint
    carries the product of the joins' estimates from round to round (the digits double each round);
    one with its own size is estimated at the bytes its blocks hold, holds the same rows and is
    freed like any other."""
    from touchpoint.core.spark import checkpoint_with_own_size, release_checkpoint

    def pair_round(frame):  # each row meets every row of its key, as a round of label joins does
        return frame.alias("a").join(frame.alias("b"), "k").select("k", "a.id").distinct()

    plain = own = spark.range(40).selectExpr("id", "id % 4 AS k")
    before = set(_cached_rdds(spark))
    rounds = []
    for _ in range(4):
        plain = pair_round(plain).localCheckpoint(eager=True)
        own = checkpoint_with_own_size(pair_round(own))
        rounds += [plain, own]
    assert sorted(tuple(row) for row in own.collect()) == sorted((n % 4, n) for n in range(40))
    own_rdd = own._jdf.logicalPlan().rdd().id()
    [blocks] = [info for info in spark.sparkContext._jsc.sc().getRDDStorageInfo() if info.id() == own_rdd]
    stored = blocks.memSize() + blocks.diskSize()
    assert 0 < stored < 100_000
    assert _estimate(own) == -(-stored // 8) * 8  # rounded up to whole longs
    assert _estimate(plain) > 10 ** 30  # what a plain checkpoint carries on
    assert len(set(_cached_rdds(spark)) - before) == 8
    for checkpoint in rounds:
        release_checkpoint(checkpoint)
    assert not set(_cached_rdds(spark)) - before


def test_a_checkpoint_with_no_blocks_keeps_the_estimate_of_its_plan(spark):
    """A frame of no partitions stores no block, so there is no size to take: the plain local
    checkpoint comes back (here an empty range, estimated at 0 bytes), not an invented size."""
    from touchpoint.core.spark import checkpoint_with_own_size

    nothing = checkpoint_with_own_size(spark.range(0))
    assert nothing.collect() == []
    assert nothing._jdf.logicalPlan().rdd().getNumPartitions() == 0
    assert _estimate(nothing) == 0


def test_speed_identity_frees_its_round_checkpoints_and_the_stack_frees_the_rest(spark):
    """A chain of links: the linking events' checkpoint is freed once their labels exist; the two
    checkpoints the result reads (the nodes and the labels) go with the stack."""
    import hashlib
    from contextlib import ExitStack

    from touchpoint.core.stream_identity import extend_identity_map

    published = spark.createDataFrame([("user_id", "u-known", "c-known"), ("email", "k@x.io", "c-known")],
                                      "identifier_type string, identifier_value string, customer_id string")
    events = spark.createDataFrame([
        ("e1", "a1", "u1", None, None), ("e2", None, "u1", "m@x.io", None), ("e3", None, None, "m@x.io", "555"),
        ("e4", "a2", None, None, "555"), ("e5", "a2", "u-known", None, None), ("e6", "a9", None, None, None),
    ], "event_id string, anonymous_id string, user_id string, email string, phone string")
    lone = "p-" + hashlib.sha256(b"touchpoint-provisional-v1:anonymous_id:a9").hexdigest()[:32]

    before = set(_cached_rdds(spark))
    with ExitStack() as checkpoints:
        extended = extend_identity_map(published, events, [], checkpoints=checkpoints)
        assert sorted(tuple(r) for r in extended.select("identifier_type", "identifier_value", "customer_id")
                      .collect()) == [
            ("anonymous_id", "a1", "c-known"), ("anonymous_id", "a2", "c-known"), ("anonymous_id", "a9", lone),
            ("email", "k@x.io", "c-known"), ("email", "m@x.io", "c-known"), ("phone", "555", "c-known"),
            ("user_id", "u-known", "c-known"), ("user_id", "u1", "c-known")]
        assert len(set(_cached_rdds(spark)) - before) == 2  # the nodes and the last labels
    assert not set(_cached_rdds(spark)) - before
