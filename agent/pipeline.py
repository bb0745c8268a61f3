"""The metrics pipeline: each batch a receiver accepted goes to every exporter it lists, in order.

The batch is shared, not copied: exporters read it and never mutate it (see agent.component). Traces take
their own pipeline through the sampler (agent.sampling.SampledTraces).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Consume = Callable[[Any], Awaitable[None]]


class FanOut:
    def __init__(self, signal: str, consumers: Sequence[tuple[str, Consume]]) -> None:
        if not consumers:
            raise ValueError(f"the {signal} pipeline needs at least one exporter")
        self.signal = signal
        self._consumers = list(consumers)

    @property
    def exporter_names(self) -> list[str]:
        return [name for name, _ in self._consumers]

    async def consume(self, batch: Any) -> None:
        for _name, consume in self._consumers:
            await consume(batch)
