"""Airflow DAG files. Wiring only; nothing imports this package."""
