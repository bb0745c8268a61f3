"""`headwater run | validate | status | version` (and `headwater --version`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from typing import Any

from agent import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description="Headwater telemetry agent")
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent (default config without -c)")
    run.add_argument("-c", "--config", help="config file (YAML); default: the config shipped with the package")
    validate = sub.add_parser("validate", help="check a config file (the one `run` uses without -c by default) "
                              "and print every problem with its key path")
    validate.add_argument("-c", "--config", help="config file (YAML); default: the config shipped with the package")
    status = sub.add_parser("status", help="show how the running agent is doing, from its telemetry endpoint")
    status.add_argument("-c", "--config", help="the agent's config file: status reads telemetry.endpoint from it; "
                        "default: the config shipped with the package")
    status.add_argument("--endpoint", metavar="HOST:PORT", help="the agent's telemetry endpoint (overrides -c)")
    status.add_argument("--json", action="store_true", help="print one JSON document for scripts")
    status.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between the two reads that per-second rates come from (default 1; 0: one "
                        "read, no rates)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up on an answer after this long (default 5)")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"headwater {__version__}")
        return 0
    if args.command == "status":
        from agent.status import main as status_main

        return status_main(config=args.config, endpoint=args.endpoint, as_json=args.json, interval=args.interval,
                           timeout=args.timeout)
    from agent.config import ConfigError, check_file

    try:
        checked = check_file(args.config)  # what a reload (SIGHUP) checks too
    except ConfigError as exc:
        where = exc.source or args.config or "(default config)"
        print(f"{where}: {len(exc.issues)} problem(s)", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    config = checked.config
    if args.command == "validate":
        for warning in checked.warnings:
            print(f"{args.config or '(default config)'}: warning: {warning}", file=sys.stderr)
        print(f"{args.config or '(default config)'}: ok")
        return 0
    from agent import logs
    from agent.malloc_tuning import tune_malloc
    from agent.service import Agent
    from agent.telemetry import describe_process

    logs.configure(config.telemetry.log_level)
    describe_process(os.path.abspath(args.config) if args.config else "(default config)")
    # The trace buffer allocated one list per trace (now untracked bytes and tuples); at the default gen-0
    # threshold (700) the cyclic GC ran every few requests and took ~12% of the agent's CPU in bench/ingest.py. Objects that live for the whole
    # run (modules, config, components) are frozen out of every collection.
    gc.set_threshold(50_000, 20, 100)
    _raise_open_files_limit(config)
    tune_malloc()
    try:
        agent = Agent(config)
        gc.freeze()
        asyncio.run(agent.run_until_signal(args.config))
    except OSError as exc:
        print(f"headwater: cannot start: {exc}", file=sys.stderr)
        return 1
    from agent.shutdown_summary import EXIT_DROPPED

    return EXIT_DROPPED if agent.dropped_at_shutdown else 0


def _raise_open_files_limit(config: Any) -> None:
    """Enough descriptors for the receivers' max_connections (agent/open_files.py); a warning when the hard limit
    is lower."""
    import logging

    from agent.logs import kv
    from agent.open_files import raise_soft_limit, wanted

    needed = wanted(config)
    short = raise_soft_limit(needed)
    if short is not None:
        soft, hard = short
        logging.getLogger("headwater.open_files").warning(
            "the open-file limit is below what the receivers' max_connections allow: past it accept fails and "
            "clients wait instead of getting 503; raise LimitNOFILE (ulimit -n) or lower max_connections",
            **kv(limit=soft, hard_limit=hard, wanted=needed))

