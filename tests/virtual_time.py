"""A clock and a sleep for tests of code that waits: time moves only when every task is waiting, straight to
the next wake-up, so a test of a 30 s backoff takes microseconds and never sleeps to prove a negative."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class VirtualTime:
    """`clock()` and `sleep()` to inject; `run_until(predicate)` drives the loop."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def settle(self) -> None:
        """Let every task that can run, run (without moving time)."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def run_until(self, done: Callable[[], bool], limit: float = 1e6) -> None:
        """Advance time wake-up by wake-up until `done()`; fail if nothing is left to wake or past `limit`
        seconds of virtual time."""
        start = self.now
        while True:
            await self.settle()
            if done():
                return
            while self._waiters and self._waiters[0][2].done():  # cancelled sleeps
                heapq.heappop(self._waiters)
            if not self._waiters:
                raise AssertionError("nothing left to wake and the condition does not hold")
            when, _, future = heapq.heappop(self._waiters)
            if when - start > limit:
                raise AssertionError(f"the condition did not hold within {limit}s of virtual time")
            self.now = max(self.now, when)
            future.set_result(None)

    async def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass, waking everything due on the way."""
        end = self.now + seconds
        while True:
            await self.settle()
            while self._waiters and self._waiters[0][2].done():
                heapq.heappop(self._waiters)
            if not self._waiters or self._waiters[0][0] > end:
                self.now = end
                await self.settle()
                return
            when, _, future = heapq.heappop(self._waiters)
            self.now = max(self.now, when)
            future.set_result(None)
