"""`touchpoint stream ...` runs its queries in the foreground: one failing stops the others, exit 1."""

import pytest
import typer


def test_a_failed_query_stops_the_others_and_exits_1(spark, tmp_path, capsys):
    from touchpoint.cli import _await_queries

    def fail(frame, batch_id):
        raise RuntimeError("injected sink failure")

    rate = spark.readStream.format("rate").option("rowsPerSecond", 5)
    failing = (rate.load().writeStream.queryName("failing").foreachBatch(fail)
               .option("checkpointLocation", str(tmp_path / "failing")).trigger(processingTime="1 second").start())
    healthy = (rate.load().writeStream.queryName("healthy").foreachBatch(lambda frame, batch_id: None)
               .option("checkpointLocation", str(tmp_path / "healthy")).trigger(processingTime="1 second").start())
    try:
        with pytest.raises(typer.Exit) as exited:
            _await_queries([failing, healthy], "test", str(tmp_path))
    finally:
        for query in (failing, healthy):
            if query.isActive:
                query.stop()
    assert exited.value.exit_code == 1
    assert not healthy.isActive and healthy.exception() is None
    assert failing.exception() is not None and "injected sink failure" in str(failing.exception())
    assert "test query failing failed" in capsys.readouterr().err
