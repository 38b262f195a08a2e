import json
import subprocess
import sys


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
