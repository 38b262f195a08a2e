"""The contract: the event envelope JSON Schema and everything derived from it."""
