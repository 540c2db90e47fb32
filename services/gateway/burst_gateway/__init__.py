"""Burst gateway service: HTTP API, auth, calls, logs."""
