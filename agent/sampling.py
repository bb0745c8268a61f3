"""From the `sampling` config section to the sampler's settings, and the trace pipeline that runs the sampler.

The pipeline owns the decision loop: every 50 ms it decides what is due, in slices of a few thousand traces
with a yield to the event loop between them (one big pass would block receivers for hundreds of ms), and
hands the kept spans to every trace exporter. When exporters fall behind, the lowest tiers are shed first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics

from agent.config.schema import SPAN_KINDS, SamplingConfig
from agent.logs import kv
from agent.wellformed import wellformed
from samplers.settings import Match, SamplingSettings, Tier
from samplers.tail import DROP_REASONS, REASONS, Ingested, TailSampler

log = logging.getLogger("headwater.sampling")

_TICK_SECONDS = 0.05
_SLICE = 2000


def settings_from_config(c: SamplingConfig) -> SamplingSettings:
    tiers = []
    for t in c.tiers:
        w = t.when
        match = Match() if w is None else Match(
            resource_attributes=tuple((k, tuple(v)) for k, v in w.resource_attributes.items()),
            span_attributes=tuple((k, tuple(v)) for k, v in w.span_attributes.items()),
            span_names=tuple(w.span_names),
            span_kinds=tuple(SPAN_KINDS.index(k) + 1 for k in w.span_kinds),
            root_only=w.root_only,
        )
        tiers.append(Tier(t.name, t.rate, match, key=tuple(t.key)))
    return SamplingSettings(
        decision_wait=c.decision_wait, root_delay=c.root_delay, max_memory=c.max_memory,
        max_trace_bytes=c.max_trace_size, decision_cache_bytes=c.decision_cache_size,
        max_spans_per_second=c.max_spans_per_second, keep_errors=c.always_keep.errors,
        keep_http_5xx=c.always_keep.http_5xx, latency=c.always_keep.latency, annotate=c.annotate,
        tiers=tuple(tiers))


Export = Callable[[bytes, int], Awaitable[None]]


class SampledTraces:
    """The trace pipeline: receivers hand it request bytes; exporters get the kept spans."""

    def __init__(self, sampler: TailSampler, exporters: Sequence[tuple[str, Export]],
                 backlog: Callable[[], int], backlog_limit: int) -> None:
        self.sampler = sampler
        self._exporters = list(exporters)
        self._backlog = backlog
        self._backlog_limit = backlog_limit
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._register_metrics()
        # -- malformed spans (agent.wellformed) --
        self._warned_malformed = False
        self._malformed = metrics.get_meter("headwater.sampling").create_counter(
            "headwater_sampling_malformed_spans", unit="{span}",
            description="Kept spans dropped before export because protobuf refuses them (a string that is not "
            "UTF-8, values nested past protobuf's limit): the sampler reads spans without parsing them.")
        self._malformed.add(0)

    def set_exporters(self, exporters: Sequence[tuple[str, Export]], backlog: Callable[[], int],
                      backlog_limit: int) -> None:
        """Hand kept spans to these from now on (a reload changed the trace exporters). Buffered traces stay."""
        self._exporters = list(exporters)
        self._backlog = backlog
        self._backlog_limit = backlog_limit

    @property
    def exporter_names(self) -> list[str]:
        return [name for name, _ in self._exporters]

    @property
    def queued_bytes(self) -> int:
        return self.sampler.buffered_bytes + self.sampler.pending_output_bytes

    async def consume(self, data: bytes) -> Ingested:
        result = self.sampler.ingest(data)
        if self.sampler.pending_output_bytes:  # late spans of kept traces go straight out
            await self._export()
        return result

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="sampling-decisions")

    async def shutdown(self, timeout: float) -> None:
        """Decide every buffered trace now and hand the kept spans to the exporters before they shut down."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        decided = self.sampler.decide_all()
        if decided:
            log.info("decided buffered traces at shutdown", **kv(traces=decided))
        await self._export()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                self._shed_if_behind()
                while self.sampler.tick(_SLICE) == _SLICE:
                    await self._export()
                    await asyncio.sleep(0)
                await self._export()
            except Exception:  # a bug must not stop every later decision: log it and keep deciding
                log.exception("sampling decision pass failed")
            await asyncio.sleep(_TICK_SECONDS)

    def _shed_if_behind(self) -> None:
        backlog = self._backlog()
        level = shed_level(backlog, self._backlog_limit, len(self.sampler.settings.tiers))
        if level != self.sampler.shed_tiers:
            log.warning("exporters are behind: shedding the lowest tiers" if level else "exporters caught up",
                        **kv(shed_tiers=level, backlog_bytes=backlog))
            self.sampler.shed(level)

    async def _export(self) -> None:
        for data, spans in self.sampler.take_output():
            data, spans, dropped, problem = wellformed(data, spans)
            if dropped:
                self._malformed.add(dropped)
                level = logging.DEBUG if self._warned_malformed else logging.WARNING
                self._warned_malformed = True
                log.log(level, "kept spans dropped before export: protobuf refuses them",
                        **kv(spans=dropped, problem=problem))
            if not spans:
                continue
            for _name, export in self._exporters:
                await export(data, spans)

    def _register_metrics(self) -> None:
        meter = metrics.get_meter("headwater.sampling")
        stats = self.sampler.stats

        def table(name: str, attr: str, known: Callable[[], Iterable[str]]) -> Callable[[Any], list[metrics.Observation]]:
            """Every key counted so far, and 0 for each `known` one not counted yet (a panel shows 0, not
            "no data")."""
            def observe(_o: Any) -> list[metrics.Observation]:
                counts = getattr(stats, name)
                return [metrics.Observation(counts.get(k, 0), {attr: k}) for k in dict.fromkeys([*known(), *counts])]
            return observe

        tiers = lambda: self.sampler.tier_names  # noqa: E731 - reload may rename tiers
        def one(value: Callable[[], float]) -> Callable[[Any], list[metrics.Observation]]:
            return lambda _o: [metrics.Observation(value())]

        counters = (
            ("headwater_sampling_traces_in", one(lambda: stats.traces_in), "{trace}",
             "Traces the sampler started buffering (a trace counts once, at its first span)."),
            ("headwater_sampling_spans_in", one(lambda: stats.spans_in), "{span}",
             "Spans the sampler received, before any decision."),
            ("headwater_sampling_kept_traces", table("kept_traces", "tier", tiers), "{trace}", "Traces kept, by tier."),
            ("headwater_sampling_kept_spans", table("kept_spans", "tier", tiers), "{span}",
             "Spans of kept traces, by tier (late spans of a kept trace are not counted here)."),
            ("headwater_sampling_dropped_traces", table("dropped_traces", "tier", tiers), "{trace}",
             "Traces dropped, by tier: not sampled, or shed under memory pressure."),
            ("headwater_sampling_dropped_spans", table("dropped_spans", "tier", tiers), "{span}",
             "Spans of dropped traces, by tier."),
            ("headwater_sampling_kept_spans_by_reason", table("kept_by_reason", "reason", lambda: REASONS), "{span}",
             "Spans kept, by why: tier (its tier's rate), error, http_5xx or latency (forced keeps)."),
            ("headwater_sampling_dropped_spans_by_reason", table("drops_by_reason", "reason", lambda: DROP_REASONS), "{span}",
             "Spans dropped, by why: sampled (not chosen at its tier's rate now, shedding included), "
             "memory_pressure (past sampling.max_memory), late_span_of_dropped_trace (arrived after its trace "
             "was dropped)."),
        )
        for name, callback, unit, description in counters:
            meter.create_observable_counter(name, [callback], unit=unit, description=description)
        # bounded state (issue 10, item 6)
        meter.create_observable_counter(
            "headwater_sampling_state_evictions",
            [lambda _o: [metrics.Observation(self.sampler.decisions_evicted, {"state": "decision_cache"}),
                         metrics.Observation(self.sampler.keys_evicted, {"state": "key_counts"}),
                         metrics.Observation(self.sampler.suffixes_evicted, {"state": "threshold_suffixes"})]],
            unit="{entry}",
            description="Entries of the sampler's bounded state dropped to stay within their bound, by state: "
            "decision_cache (oldest decisions past sampling.decision_cache_size), key_counts (per-key rate "
            "counts decayed away or refused past 10,000 keys a tier), threshold_suffixes (cache cleared past "
            "4096 entries). Traces evicted from the buffer are in headwater_sampling_dropped_spans_by_reason.")
        meter.create_observable_gauge(
            "headwater_sampling_buffered_bytes", [one(lambda: self.sampler.buffered_bytes)], unit="By",
            description="Bytes of spans buffered while their traces wait for a decision (bounded by "
            "sampling.max_memory).")
        meter.create_observable_gauge(
            "headwater_sampling_buffered_traces", [one(lambda: self.sampler.buffered_traces)], unit="{trace}",
            description="Traces buffered, waiting for a decision.")
        meter.create_observable_gauge(
            "headwater_sampling_decision_lag_seconds", [one(lambda: stats.decision_lag_seconds)], unit="s",
            description="How far past its due time the last decided trace was decided.")
        meter.create_observable_gauge(
            "headwater_sampling_effective_rate",
            [lambda _o: [metrics.Observation(r, {"tier": n}) for r, n in
                         zip(self.sampler.effective_rates, self.sampler.tier_names)]],
            description="The rate each tier samples at now: its configured rate, as the max_spans_per_second "
            "budget sets it, or 0 while the tier is shed because trace exporters are behind.")


def shed_level(backlog: int, limit: int, tiers: int) -> int:
    """How many of the lowest tiers to drop outright while trace exporters hold `backlog` bytes of their `limit`:
    over half, the lowest; over 80 %, all but the first. The first tier (P0) is never shed, so a sampler with
    one tier sheds nothing (it used to shed its only tier between 50 and 80 % and none above)."""
    if backlog > limit * 0.8:
        return max(0, tiers - 1)
    if backlog > limit * 0.5:
        return min(1, tiers - 1)
    return 0


def new_sampler(config: SamplingConfig) -> TailSampler:
    return TailSampler(settings_from_config(config), time.monotonic)
