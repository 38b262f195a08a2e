"""The generated history behind the shared lakes of tests/conftest.py (ingested_history,
published_first_day, published_history)."""

HISTORY_START = "2026-03-02"
# The shared lakes are backfilled with all the history ingested: the pipeline runs for FIRST_DAY
# (published_first_day), then for HISTORY_DAY, the last generated day (published_history).
FIRST_DAY = "2026-03-03"
HISTORY_DAY = "2026-03-04"


def history_config():
    from touchpoint.generator import GeneratorConfig

    return GeneratorConfig(seed=11, customers=25, days=3, start_date=HISTORY_START, events_per_customer=12,
                           late_rate=0.05, duplicate_rate=0.02, malformed_rate=0.02)
