"""Structured Streaming: ingestion into bronze/silver and the speed layer."""
