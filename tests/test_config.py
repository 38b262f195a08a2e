import json
import subprocess
import sys

import pytest

from touchpoint.core.config import ConfigError, load_settings, require_kafka


def test_defaults_and_env_override(monkeypatch, tmp_path):
    import os

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("TOUCHPOINT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TOUCHPOINT_LAKE_ROOT", "s3a://bucket/lake")
    monkeypatch.setenv("TOUCHPOINT_ATTRIBUTION__LOOKBACK_DAYS", "14")
    settings = load_settings()
    assert settings.lake_uri == "s3a://bucket/lake"
    assert settings.attribution.lookback_days == 14
    assert settings.attribution.half_life_days == 7
    assert settings.kafka_bootstrap == "127.0.0.1:9092"


def test_toml_file_is_read_and_env_wins(monkeypatch, tmp_path):
    config = tmp_path / "touchpoint.toml"
    config.write_text('kafka_topic = "from.toml"\nreporting_currency = "EUR"\n[identity]\nshared_device_max_user_ids = 5\n')
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    monkeypatch.setenv("TOUCHPOINT_REPORTING_CURRENCY", "GBP")
    settings = load_settings()
    assert (settings.kafka_topic, settings.reporting_currency) == ("from.toml", "GBP")
    assert settings.identity.shared_device_max_user_ids == 5


def test_unknown_key_names_the_key(monkeypatch, tmp_path):
    config = tmp_path / "touchpoint.toml"
    config.write_text("[attribution]\nlookback_dayz = 3\n")
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "\n" not in message
    assert "unknown key 'attribution.lookback_dayz'" in message


def test_wrong_type_names_key_and_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOUCHPOINT_ATTRIBUTION__MARKOV_ORDER", "seven")
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "key 'attribution.markov_order' (env TOUCHPOINT_ATTRIBUTION__MARKOV_ORDER)" in message
    assert "'seven'" in message


@pytest.mark.parametrize("bootstrap", ["localhost", "http://x:1", "a:b", "127.0.0.1:0", "127.0.0.1:99999"])
def test_malformed_bootstrap(monkeypatch, tmp_path, bootstrap):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="key 'kafka_bootstrap'"):
        load_settings(kafka_bootstrap=bootstrap)


def test_unreachable_bootstrap_fails_fast(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"key 'kafka_bootstrap'.*127.0.0.1:1 is unreachable"):
        require_kafka(settings)


def test_cli_reports_bad_config_in_one_line(tmp_path):
    config = tmp_path / "touchpoint.toml"
    config.write_text("spark_master = 'mesos://x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "touchpoint", "tables", "--json"], capture_output=True, text=True,
        env={"TOUCHPOINT_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "key 'spark_master'" in lines[0] and "mesos://x" in lines[0]


@pytest.mark.parametrize(("entry", "shown"), [
    (["-m", "touchpoint", "tables", "--json"], "error: invalid configuration: key 'spark_master' (env "
                                               "TOUCHPOINT_SPARK_MASTER): expected local[N], spark://host:port, yarn "
                                               "or k8s://..., got 'local[x]'"),
    # the spark-submit entry point: one line and exit 2 too, not a traceback
    (["-m", "touchpoint.jobs.runner", "identity", "--date", "2026-01-01"], "error: invalid configuration: key "
     "'spark_master' (env TOUCHPOINT_SPARK_MASTER): expected local[N], spark://host:port, yarn or k8s://..., got "
     "'local[x]'"),
])
def test_a_bad_value_is_shown_as_written_by_every_entry_point(tmp_path, entry, shown):
    """`[x]` in a value was read as rich markup and vanished ("got 'local'")."""
    config = tmp_path / "touchpoint.toml"
    config.write_text("")
    result = subprocess.run([sys.executable, *entry], capture_output=True, text=True,
                            env={"TOUCHPOINT_CONFIG": str(config), "TOUCHPOINT_SPARK_MASTER": "local[x]",
                                 "PATH": "/usr/bin:/bin"})
    assert (result.returncode, [line for line in result.stderr.splitlines() if line.strip()]) == (2, [shown])


def test_a_misspelt_variable_a_missing_config_file_and_unreadable_values_name_themselves(monkeypatch, tmp_path):
    """Each used to load the defaults silently, or to raise without naming the variable or file."""
    monkeypatch.setenv("TOUCHPOINT_LAKEROOT", "/elsewhere")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == ("invalid configuration: env TOUCHPOINT_LAKEROOT is not a setting: did you mean "
                                "TOUCHPOINT_LAKE_ROOT? Rename or unset it")
    monkeypatch.delenv("TOUCHPOINT_LAKEROOT")
    monkeypatch.setenv("TOUCHPOINT_TEST_ANYTHING", "tests' own variables are not settings")
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == (f"invalid configuration: env TOUCHPOINT_CONFIG: {tmp_path / 'missing.toml'} is not "
                                "a file; point it at a touchpoint.toml or unset it")
    config = tmp_path / "touchpoint.toml"
    config.write_text("kafka_topic = events.raw\n")
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith(f"invalid configuration: {config} is not valid TOML (Invalid value")
    assert str(error.value).endswith("; fix its syntax")
    config.write_text("")
    monkeypatch.setenv("TOUCHPOINT_IDENTITY__BLOCKLIST", "null,n/a")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith("invalid configuration: TOUCHPOINT_IDENTITY__BLOCKLIST could not be read (")
    assert str(error.value).endswith("""lists and mappings are JSON, e.g. TOUCHPOINT_IDENTITY__BLOCKLIST='["null", "n/a"]'""")
    monkeypatch.setenv("TOUCHPOINT_IDENTITY__BLOCKLIST", '["null", "n/a"]')
    assert load_settings().identity.blocklist == ("null", "n/a")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("reporting_currency", "AFN", "'AFN' has no exchange rate in fx_rates.csv; use one of AED, AUD, BRL,"),
    ("lake_root", "", "expected a folder or a bucket (s3a://bucket/lake), got ''"),
    ("lake_root", "s3a://", "expected a folder or a bucket (s3a://bucket/lake), got 's3a://'"),
    # an empty path was the working directory ("" -> "."); an empty exports_dir is unset (tested below)
    ("state_dir", " ", "expected a path, got an empty value; give a folder, or remove the key"),
    ("lake_root", "file://localhost/lake", "expected file:///path (a folder on this host), got 'file://localhost/lake'"),
    # Hadoop's form: it was taken for a relative folder named "file:"
    ("lake_root", "file:/tmp/lake", "expected a local path, file:// or s3a:// URI, got 'file:/tmp/lake'; write "
                                    "file:///x (or the path /x) for file:/x"),
    # accepted before, failing only once Spark ran
    ("spark_driver_memory", "lots", "String should match pattern '^[1-9][0-9]*[kmgtKMGT]?$', got 'lots'"),
    ("kafka_topic", "bad topic", "String should match pattern '^[A-Za-z0-9._\\-]{1,249}$', got 'bad topic'"),
    ("spark_master", "local[0]", "expected local[N], spark://host:port, yarn or k8s://..., got 'local[0]'"),
])
def test_values_that_would_fail_every_event_or_write_fail_at_load(key, value, message):
    with pytest.raises(ConfigError) as error:
        load_settings(**{key: value})
    assert str(error.value).startswith(f"invalid configuration: key '{key}' (env TOUCHPOINT_{key.upper()}): {message}")


def test_an_empty_optional_path_is_unset_and_takes_its_default(tmp_path):
    """It was the working directory ("" -> "."): exports written wherever the command ran."""
    settings = load_settings(lake_root=str(tmp_path / "lake"), exports_dir="", reports_dir=" ", channel_rules_file="")
    assert (settings.exports_dir, settings.reports_dir, settings.channel_rules_file) == (None, None, None)


def test_the_customer_views_trigger_is_unset_by_none_in_toml_or_the_environment(monkeypatch, tmp_path):
    """Unset, one speed query keeps every view (docs/SERVING.md); TOML has no null, and "" or
    "null" in the environment were refused before session 47."""
    config = tmp_path / "touchpoint.toml"
    config.write_text('[stream]\ncustomer_trigger_seconds = "none"\n')
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    assert load_settings().stream.customer_trigger_seconds is None
    config.write_text("")
    assert load_settings().stream.customer_trigger_seconds == 30.0
    for unset in ("", "null", "None"):
        monkeypatch.setenv("TOUCHPOINT_STREAM__CUSTOMER_TRIGGER_SECONDS", unset)
        assert load_settings().stream.customer_trigger_seconds is None
    monkeypatch.setenv("TOUCHPOINT_STREAM__CUSTOMER_TRIGGER_SECONDS", "15")
    assert load_settings().stream.customer_trigger_seconds == 15.0


def test_an_infinite_number_fails_at_load(monkeypatch):
    """`gt=0` let `inf` through; the attribution job then crashed on round(inf)."""
    monkeypatch.setenv("TOUCHPOINT_ATTRIBUTION__LOOKBACK_DAYS", "inf")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == ("invalid configuration: key 'attribution.lookback_days' (env "
                                "TOUCHPOINT_ATTRIBUTION__LOOKBACK_DAYS): Input should be a finite number, got 'inf'")


@pytest.mark.parametrize(("kinds", "message"), [
    (["ad_click", "email_click", "page_views"], "['page_views'] cannot be touchpoints; list ad_click, email_click and "
                                                "optionally page_view (set view_through = true for ad impressions)"),
    (["ad_click", "email_click", "email_open"], "['email_open'] cannot be touchpoints"),
    (["ad_click", "email_click", "ad_impression"], "['ad_impression'] cannot be touchpoints"),
    (["page_view"], "every click is a touchpoint: add ['ad_click', 'email_click']"),
])
def test_touchpoint_types_outside_the_brief_fail_at_load(monkeypatch, kinds, message):
    monkeypatch.setenv("TOUCHPOINT_ATTRIBUTION__TOUCHPOINT_EVENT_TYPES", json.dumps(kinds))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "attribution.touchpoint_event_types" in str(error.value) and message in str(error.value)
    monkeypatch.setenv("TOUCHPOINT_ATTRIBUTION__TOUCHPOINT_EVENT_TYPES", '["email_click", "ad_click"]')
    assert load_settings().attribution.touchpoint_event_types == ("email_click", "ad_click")  # page views left out


def test_the_exchange_rates_file_is_checked_line_by_line(tmp_path):
    from touchpoint.core.events import currencies

    rates = tmp_path / "rates.csv"
    for body, problem in [("currency,usd\nEUR,1.08\n", ":1: the header must be currency,usd_per_unit"),
                          ("currency,usd_per_unit\nEUR,abc\n", ":2: {'currency': 'EUR', 'usd_per_unit': 'abc'} must be"),
                          ("currency,usd_per_unit\nEUR,1.08\nEUR,1.1\n", ":3: {'currency': 'EUR', 'usd_per_unit': '1.1'}"),
                          ("currency,usd_per_unit\nXXY,1.0\n", ":2: {'currency': 'XXY'"),
                          ("currency,usd_per_unit\nUSD,0\n", ":2: {'currency': 'USD', 'usd_per_unit': '0'}"),
                          ("currency,usd_per_unit\nUSD,-1.08\n", ":2:"), ("currency,usd_per_unit\nUSD,nan\n", ":2:")]:
        rates.write_text(body)
        currencies.cache_clear()
        with pytest.raises(ValueError) as error:
            currencies(str(rates))
        assert str(error.value).startswith(f"{rates}{problem}"), str(error.value)
    currencies.cache_clear()
    rates.write_text("currency,usd_per_unit\nusd,1.0\nEUR,1.08\n")
    assert currencies(str(rates)).usd_per_unit == {"USD": 1.0, "EUR": 1.08}
    currencies.cache_clear()


def test_bootstrap_servers_are_kept_without_surrounding_spaces():
    assert load_settings(kafka_bootstrap=" 127.0.0.1:9092 , broker-2:9093\n").kafka_bootstrap == \
        "127.0.0.1:9092,broker-2:9093"
