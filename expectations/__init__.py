"""Great Expectations suites, one JSON file per table, and the audit runner."""
