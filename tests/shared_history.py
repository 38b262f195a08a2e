"""The generated history behind the shared lakes of tests/conftest.py (ingested_history, published_history)."""

HISTORY_START = "2026-03-02"
HISTORY_DAY = "2026-03-04"  # the last generated day: the date the shared lake is published for


def history_config():
    from touchpoint.generator import GeneratorConfig

    return GeneratorConfig(seed=11, customers=25, days=3, start_date=HISTORY_START, events_per_customer=12,
                           late_rate=0.05, duplicate_rate=0.02, malformed_rate=0.02)
