"""Observability: logging, metrics, tracing, and the health probes."""
