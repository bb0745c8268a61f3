"""Trace sampling: pure logic plus a clock (lands with the tail-sampling issue)."""
