"""Telemetry shared by every layer: Prometheus metrics and per-request traces.

A bottom layer: it imports nothing else from ``sgl``, so the engine, the backends and
the server can all report into it without importing each other.
"""
