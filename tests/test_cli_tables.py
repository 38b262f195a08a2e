import json
import subprocess
import sys
import time


def empty_config(tmp_path):
    """An empty touchpoint.toml: the defaults, whatever the working directory holds."""
    config = tmp_path / "touchpoint.toml"
    config.write_text("")
    return str(config)


def test_tables_json_lists_every_table_with_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "touchpoint", "tables", "--json"], capture_output=True, text=True, check=True,
        env={"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "PATH": "/usr/bin:/bin",
             "TOUCHPOINT_CONFIG": empty_config(tmp_path)},
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
           "TOUCHPOINT_CONFIG": empty_config(tmp_path)}  # port 9: nothing listens there
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


def test_bad_arguments_are_refused_before_spark_starts(tmp_path):
    """A clean message and exit code 2, no traceback, nothing touched (the demo used to replace its
    Kafka topic and lake before refusing a bad customer count)."""
    env = {"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "TOUCHPOINT_STATE_DIR": str(tmp_path / "state"),
           "PATH": "/usr/bin:/bin", "TOUCHPOINT_CONFIG": empty_config(tmp_path), "COLUMNS": "200"}
    (tmp_path / "day.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    cases = {
        ("run", "identity", "--date", "2026-02-30"): "--date must be a day YYYY-MM-DD before 9999-12-31, got '2026-02-30'",
        ("run", "identity", "--date", "9999-12-31"): "--date must be a day YYYY-MM-DD before 9999-12-31, got '9999-12-31'",
        ("export", "--segment", "vip", "--destination", "tiktok"):
            "--destination 'tiktok' is unknown; use one of google_customer_match, meta_custom_audience, esp, jsonl",
        ("ingest", "--file", str(tmp_path / "missing.jsonl")):
            f"--file: {tmp_path / 'missing.jsonl'} does not exist: give a JSONL file or a folder of *.jsonl files",
        ("ingest", "--file", str(tmp_path / "day.jsonl.gz")):
            f"--file: compressed input, not JSONL text: {tmp_path / 'day.jsonl.gz'}; decompress it first (gunzip -k FILE)",
        ("demo", "--customers", "0"): "Invalid value for '--customers': Input should be greater than or equal to 1",
        # before, Spark started and the job's ValueError ended in a traceback
        ("export", "--segment", "Bad!", "--destination", "esp"):
            "--segment 'Bad!' is no segment name: a lowercase letter, then lowercase letters, digits, '_'",
        ("export", "--segment", "vip", "--destination", "esp", "--run-id", "a/b"):
            "--run-id 'a/b': letters, digits, '.', '_' and '-' only",
        ("report", "--date", "2026-01-01", "--days", "-5"):
            "Invalid value for '--days': Input should be greater than or equal to 1",
        ("stream", "supervise", "spedd"): "QUERY must be one of ingest, speed, got 'spedd'",
    }
    for args, message in cases.items():
        result = subprocess.run([sys.executable, "-m", "touchpoint", *args], capture_output=True, text=True, env=env)
        output = " ".join(result.stderr.split())
        assert (result.returncode, "Traceback" in output) == (2, False), (args, result.stderr[-800:])
        assert message in output, (args, output)
    assert not (tmp_path / "state").exists() and not (tmp_path / "lake").exists()


def test_the_dags_checks_run_from_the_cli_too(tmp_path):
    """BRIEF §1: nothing happens only inside Airflow. The privacy_erasure DAG's check, on a lake
    without erasures: nothing to verify, exit 0."""
    env = {"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "PATH": "/usr/bin:/bin",
           "TOUCHPOINT_CONFIG": empty_config(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "touchpoint", "verify-erasures"], capture_output=True, text=True,
                            env=env)
    assert (result.returncode, json.loads(result.stdout)) == (0, {"erasures": 0, "suppressed": 0}), result.stderr


def test_forget_takes_exactly_one_identifier_and_queues_an_anonymous_id_as_its_hash(tmp_path):
    """`--anonymous-id` (the core erases by it; the CLI had no option for it before session 47)."""
    import hashlib

    from deltalake import DeltaTable

    env = {"TOUCHPOINT_LAKE_ROOT": str(tmp_path / "lake"), "TOUCHPOINT_STATE_DIR": str(tmp_path / "state"),
           "PATH": "/usr/bin:/bin", "TOUCHPOINT_CONFIG": empty_config(tmp_path)}
    both = subprocess.run([sys.executable, "-m", "touchpoint", "forget", "--anonymous-id", "dev-1", "--user-id", "u"],
                          capture_output=True, text=True, env=env)
    assert both.returncode == 2
    assert "give exactly one of --email, --phone, --user-id, --anonymous-id, --customer-id" in both.stderr
    queued = subprocess.run([sys.executable, "-m", "touchpoint", "forget", "--anonymous-id", " dev-1 ", "--queue"],
                            capture_output=True, text=True, env=env, check=True)
    request_id = json.loads(queued.stdout)["queued"]
    rows = DeltaTable(str(tmp_path / "lake" / "privacy" / "erasure_requests")).to_pyarrow_table().to_pylist()
    assert [(r["request_id"], r["identifier_type"], r["identifier_sha256"]) for r in rows] == [
        (request_id, "anonymous_id", hashlib.sha256(b"dev-1").hexdigest())]  # trimmed, hashed, never raw
