"""The same job on a local Spark standalone cluster (master + 2 workers) gives the local-mode result."""

import json
import os
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from touchpoint.core.config import load_settings
from touchpoint.infra import cluster

EVENTS = [
    {"event_id": f"e{i}", "event_type": "page_view", "event_ts": f"2026-03-0{1 + i % 3}T10:00:00Z",
     "anonymous_id": f"a{i % 5}",
     "context": {"page_url": f"https://shop.example/?utm_source={'google' if i % 2 else 'facebook'}&utm_medium=cpc"}}
    for i in range(30)
] + [{"event_id": "e3", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z", "anonymous_id": "x"}]


def _ingest(tmp_path, file, name, master):
    lake = tmp_path / name
    env = {**os.environ, "TOUCHPOINT_LAKE_ROOT": str(lake), "TOUCHPOINT_SPARK_MASTER": master}
    result = subprocess.run([sys.executable, "-m", "touchpoint", "ingest", "--file", str(file)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    silver = DeltaTable(str(lake / "silver" / "events")).to_pyarrow_table().to_pylist()
    return sorted((r["event_id"], r["channel"], r["event_date"], r["anonymous_id"]) for r in silver)


@pytest.mark.slow
def test_file_ingest_on_standalone_cluster_equals_local(tmp_path):
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\nnot json\n")
    state = cluster.start(load_settings(), workers=2)
    try:
        assert state.workers_registered >= 2
        on_cluster = _ingest(tmp_path, file, "cluster", cluster.master_url())
    finally:
        cluster.stop(load_settings())
    local = _ingest(tmp_path, file, "local", "local[2]")
    assert on_cluster == local
    assert len(local) == 30 and ("e1", "paid_search", local[1][2], "a1") in local
