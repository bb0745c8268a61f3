"""Trace sampling: pure logic plus a clock; agent/sampling.py runs it (docs/architecture.md, "Traces")."""
