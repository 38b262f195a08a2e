"""Core: config, Spark session, lake catalog and the transforms both layers share. Depends only on schemas."""
