import json
import subprocess
import sys
import time


def test_tables_json_lists_every_table_with_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "touchpoint", "tables", "--json"], capture_output=True, text=True, check=True,
        env={"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "PATH": "/usr/bin:/bin",
             "TOUCHPOINT_CONFIG": str(tmp_path / "none.toml")},
    )
    described = {t["name"]: t for t in json.loads(result.stdout)}
    assert described["silver.events"]["path"] == f"{tmp_path}/lake/silver/events"
    assert described["gold.attribution_credits"]["path"] == f"{tmp_path}/lake/gold/attribution_credits"
    assert described["bronze.events"]["restricted"] is True
    assert described["gold.customer_profiles"]["restricted"] is False
    assert {"bronze.events", "silver.events", "silver.quarantine", "gold.identity_map"} <= set(described)


def test_status_json_with_the_broker_down_answers_without_waiting_for_kafka(tmp_path):
    env = {"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "TOUCHPOINT_STATE_DIR": str(tmp_path / "state"),
           "TOUCHPOINT_KAFKA_BOOTSTRAP": "127.0.0.1:9", "PATH": "/usr/bin:/bin",
           "TOUCHPOINT_CONFIG": str(tmp_path / "none.toml")}  # port 9: nothing listens there
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "touchpoint", "status", "--json"], capture_output=True, text=True,
                            check=True, env=env)
    report = json.loads(result.stdout)
    assert report["kafka"] == {"running": False, "answering": False, "pid": None, "bootstrap": "127.0.0.1:9"}
    assert (report["freshness"], report["kafka_lag"]) == ("no speed micro-batch yet",
                                                          "unavailable (broker not answering)")
    assert report["lake_root"] == f"{tmp_path}/lake"
    # `make test` asks for the status before it starts the broker: the lag probe waited 30 s there.
    assert time.monotonic() - started < 20
