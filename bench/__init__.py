"""Benchmarks and fault-drill support for touchpoint (not part of the installed package).

Run from the repository root: `python -m bench.run_all` (what `make bench` does), or one script,
e.g. `python -m bench.streaming_drain --events 100000`.
"""
