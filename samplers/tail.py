"""The tail sampler: buffers spans by trace, decides each trace once, and emits the kept spans re-framed.

Spans are held as their wire bytes, never as parsed objects (see docs/architecture.md: a parsed span keeps its whole
request alive). A trace is one tuple, `(header..., groups, spans)`, where `spans` is one bytes (a bytearray once a
second run of spans arrives) holding a segment per run of spans: `varint(index into groups) varint(count)`, the
spans' lengths (native unsigned ints), then the spans. Nothing of a buffered trace is a container the cyclic GC
must walk: bytes and bytearrays are not tracked, and a tuple holding only untracked objects is untracked by the
first collection that sees it (the tuple is replaced, not mutated, once per run of spans). A list per trace stayed
tracked for as long as the trace was buffered, so collections walked every buffered trace and the spans it held.
Everything a decision needs — root seen, error, HTTP 5xx, start/end, tier, incoming threshold — is folded into
the trace's header as spans arrive, so deciding reads no span again.

A trace is decided `root_delay` after its root arrives, `decision_wait` after its first span, or as soon as
it holds `max_trace_bytes`, whichever is first. `tick` decides what is due, in slices the caller bounds.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from samplers import consistent, sweep
from samplers.controller import BudgetController, key_rates
from samplers.decisions import DROPPED, DecisionCache
from samplers.rules import TierMatcher
from samplers.settings import SamplingSettings
from samplers.wire import (
    WireError,
    find_attribute,
    frame_request,
    read_varint,
    resource_attributes_bytes,
    scan_request,
    span_facts,
    varint_bytes,
    with_attributes,
    with_trace_state,
)

# Trace entry slots. _ROOT_AT: the root's ordinal among the trace's spans (from 1; 0: no root yet). _GROUPS: the
# (resource, scope) groups the trace's runs of spans came in, the last run's last.
_FIRST, _DEADLINE, _NBYTES, _NSPANS, _TIER, _FLAGS, _MIN_START, _MAX_END, _TH_IN, _RV, _ROOT_AT = range(11)
_GROUPS, _SPANS = 11, 12
_NO_START = 1 << 64
_ROOT, _ERROR, _HTTP5XX, _TRACESTATE, _CAPPED = 1, 2, 4, 8, 16
_LENGTHS = "I"  # array typecode of the span lengths in a segment

# Live-memory model, checked against tracemalloc in tests/test_samplers_memory.py: a span costs its bytes plus
# its length (the bytearray's spare capacity, once the trace has one, is charged as it grows); a trace its dict
# slot, key, entry tuple and header values, plus its schedule entries; a (resource, scope) group its two bytes
# objects and tuple, shared by its spans, and a slot in _GROUPS wherever a run of its spans follows another
# group's; a run its segment header.
SPAN_OVERHEAD = array(_LENGTHS).itemsize
GROUP_SLOT = 8
GROUP_OVERHEAD = 33 * 2 + 56


REASONS = ("tier", "error", "http_5xx", "latency")
# Why spans were dropped: not sampled (their tier's rate, shedding included), evicted past max_memory, or late
# spans of a trace already dropped (every key of SamplerStats.drops_by_reason).
DROP_REASONS = ("sampled", "memory_pressure", "late_span_of_dropped_trace")
_SERVER = 2
_STATUS_ERROR = 2
_ZERO_SPAN_ID = bytes(8)
_OUTPUT_BYTES = 1 << 20
KEY_WINDOW = 30.0          # seconds over which key counts decay (e-folding)
MAX_KEYS_PER_TIER = 10_000
MAX_SUFFIXES = 4096        # (threshold, tier, reason) -> encoded suffix; thresholds come from clients' tracestate
# The eviction index: one heap entry (a 4-tuple, a fresh int and a list slot) per run of spans closed while it
# is kept (only while the buffer is over half of max_memory). Sweeps keep it at about one and a half entries
# per trace (plus a constant slack), so each trace is charged that, whether the index exists at the time or not.
EVICTION_ENTRY = 72 + 32 + 8
_COMPACT_SLACK = 1024
TRACE_OVERHEAD = 480 + 3 * EVICTION_ENTRY // 2


class SpanObserver(Protocol):
    def observe(self, resource_part: bytes, span: bytes, name: bytes, kind: int, status_code: int,
                start_ns: int, end_ns: int) -> None:
        """Called once per accepted span on the ingest path, before sampling: must cost well under a µs."""
        ...


@dataclass
class Ingested:
    spans: int = 0
    rejected: int = 0
    message: str = ""


@dataclass
class SamplerStats:
    """Counts since start; the agent exports them as self-telemetry."""

    traces_in: int = 0
    spans_in: int = 0
    kept_traces: dict[str, int] = field(default_factory=dict)    # by tier name
    kept_spans: dict[str, int] = field(default_factory=dict)
    dropped_traces: dict[str, int] = field(default_factory=dict)  # by tier name
    dropped_spans: dict[str, int] = field(default_factory=dict)
    kept_by_reason: dict[str, int] = field(default_factory=dict)
    drops_by_reason: dict[str, int] = field(default_factory=dict)  # sampled, memory_pressure, late_dropped, ...
    late_kept_spans: int = 0
    decision_lag_seconds: float = 0.0  # how far past its deadline the last decided trace was

    def add(self, table: dict[str, int], key: str, n: int) -> None:
        table[key] = table.get(key, 0) + n


class TailSampler:
    def __init__(self, settings: SamplingSettings, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stats = SamplerStats()
        self._traces: dict[bytes, tuple] = {}
        self._schedule: list[tuple[float, bytes]] = []
        self._decisions = DecisionCache(settings.decision_cache_bytes)
        self._out: dict[tuple[bytes, bytes], list[bytes]] = {}
        self._out_bytes = 0
        self.buffered_bytes = 0
        # (-tier, -bytes, first seen, trace ID) per run closed: popping the least gives the trace eviction takes
        # next (lowest tier, largest, oldest). Entries go stale as traces grow or are decided; a stale one is
        # recognised at pop by its tier and bytes no longer matching. None while the buffer is under half full.
        self._eviction: list[tuple[int, int, float, bytes]] | None = None
        self._eviction_sweep = -1  # cursor of the sweep taking stale entries out of it (samplers/sweep.py)
        self._schedule_sweep = -1
        self.suffixes_evicted = 0
        self.keys_evicted = 0   # per-key counts that decayed away or were refused past MAX_KEYS_PER_TIER
        self.shed_tiers = 0  # the lowest this-many tiers are dropped outright (exporter pressure)
        self._controller: BudgetController | None = None
        # Sees every span before any decision (RED metrics stay exact while traces are sampled).
        self.span_observer: SpanObserver | None = None
        self._apply(settings)

    # -- configuration ---------------------------------------------------------------------------------

    def _apply(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self._matcher = TierMatcher(settings.tiers)
        self._names = [t.name for t in settings.tiers]
        self._configured = [t.rate for t in settings.tiers]
        self._latency_ns = int(settings.latency * 1e9) if settings.latency > 0 else 0
        self._decisions.resize(settings.decision_cache_bytes)
        if settings.max_spans_per_second > 0:
            if self._controller is None:
                self._controller = BudgetController(settings.max_spans_per_second, self._configured)
            else:
                self._controller.set_budget(settings.max_spans_per_second)
                self._controller.set_tiers(self._configured)
        else:
            self._controller = None
        self._suffixes: dict[tuple[int, int, int], bytes] = {}
        # Tiers with a `key`: decayed trace counts per key, and the threshold each key gets (rare keys higher).
        self._key_tiers = {i: t.key for i, t in enumerate(settings.tiers) if t.key}
        old_counts = getattr(self, "_key_counts", {})
        self._key_counts: dict[int, dict[tuple, float]] = {i: old_counts.get(i, {}) for i in self._key_tiers}
        self._key_thresholds: dict[int, dict[tuple, int]] = {i: {} for i in self._key_tiers}
        self._rates_at = float("-inf")
        self._refresh_rates(self.clock())

    def reconfigure(self, settings: SamplingSettings) -> None:
        """New tiers and limits take effect now; buffered traces stay and are re-matched against the new tiers."""
        self._apply(settings)
        traces = self._traces
        for trace_id, entry in traces.items():
            traces[trace_id] = entry[:_TIER] + (self._rematch(entry),) + entry[_TIER + 1:]
        if self._eviction is not None:
            self._start_index()

    def _rematch(self, entry: tuple) -> int:
        tier = self._matcher.catch_all
        masks: dict[bytes, tuple[bool, ...]] = {}
        for group, span in _spans(entry):
            mask = masks.get(group[0])
            if mask is None:
                mask = masks[group[0]] = self._matcher.resource_mask(group[0])
            facts = span_facts(span)
            tier = self._matcher.span_tier(span, facts[4], facts[5], not facts[2], mask, tier)
            if tier == 0:
                break
        return tier

    # -- rates -------------------------------------------------------------------------------------------

    @property
    def effective_rates(self) -> list[float]:
        return list(self._rates)

    @property
    def tier_names(self) -> list[str]:
        return list(self._names)

    def shed(self, tiers: int) -> None:
        """Drop the lowest `tiers` tiers outright from now on (0 = none), e.g. while exporters are behind."""
        if tiers != self.shed_tiers:
            self.shed_tiers = tiers
            self._refresh_rates(self.clock())

    def _refresh_rates(self, now: float) -> None:
        rates = self._controller.rates(now) if self._controller is not None else list(self._configured)
        if self.shed_tiers:
            for i in range(max(0, len(rates) - self.shed_tiers), len(rates)):
                rates[i] = 0.0
            if self._controller is not None:
                self._controller.set_applied_rates(rates)  # so its feedback does not chase the shed spans
        self._rates = rates
        self._thresholds = [consistent.threshold_for(r) for r in rates]
        if self._key_tiers:
            elapsed = min(now - self._rates_at, KEY_WINDOW * 10) if self._rates_at > float("-inf") else 0.0
            decay = math.exp(-elapsed / KEY_WINDOW)
            for tier, counts in self._key_counts.items():
                for key in list(counts):
                    counts[key] *= decay
                    if counts[key] < 0.01:
                        del counts[key]
                        self.keys_evicted += 1
                self._key_thresholds[tier] = {k: consistent.threshold_for(r)
                                              for k, r in key_rates(rates[tier], counts).items()}
        self._rates_at = now

    # -- ingest ------------------------------------------------------------------------------------------

    def ingest(self, data: bytes) -> Ingested:
        """Take one ExportTraceServiceRequest's bytes. Raises wire.WireError if they are malformed."""
        scanned = scan_request(data)
        now = self.clock()
        s = self.settings
        traces, decisions = self._traces, self._decisions._decisions
        schedule = self._schedule
        matcher = self._matcher
        wait, root_delay, cap = s.decision_wait, s.root_delay, s.max_trace_bytes
        keep_errors, keep_5xx = s.keep_errors, s.keep_http_5xx
        catch_all = matcher.catch_all
        quick = matcher.quick_keys
        quick1 = quick[0] if quick is not None and len(quick) == 1 else None
        added = 0
        fresh: dict[bytes, None] = {}  # traces new in this request: scheduled once, at its end
        rejected, reject_message = scanned.rejected, scanned.reject_message
        observe = self.span_observer.observe if self.span_observer is not None else None
        for resource_part, scopes in scanned.groups:
            mask = matcher.resource_mask(resource_part) if catch_all else ()
            for scope_part, spans in scopes:
                if not spans:
                    continue
                group = (resource_part, scope_part)
                base = SPAN_OVERHEAD + (len(resource_part) + len(scope_part) + GROUP_OVERHEAD) // len(spans) + 1
                # Consecutive spans of one trace (the usual layout of an SDK batch) update locals, written
                # back to the trace's entry once per run: most per-span list reads and writes disappear.
                entry = None
                run_id = b""
                late = None
                frames: list[bytes] = []
                nbytes = nspans = flags = tier = root_at = 0
                min_start = max_end = 0
                deadline = 0.0
                th_in = rv = None
                for span in spans:
                    try:
                        trace_id, _sid, parent, tracestate, name, kind, start, end, code = span_facts(span)
                    except WireError as exc:
                        # Refused alone (partial success): nothing of it is buffered, so a retry of the
                        # request never duplicates the spans already taken.
                        rejected += 1
                        reject_message = reject_message or f"malformed span: {exc}"
                        continue
                    if len(trace_id) != 16:  # a repeated trace_id field: the last one wins, as in protobuf
                        rejected += 1
                        reject_message = reject_message or f"span with a trace ID of {len(trace_id)} bytes"
                        continue
                    if parent == _ZERO_SPAN_ID:  # all-zero parent: a root, as the Collector treats it
                        parent = b""
                    if observe is not None:
                        observe(resource_part, span, name, kind, code, start, end)
                    if trace_id != run_id:
                        if entry is not None:  # close the previous run
                            added += self._close_run(run_id, entry, group, frames, nbytes, nspans, flags, tier,
                                                     min_start, max_end, deadline, root_at, th_in, rv, now, cap,
                                                     fresh)
                        run_id = trace_id
                        entry = traces.get(trace_id)
                        late = None
                        if entry is None:
                            # A buffered trace is never in the decision cache: only new IDs are looked up.
                            late = decisions.get(trace_id)
                            if late is None:
                                # Stored when its run closes; scheduled once at the end of this request, with
                                # the deadline it settles on.
                                entry = (now, now + wait, TRACE_OVERHEAD + GROUP_SLOT, 0, catch_all, 0,
                                         _NO_START, 0, None, None, 0, (group,), b"")
                                fresh[trace_id] = None
                                added += TRACE_OVERHEAD + GROUP_SLOT
                        if entry is not None:
                            frames = []
                            nbytes, nspans, flags, tier = 0, 0, entry[_FLAGS], entry[_TIER]
                            min_start, max_end = entry[_MIN_START], entry[_MAX_END]
                            deadline, root_at, th_in, rv = entry[_DEADLINE], entry[_ROOT_AT], entry[_TH_IN], entry[_RV]
                    if entry is None:
                        self._late(group, span, late, tracestate)
                        continue
                    frames.append(span)
                    nbytes += len(span) + base
                    nspans += 1
                    if not parent and not flags & _ROOT:
                        flags |= _ROOT
                        root_at = entry[_NSPANS] + nspans
                        due = now + root_delay
                        if due < deadline:
                            deadline = due
                            if trace_id not in fresh:
                                heapq.heappush(schedule, (due, trace_id))
                    if code == _STATUS_ERROR and keep_errors:
                        flags |= _ERROR
                    if keep_5xx and kind == _SERVER and b"status_code" in span and _is_5xx(span):
                        flags |= _HTTP5XX
                    if tracestate:
                        flags |= _TRACESTATE
                        th, span_rv = consistent.parse_ot(tracestate)
                        if th is not None:
                            th_in = th if th_in is None else max(th, th_in)
                        if span_rv is not None:
                            rv = span_rv
                    if start and start < min_start:
                        min_start = start
                    if end > max_end:
                        max_end = end
                    if tier and (quick1 in span if quick1 is not None else
                                 quick is None or any(k in span for k in quick)):
                        tier = matcher.span_tier(span, name, kind, not parent, mask, tier)
                if entry is not None:
                    added += self._close_run(run_id, entry, group, frames, nbytes, nspans, flags, tier, min_start,
                                             max_end, deadline, root_at, th_in, rv, now, cap, fresh)
        self.buffered_bytes += added
        for trace_id in fresh:
            entry = traces.get(trace_id)
            if entry is not None:
                heapq.heappush(schedule, (entry[_DEADLINE], trace_id))
        new_traces = len(fresh)
        accepted = scanned.spans - (rejected - scanned.rejected)
        self.stats.spans_in += accepted
        self.stats.traces_in += new_traces
        if self._eviction is None:
            if self.buffered_bytes > s.max_memory >> 1:
                self._start_index()
        elif self.buffered_bytes < s.max_memory >> 2:
            self._eviction = None
            self._eviction_sweep = -1
        if self.buffered_bytes > s.max_memory:
            self._evict()
        self._sweep(4 * scanned.spans + _COMPACT_SLACK)
        return Ingested(accepted, rejected, reject_message)

    def _close_run(self, trace_id: bytes, entry: tuple, group: tuple[bytes, bytes], frames: list[bytes],
                   nbytes: int, nspans: int, flags: int, tier: int, min_start: int, max_end: int, deadline: float,
                   root_at: int, th_in: int | None, rv: int | None, now: float, cap: int,
                   fresh: dict[bytes, None]) -> int:
        """Store a run of spans and its totals as the trace's new entry; a trace past `max_trace_bytes` is due
        now. Returns the bytes the run added."""
        groups = entry[_GROUPS]
        if groups[-1] is not group:
            groups += (group,)
            nbytes += GROUP_SLOT
        index, count = len(groups) - 1, len(frames)
        head = bytes((index, count)) if index < 0x80 and count < 0x80 else varint_bytes(index) + varint_bytes(count)
        frames[:0] = (head, array(_LENGTHS, map(len, frames)).tobytes())
        joined = b"".join(frames)
        nbytes += len(head)
        spans = entry[_SPANS]
        if not spans:
            spans = joined  # the usual trace arrives in one run: exact size, no spare capacity
        else:
            if type(spans) is bytes:
                charged = len(spans)
                spans = bytearray(spans)
            else:
                charged = spans.__alloc__()
            spans += joined
            nbytes += spans.__alloc__() - charged - len(joined)  # the spare capacity, as it grows
        total = entry[_NBYTES] + nbytes
        if total > cap and not flags & _CAPPED:
            flags |= _CAPPED
            deadline = now
            if trace_id not in fresh:
                heapq.heappush(self._schedule, (now, trace_id))
        entry = (entry[_FIRST], deadline, total, entry[_NSPANS] + nspans, tier, flags, min_start, max_end, th_in, rv,
                 root_at, groups, spans)
        self._traces[trace_id] = entry
        if self._eviction is not None:
            self._index(trace_id, entry)
        return nbytes

    def _late(self, group: tuple[bytes, bytes], span: bytes, decided: tuple, tracestate: str) -> None:
        if decided is DROPPED or not decided:
            self.stats.add(self.stats.drops_by_reason, "late_span_of_dropped_trace", 1)
            return
        threshold, tier, reason = decided
        if tracestate:  # the late span's own incoming th is only ever raised, never lowered
            threshold = consistent.combine_th(consistent.parse_ot(tracestate)[0], threshold)
        self.stats.late_kept_spans += 1
        if self._controller is not None:
            self._controller.observe_kept(1, self.clock())
        self._emit(group, self._annotate(span, threshold, tier, reason, tracestate))

    # -- decisions ---------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._schedule[0][0] if self._schedule else None

    def tick(self, limit: int = 2000) -> int:
        """Decide up to `limit` traces whose time has come; returns how many were decided."""
        now = self.clock()
        if now - self._rates_at >= 1.0:
            self._refresh_rates(now)
        schedule, traces = self._schedule, self._traces
        decided = 0
        while schedule and decided < limit and schedule[0][0] <= now:
            due, trace_id = heapq.heappop(schedule)
            entry = traces.get(trace_id)
            if entry is None or entry[_DEADLINE] != due:
                continue  # decided already, or rescheduled earlier
            self.stats.decision_lag_seconds = now - due
            self._decide(trace_id, entry, now)
            decided += 1
        return decided

    def decide_all(self) -> int:
        """Decide every buffered trace now (shutdown): nothing buffered is lost unaccounted."""
        now = self.clock()
        self._refresh_rates(now)
        count = 0
        for trace_id, entry in list(self._traces.items()):
            self._decide(trace_id, entry, now)
            count += 1
        self._schedule.clear()
        self._eviction = None
        self._eviction_sweep = self._schedule_sweep = -1
        return count

    def _decide(self, trace_id: bytes, entry: tuple, now: float) -> None:
        del self._traces[trace_id]
        self.buffered_bytes -= entry[_NBYTES]
        nspans, tier, flags = entry[_NSPANS], entry[_TIER], entry[_FLAGS]
        stats, name = self.stats, self._names[tier]
        reason = 0
        if flags & _ERROR:
            reason = 1
        elif flags & _HTTP5XX:
            reason = 2
        elif (self._latency_ns and entry[_MIN_START] != _NO_START
              and entry[_MAX_END] - entry[_MIN_START] > self._latency_ns):
            reason = 3
        if reason:
            threshold = consistent.combine_th(entry[_TH_IN], 0)  # a forced keep never lowers an incoming th
            keep = True
            if self._controller is not None:
                self._controller.observe_forced(nspans, now)
        else:
            if self._controller is not None:
                self._controller.observe(tier, nspans, now)
            threshold = self._thresholds[tier]
            if tier in self._key_tiers:
                threshold = self._key_threshold(tier, entry, threshold)
            if entry[_TH_IN] is not None:
                threshold = consistent.combine_th(entry[_TH_IN], threshold)
            rv = entry[_RV]
            randomness = rv if rv is not None else int.from_bytes(trace_id[9:16], "big")
            keep = randomness >= threshold and threshold < consistent.MAX_THRESHOLD
        if not keep:
            self._decisions.put(trace_id, DROPPED)
            stats.add(stats.dropped_traces, name, 1)
            stats.add(stats.dropped_spans, name, nspans)
            stats.add(stats.drops_by_reason, "sampled", nspans)
            return
        if self._controller is not None:
            self._controller.observe_kept(nspans, now)
        self._decisions.put(trace_id, (threshold, tier, reason))
        stats.add(stats.kept_traces, name, 1)
        stats.add(stats.kept_spans, name, nspans)
        stats.add(stats.kept_by_reason, REASONS[reason], nspans)
        has_state = bool(flags & _TRACESTATE)
        for group, span in _spans(entry):
            ts = span_facts(span)[3] if has_state else ""
            self._emit(group, self._annotate(span, threshold, tier, reason, ts))

    def _key_threshold(self, tier: int, entry: tuple, tier_threshold: int) -> int:
        """The threshold of the trace's key (root span name and/or resource attributes of the root's resource):
        counted for the next refresh, and a key not seen since the last one is kept (its estimated cost is 0)."""
        root = entry[_ROOT_AT] or 1
        for ordinal, (group, span) in enumerate(_spans(entry), 1):
            if ordinal == root:
                break
        resource = None
        parts = []
        for name in self._key_tiers[tier]:
            if name == "root.name":
                parts.append(span_facts(span)[4] if entry[_ROOT_AT] else b"")
            else:
                if resource is None:
                    resource = resource_attributes_bytes(group[0])
                key = name.encode()
                parts.append(find_attribute(resource, key, 1) if key in resource else None)
        key = tuple(parts)
        counts = self._key_counts[tier]
        if key not in counts and len(counts) >= MAX_KEYS_PER_TIER:
            self.keys_evicted += 1
            return tier_threshold  # too many keys to track: the tier's own rate
        counts[key] = counts.get(key, 0.0) + 1.0
        return self._key_thresholds[tier].get(key, 0)

    def _annotate(self, span: bytes, threshold: int, tier: int, reason: int, tracestate: str) -> bytes:
        if tracestate:
            span = with_trace_state(span, consistent.set_th(tracestate, threshold))
            return span + self._attr_suffix(tier, reason) if self.settings.annotate else span
        key = (threshold, tier, reason)
        suffix = self._suffixes.get(key)
        if suffix is None:
            suffix = with_trace_state(b"", "ot=th:" + consistent.encode_th(threshold))
            if self.settings.annotate:
                suffix += self._attr_suffix(tier, reason)
            if len(self._suffixes) >= MAX_SUFFIXES:
                # Thresholds are the tiers' few, unless clients send their own th: then forget them all (a
                # rebuild costs a few µs each) rather than grow with what clients send.
                self.suffixes_evicted += len(self._suffixes)
                self._suffixes.clear()
            self._suffixes[key] = suffix
        return span + suffix

    def _attr_suffix(self, tier: int, reason: int) -> bytes:
        return with_attributes(b"", [("sampling.tier", self._names[tier]), ("sampling.reason", REASONS[reason])])

    # -- memory pressure -----------------------------------------------------------------------------------

    @property
    def decisions_evicted(self) -> int:
        """Remembered decisions forgotten to stay within decision_cache_bytes (oldest first)."""
        return self._decisions.evicted

    def _start_index(self) -> None:
        """Build the eviction index from every buffered trace: O(n), once per stretch above half of max_memory
        (and at a reconfigure); from then on it is kept up per run of spans and swept (`_sweep`)."""
        heap = [(-entry[_TIER], -entry[_NBYTES], entry[_FIRST], trace_id) for trace_id, entry in self._traces.items()]
        heapq.heapify(heap)
        self._eviction = heap
        self._eviction_sweep = -1

    def _index(self, trace_id: bytes, entry: tuple) -> None:
        heapq.heappush(self._eviction, (-entry[_TIER], -entry[_NBYTES], entry[_FIRST], trace_id))  # type: ignore[arg-type]

    def _sweep(self, budget: int) -> None:
        """Take stale entries out of the eviction index and the schedule once they outnumber the buffered traces
        by half (decided, evicted or grown traces leave theirs behind), `budget` positions of each per call:
        amortized O(log n) per stale entry and never a pass over either heap at once, so the ingest path does not
        stall (a rebuild of 35k entries took 60 ms). Each heap stays under about two entries per trace."""
        traces = self._traces
        limit = len(traces) + (len(traces) >> 1) + _COMPACT_SLACK
        heap = self._eviction
        if heap is not None:
            if self._eviction_sweep < 0 and len(heap) > limit:
                self._eviction_sweep = sweep.start(heap)
            if self._eviction_sweep >= 0:
                def stale_index(item: tuple, get: Callable = traces.get) -> bool:
                    entry = get(item[3])
                    return entry is None or entry[_NBYTES] != -item[1] or entry[_TIER] != -item[0]
                self._eviction_sweep = sweep.sweep(heap, self._eviction_sweep, budget, stale_index)
        schedule = self._schedule
        if self._schedule_sweep < 0 and len(schedule) > limit:
            self._schedule_sweep = sweep.start(schedule)
        if self._schedule_sweep >= 0:
            def stale_due(item: tuple, get: Callable = traces.get) -> bool:
                entry = get(item[1])
                return entry is None or entry[_DEADLINE] != item[0]
            self._schedule_sweep = sweep.sweep(schedule, self._schedule_sweep, budget, stale_due)

    def _evict(self) -> None:
        """Drop traces until the buffer is 1/128 of max_memory under it: lowest tier first, and within it the
        largest, then the oldest.

        Victims come off the eviction index, a heap ordered by exactly that, in O(log n) each; entries whose
        trace was decided, or grew or changed tier since, are skipped (its newer entry is in the heap). Each
        call frees little more than the request that triggered it brought in, so no ingest pays for freeing a
        large share of the buffer at once (it used to go down to 90 %, which amortized a sort of every trace)."""
        settings = self.settings
        target = settings.max_memory - (settings.max_memory >> 7)
        if self._eviction is None:
            self._start_index()
        heap, traces = self._eviction, self._traces
        assert heap is not None
        decisions = self._decisions
        buffered = self.buffered_bytes
        evicted: dict[int, list[int]] = {}  # tier -> [traces, spans]
        pop = heapq.heappop
        while heap and buffered > target:
            neg_tier, neg_bytes, _first, trace_id = pop(heap)
            entry = traces.get(trace_id)
            if entry is None or entry[_TIER] != -neg_tier or entry[_NBYTES] != -neg_bytes:
                continue
            del traces[trace_id]
            buffered += neg_bytes
            decisions.put(trace_id, DROPPED)
            counts = evicted.get(neg_tier)
            if counts is None:
                counts = evicted[neg_tier] = [0, 0]
            counts[0] += 1
            counts[1] += entry[_NSPANS]
        self.buffered_bytes = buffered
        stats = self.stats
        for neg_tier, (ntraces, nspans) in evicted.items():
            name = self._names[-neg_tier]
            stats.add(stats.dropped_traces, name, ntraces)
            stats.add(stats.dropped_spans, name, nspans)
            stats.add(stats.drops_by_reason, "memory_pressure", nspans)

    # -- output --------------------------------------------------------------------------------------------

    def _emit(self, group: tuple[bytes, bytes], span: bytes) -> None:
        spans = self._out.get(group)
        if spans is None:
            spans = self._out[group] = []
        spans.append(span)
        self._out_bytes += len(span)

    @property
    def pending_output_bytes(self) -> int:
        return self._out_bytes

    def take_output(self) -> list[tuple[bytes, int]]:
        """Kept spans since the last call, framed as ExportTraceServiceRequest bytes of about 1 MiB each,
        with the number of spans each holds."""
        if not self._out:
            return []
        out, self._out, self._out_bytes = self._out, {}, 0
        requests: list[tuple[bytes, int]] = []
        resources: dict[bytes, list[tuple[bytes, list[bytes]]]] = {}
        size = count = 0
        for (resource_part, scope_part), spans in out.items():
            resources.setdefault(resource_part, []).append((scope_part, spans))
            size += sum(map(len, spans))
            count += len(spans)
            if size >= _OUTPUT_BYTES:
                requests.append((frame_request(list(resources.items())), count))
                resources, size, count = {}, 0, 0
        if resources:
            requests.append((frame_request(list(resources.items())), count))
        return requests

    @property
    def buffered_traces(self) -> int:
        return len(self._traces)

    def decided(self, trace_ids: Iterable[bytes]) -> list[tuple | None]:
        """What was decided for these traces (for tests and debugging)."""
        return [self._decisions.get(t) for t in trace_ids]


def _spans(entry: tuple) -> Iterator[tuple[tuple[bytes, bytes], bytes]]:
    """A buffered trace's spans, each with its (resource, scope) group, in the order they arrived."""
    groups, spans = entry[_GROUPS], entry[_SPANS]
    if type(spans) is not bytes:
        spans = bytes(spans)  # slices of bytes are bytes
    i, end = 0, len(spans)
    while i < end:
        index, i = read_varint(spans, i, end)
        count, i = read_varint(spans, i, end)
        lengths = array(_LENGTHS)
        lengths.frombytes(spans[i:i + count * lengths.itemsize])
        i += count * lengths.itemsize
        group = groups[index]
        for n in lengths:
            yield group, spans[i:i + n]
            i += n


_STATUS_KEYS = tuple((key, bytes([0x0A, len(key)]) + key + b"\x12") for key in
                     (b"http.response.status_code", b"http.status_code"))


def _is_5xx(span: bytes) -> bool:
    """Whether a server span says HTTP status >= 500. The common encoding (an int value) is read straight from
    the bytes after the KeyValue's key; anything else goes through find_attribute."""
    for key, prefix in _STATUS_KEYS:
        i = span.find(prefix)
        if i < 0:
            if key not in span:
                continue
        else:
            j = i + len(prefix)
            length = span[j]
            if length == 3 and span[j + 1] == 0x18 and span[j + 3] < 0x80 and span[j + 2] & 0x80:
                return ((span[j + 2] & 0x7F) | (span[j + 3] << 7)) >= 500  # int 128..16383
            if length == 2 and span[j + 1] == 0x18:
                return False  # int 0..127
        value = find_attribute(span, key, 9)
        try:
            if value is not None and int(value) >= 500:  # type: ignore[arg-type]
                return True
        except (TypeError, ValueError):
            continue  # not a number: the other attribute name may still say 5xx
    return False
