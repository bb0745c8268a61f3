"""A door between the receivers and the pipelines, which a reload closes while it swaps what lies behind it.

    gate = Gate()
    consume = gate.guard(pipeline.consume)      # what a receiver calls
    await gate.close()                          # new calls wait; returns once the calls inside have returned
    ...replace exporters, rewire pipelines...
    gate.open()                                 # the waiting calls go on, to what is there now

Why: an exporter whose URL changed is stopped and rebuilt on the same queue, and the two cannot both be open
(a disk queue locks its directory). A request that reached the old one after it handed its queue over would
fail, and one caught halfway (between a delta-to-cumulative save and the queue) would be answered with an
error. Holding new calls at the door for the moment of the swap costs a client a short wait, never data.
Calls already inside are not interrupted: `close` waits for them, bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent.logs import kv

log = logging.getLogger("headwater.agent")

R = TypeVar("R")


class Gate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._inside = 0
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def inside(self) -> int:
        """Calls that went through and have not returned yet."""
        return self._inside

    def guard(self, call: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        """`call`, entered through the gate."""

        async def guarded(*args: Any, **kwargs: Any) -> R:
            while not self._open.is_set():
                await self._open.wait()
            self._inside += 1
            self._empty.clear()
            try:
                return await call(*args, **kwargs)
            finally:
                self._inside -= 1
                if not self._inside:
                    self._empty.set()

        return guarded

    async def close(self, timeout: float = 10.0) -> None:
        """Hold every new call, and return once the calls inside have returned (or after `timeout`, logged)."""
        self._open.clear()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("calls into the pipelines still running while a reload goes on", **kv(calls=self._inside))

    def open(self) -> None:
        self._open.set()
