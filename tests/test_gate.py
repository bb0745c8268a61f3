"""agent.gate.Gate: what a reload holds receivers at while it swaps the pipelines behind them."""

from __future__ import annotations

import asyncio

from agent.gate import Gate


def test_a_closed_gate_holds_new_calls_until_it_opens_and_they_then_reach_what_is_there():
    async def scenario() -> None:
        gate = Gate()
        target = ["old"]
        reached: list[str] = []

        async def consume() -> None:
            reached.append(target[0])

        await gate.close()
        held = asyncio.create_task(gate.guard(consume)())
        await asyncio.sleep(0)
        assert not held.done() and reached == []
        target[0] = "new"
        gate.open()
        await held
        assert reached == ["new"]

    asyncio.run(scenario())


def test_closing_waits_for_the_calls_already_inside_to_return():
    async def scenario() -> None:
        gate = Gate()
        release = asyncio.Event()
        returned: list[str] = []

        async def slow() -> None:
            await release.wait()
            returned.append("call")

        inside = asyncio.create_task(gate.guard(slow)())
        await asyncio.sleep(0)
        assert gate.inside == 1
        closing = asyncio.create_task(gate.close())
        await asyncio.sleep(0)
        assert not closing.done()
        release.set()
        await closing
        assert returned == ["call"] and gate.inside == 0
        await inside

    asyncio.run(scenario())


def test_a_call_that_raises_leaves_the_gate_free_to_close():
    async def scenario() -> None:
        gate = Gate()

        async def broken() -> None:
            raise ValueError("bug")

        try:
            await gate.guard(broken)()
        except ValueError:
            pass
        await asyncio.wait_for(gate.close(), 1.0)

    asyncio.run(scenario())
