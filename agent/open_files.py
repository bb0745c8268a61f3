"""The process's open-file limit, raised to what the receivers' `max_connections` allow.

Every connection is a file descriptor. A limit below what the HTTP receivers may hold makes `accept` fail
with EMFILE before `max_connections` is reached: clients then wait unanswered in the listen queue instead of
getting a 503. As Go's runtime does, the soft limit is raised up to the hard limit at startup (systemd starts
services with 1024 soft and 524288 hard), and a limit still too low is reported.
"""

from __future__ import annotations

import resource

from agent.config import Config

RESERVE = 1024  # descriptors for everything but receiver connections: queue files, gRPC, exporters' clients


def wanted(config: Config) -> int:
    """Descriptors the config's HTTP receivers may hold at once, plus a reserve for the rest."""
    sections = [config.receivers.otlp.http, config.receivers.remote_write]
    return RESERVE + sum(s.max_connections for s in sections if s is not None and s.enabled)


def raise_soft_limit(needed: int) -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to `needed`, up to the hard limit (never lowers it). None when the limit is
    now enough, else (soft, hard) as they stay."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return None if soft >= needed else (soft, hard)
