"""Headwater's daemon: CLI, config, receivers, admission control and the wiring of samplers and exporters."""

__version__ = "0.1.0"
