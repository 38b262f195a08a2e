"""The contract: the versioned event envelope (event.v1.json) and everything derived from it.

Depends on nothing of ours. Spark schemas live in touchpoint.schemas.lake.
"""

from touchpoint.schemas.envelope import (
    CAMPAIGN_COLUMNS, envelope_fields, envelope_schema, event_types, identifier_columns, pii_columns,
    schema_version,
)

__all__ = [
    "CAMPAIGN_COLUMNS", "envelope_fields", "envelope_schema", "event_types", "identifier_columns",
    "pii_columns", "schema_version",
]
