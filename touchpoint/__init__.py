"""touchpoint: a self-hosted marketing data platform."""

__version__ = "0.1.0"
