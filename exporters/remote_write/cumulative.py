"""Delta temporality to cumulative, with state that survives a restart.

    d2c = DeltaToCumulative(state_dir / "delta_to_cumulative" / "prom.json")  # loads what was saved
    converted, skipped = d2c.apply(request)   # delta sums and histograms are now cumulative
    await d2c.commit()                         # on disk BEFORE the samples may leave or the request is acked
    batch = translate(converted)               # ...and count `skipped` (points, by reason) as dropped
    ...
    await d2c.commit()                         # at shutdown too: expiry or a failed save leaves it dirty
    await d2c.drain()                          # ...and a compaction may still be running in a thread

Streams. A stream is one resource (its attributes) + scope (name, version, attributes) + metric (name, unit,
type, monotonicity) + data point attributes; attribute order does not matter. Its identity is kept as a
16-byte BLAKE2b digest, so memory per stream does not grow with label text. Delta monotonic and
non-monotonic sums, explicit-bucket histograms and exponential histograms are converted; cumulative
metrics, gauges and summaries are left as they are.

Counting rule. Each stream keeps the intervals `(start, end]` it has counted, as at most `MAX_INTERVALS`
disjoint runs (touching intervals merge, so an in-order stream is one run). A delta point is:
- added, and written out as the new cumulative value, when it starts at or after the last counted end;
- added but not written out ("late": it falls in a gap between counted runs, or before the first one) —
  its contribution appears in the stream's next in-order point, because writing a sample older than one
  already sent would make Prometheus refuse the whole request as out of order;
- skipped as `delta_duplicate` when it lies wholly inside counted time (a retry of what was counted), and as
  `delta_overlap` when it overlaps counted time only partly (two writers, or misaligned windows).
Past `MAX_INTERVALS` runs the two oldest merge, and the gap between them counts as counted: a late point
that would have filled it is then skipped, as a duplicate (an undercount, never a double count).
The cumulative start time is the start of the earliest counted interval: the first delta's start, fixed
unless a late point from before it is added. A point without a start time, or whose start is not before its
time, is skipped (`delta_invalid_interval`); a histogram whose bucket counts do not fit its bounds, or an
exponential histogram with a scale outside [-10, 20], as `delta_invalid_histogram`.
Points flagged "no recorded value" pass through unchanged (flag kept) and leave the state alone.

Histograms. Buckets, count, sum, min and max accumulate; sum, min and max stay only while every added point
has them (as in the Collector's deltatocumulative processor). A change of explicit bucket bounds on an
in-order point resets the stream to that point (counted in `stats()["bounds_resets"]`); a late point with
other bounds is skipped (`delta_bounds_mismatch`). Exponential histograms are aligned to the lower of the
two scales (downscaling merges buckets exactly, by the perfect-subsetting property), to the wider zero
threshold (buckets wholly inside it move into the zero count), and downscaled further when a sign would need
more than `MAX_EXPONENTIAL_BUCKETS` buckets (`buckets.add_exponential`).

Persistence and the order the caller must keep. Once a delta's contribution has been sent (or acknowledged
to the client, who then never resends it), the restarted process must know about it:
- if a cumulative sample left the node but its delta was not saved, the restarted agent writes a smaller
  value, Prometheus reads that as a counter reset and `increase()` counts the whole total again;
- if the client's request was acknowledged but not saved, that delta is lost.
So: apply -> commit -> only then hand the samples to the batch/queue and return (acknowledge). `commit()`
returns once everything applied before the call is on disk (written and fsynced). A crash between save and
acknowledgement makes the client retry, and the retried points are then duplicates of counted time and
skipped: exactly once. A crash between save and sending only loses intermediate samples; the next
cumulative value carries their contribution. A save may also carry changes applied while it was being
encoded, before their own commit returned: the same case (saved, not acknowledged). When a save fails (disk
full), `commit()` logs, counts and returns False; the caller goes on (degraded: the window above is open
until a save succeeds; the rows it held are saved by the next one) rather than refusing metrics.
Saves are batched: every commit that arrives while a save is in flight, or within `save_interval` (default
50 ms) of the start of the previous save, shares the next one, one write and one fsync. A commit may thus
wait up to `save_interval` plus a save; with no save in the last `save_interval`, it does not wait.

On disk: a snapshot at `state_path` and change logs beside it, `<name>.log-<n>` (see `_StateFiles`). A save
appends one record to the current log: the row of every stream that changed since the previous save (a
row is a stream's whole state, or that it was forgotten), CRC-checked; the loop encodes the rows ~250 at a
time, yielding in between (~0.5 ms each), and a thread writes and fsyncs them. When the logs outgrow the
snapshot (and `min_compact_bytes`, default 1 MiB), a thread compacts: it folds them into a new snapshot
(temp file, fsync, rename, directory fsync) from the files alone, without looking at the live state, and
deletes them. The load replays the snapshot, then the logs in order. A crash mid-save leaves a torn record
at the end of a log: it is dropped at load and cut off the file (logged at warning, counted in
`stats()["state_torn_tails"]`); no commit returned for it, so its clients were not acknowledged and its
samples not sent: they resend them, and the points count then. A crash mid-compaction leaves the old
snapshot and logs as they were. A version 1 state file (the whole state as one JSON document) is read and
rewritten as a snapshot at load (or, if that fails, by the first save, before any log is written beside
it); logs found beside one are therefore from before a downgrade, older than it, and are not replayed.

Why a change log, measured with `bench/delta_state_bench.py` (100k sum streams, ~100 bytes each: 10 MB of
state; a request of 1,000 points every 20 ms, waves of 10 requests; medians of 3 runs, three rounds). Version
1 rewrote the whole state on every save, encoding it (~130 ms of CPU) under the lock `apply` takes: the
loop stalled behind each save, 223-250 ms (median over waves of a wave's worst stall; 293-327 ms worst),
clients waited 316-416 ms for their commit, and each wave wrote 6-9 MB. Only taking that work out of the
lock (a snapshot without a lock the loop takes, e.g. copy-on-write) would leave the 130 ms of CPU and the
10 MB on every save, in a thread that keeps the GIL through each `json.dumps` call, and make `apply` copy
a stream before changing it while a snapshot is being taken. A log costs each save what changed (1.6 us a
row on the loop, a third of `apply`'s 4.9 us a point): 1.6-2.5 ms (4.5-19 ms worst, compactions included),
commits returned in 30-33 ms (`save_interval` included), 1.6 MB written per wave. Compaction works on the
rows as bytes, one per line, ~1000 at a time, releasing the GIL between them: parsing them into lists
instead made the cyclic collector walk the whole heap, live state included, 50-130 ms at a time.

Memory. At most `max_series` streams (new ones past that are skipped as `delta_too_many_series`); a
stream unseen for `max_staleness` seconds (of `clock`, wall time so that it spans restarts) is forgotten,
and its next point starts it afresh, which Prometheus handles as a counter reset.
State files that cannot be trusted are logged at warning with the reason, renamed to `<name>.corrupt-<UTC
timestamp>` (the snapshot and every log), counted (`stats()["state_load_failures"]`), and the processor
starts empty: unreadable, not of a known version, a damaged frame followed by intact ones (not a torn
tail), a log missing between others, a snapshot not whole, rows that do not decode. Starting empty makes
every counter start afresh (a reset, which `increase()` handles); loading rows older than what was sent
would count it twice instead.

Thread safety: none. `apply`, `expire`, `commit`, `drain` and `save` belong to one thread, the event loop's
(`save`: without a running loop); worker threads only write the bytes the loop encoded, and compact files.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags

from exporters.remote_write.buckets import MAX_EXPONENTIAL_BUCKETS as MAX_EXPONENTIAL_BUCKETS  # re-exported
from exporters.remote_write.buckets import ExponentialBuckets, add_exponential

logger = logging.getLogger("headwater.exporters.remote_write")

STATE_VERSION = 2
MAX_INTERVALS = 8
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_INT64 = range(-(2**63), 2**63)
_TAIL, _LATE, _DUPLICATE, _OVERLAP = "tail", "late", "delta_duplicate", "delta_overlap"


class DeltaToCumulative:
    """Turns delta sums and histograms into cumulative ones; see the module docstring for the rules."""

    def __init__(
        self,
        state_path: Path | str | None,
        max_series: int = 100_000,
        max_staleness: float = 3600.0,
        clock: Callable[[], float] = time.time,
        save_interval: float = 0.05,
        min_compact_bytes: int = 1 << 20,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if max_series <= 0:
            raise ValueError(f"max_series must be positive, got {max_series}")
        if not max_staleness > 0:
            raise ValueError(f"max_staleness must be positive, got {max_staleness}")
        if not save_interval >= 0:
            raise ValueError(f"save_interval must be zero or positive, got {save_interval}")
        if min_compact_bytes <= 0:
            raise ValueError(f"min_compact_bytes must be positive, got {min_compact_bytes}")
        self._path = None if state_path is None else Path(state_path)
        self._max_series = max_series
        self._max_staleness = max_staleness
        self._clock = clock
        self._save_interval = save_interval
        self._sleep = sleep
        self._streams: OrderedDict[bytes, _Stream] = OrderedDict()  # least recently seen first
        self._files = None if self._path is None else _StateFiles(self._path, min_compact_bytes)
        self._changed: dict[bytes, None] = {}  # keys whose row changed (or went) since the last save began
        self._generation = 0  # bumped by every change of the state
        self._saved_generation = 0
        self._saving: asyncio.Task[bool] | None = None
        self._save_started = -math.inf  # loop time
        self._compacting: asyncio.Task[None] | None = None
        self._save_failing = False
        self._stats: Counter[str] = Counter()
        self.saved_at: float | None = None
        """`clock()` when the state was last written (or loaded); None before either."""
        if self._files is not None:
            self._load(self._files)

    @property
    def dirty(self) -> bool:
        """The state changed since it was last saved (or loaded)."""
        return self._generation != self._saved_generation

    def stats(self) -> dict[str, int]:
        """Totals since construction, those above zero: `bounds_resets`, `late_added`, `stale_forgotten`,
        `state_load_failures`, `state_torn_tails` (log tails dropped at load), `state_save_failures`,
        `state_compaction_failures`; of the files, `state_appends` and `state_bytes_appended` (saves, as log
        records), `state_rewrites` and `state_bytes_rewritten` (whole snapshots written by compaction); and the
        current number of `streams`."""
        files = {} if self._files is None else {key: value for key, value in self._files.counters().items() if value}
        return {**self._stats, **files, "streams": len(self._streams)}

    # -- conversion -------------------------------------------------------------------------------------

    def apply(self, request: ExportMetricsServiceRequest) -> tuple[ExportMetricsServiceRequest, dict[str, int]]:
        """Return `request` with every delta sum and histogram made cumulative, and the points skipped, by
        reason. `request` is never modified: the result is a copy, or `request` itself when it holds no
        delta metric; treat it as read-only."""
        now = self._clock()
        skipped: Counter[str] = Counter()
        self._expire(now)
        if not _has_delta(request):
            return request, {}
        out = ExportMetricsServiceRequest()
        out.CopyFrom(request)
        for resource_metrics in out.resource_metrics:
            resource_id = _attributes_id(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope
                scope_id = b"".join((resource_id, _frame(scope.name.encode()), _frame(scope.version.encode()),
                                     _attributes_id(scope.attributes)))
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind not in _STREAM_TYPES:
                        continue
                    data = getattr(metric, kind)
                    if data.aggregation_temporality != _DELTA:
                        continue
                    tag = kind + ("+" if kind == "sum" and data.is_monotonic else "")
                    hasher = hashlib.blake2b(digest_size=16)
                    hasher.update(b"".join((scope_id, _frame(metric.name.encode()), _frame(metric.unit.encode()),
                                            _frame(tag.encode()))))
                    self._convert(data.data_points, _STREAM_TYPES[kind], hasher, now, skipped)
                    data.aggregation_temporality = _CUMULATIVE
        return out, dict(skipped)

    def _convert(self, points, stream_type: type[_Stream], hasher, now: float, skipped: Counter[str]) -> None:
        removed: list[int] = []
        for index, point in enumerate(points):
            if point.flags & _NO_RECORDED_VALUE:
                continue
            start, end = point.start_time_unix_nano, point.time_unix_nano
            reason = "delta_invalid_interval" if not 0 < start < end else stream_type.invalid(point)
            if reason is None:
                key_hasher = hasher.copy()
                key_hasher.update(_attributes_id(point.attributes))
                reason = self._count(key_hasher.digest(), point, stream_type, start, end, now)
            if reason is not None:
                if reason != _LATE:
                    skipped[reason] += 1
                removed.append(index)
        for index in reversed(removed):
            del points[index]

    def _count(self, key: bytes, point, stream_type: type[_Stream], start: int, end: int, now: float) -> str | None:
        """Count `point` into its stream and rewrite it as the cumulative point; return why it must not be
        written out (a skip reason, or `_LATE`), or None."""
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self._max_series:
                return "delta_too_many_series"
            self._streams[key] = stream_type.first(point, now)  # the point is its own cumulative value
            self._changed[key] = None
            self._generation += 1
            return None
        stream.last_seen = now
        self._streams.move_to_end(key)
        self._changed[key] = None  # at least its last_seen: saved with the next change, not a save of its own
        place = _place(stream.intervals, start, end)
        if place in (_DUPLICATE, _OVERLAP):
            return place
        if not stream.compatible(point):
            if place == _LATE:
                return "delta_bounds_mismatch"
            self._streams[key] = stream_type.first(point, now)
            self._stats["bounds_resets"] += 1
            self._generation += 1
            return None
        _record(stream.intervals, start, end)
        stream.add(point)
        self._generation += 1
        if place == _LATE:
            self._stats["late_added"] += 1
            return _LATE
        stream.write(point)
        return None

    def expire(self) -> None:
        """Forget streams unseen for `max_staleness`, as `apply` does first: for a request that skips `apply`
        because it holds no delta metric (one translated from its wire shape)."""
        self._expire(self._clock())

    def _expire(self, now: float) -> None:
        limit = now - self._max_staleness
        streams = self._streams
        forgotten = 0
        while streams:
            key = next(iter(streams))
            if streams[key].last_seen > limit:
                break
            del streams[key]
            self._changed[key] = None  # saved as gone
            forgotten += 1
        if forgotten:
            self._stats["stale_forgotten"] += forgotten
            self._generation += 1
            logger.debug("delta to cumulative: forgot %d streams unseen for %ss", forgotten, self._max_staleness)

    # -- persistence ------------------------------------------------------------------------------------

    def save(self) -> None:
        """Write what changed since the last save, as one log record, and compact when due (no-op without
        `state_path`). Blocking, for use without a running event loop (tests, tools); the loop uses `commit`.
        Raises OSError when it cannot; the state then stays dirty."""
        if self._saving is not None:
            raise RuntimeError("save() while commit() is saving: the records would land out of order")
        generation, changed = self._generation, self._take_changed()
        if self._files is not None and changed:
            try:
                job = self._files.append(list(self._encode_rows(list(changed))))
            except BaseException:
                self._give_back(changed)
                raise
            if job is not None:
                self._files.compact(job)
        self._saved(generation)

    async def commit(self) -> bool:
        """Return True once everything applied before the call is on disk. Concurrent callers share a save,
        and a save starts no sooner than `save_interval` after the previous one started, so the waves of
        requests within an interval share one write and fsync; the rows are encoded on the loop in slices,
        written and fsynced in a thread. On a failed save: logged, counted, False."""
        if self._files is None:
            self.save()
            return True
        target = self._generation
        while self._saved_generation < target:
            task = self._saving
            if task is None:
                task = self._saving = asyncio.get_running_loop().create_task(self._save_in_task())
            if not await asyncio.shield(task):
                return False
        return True

    async def drain(self) -> None:
        """Wait for a save and a compaction in flight, if any (at shutdown, before another instance reads
        the same files). Commits do not wait for compactions: those run in the background."""
        for task in (self._saving, self._compacting):
            if task is not None:
                await asyncio.gather(asyncio.shield(task), return_exceptions=True)
        if self._compacting is not None:  # started by the save just awaited
            await asyncio.gather(asyncio.shield(self._compacting), return_exceptions=True)

    def _take_changed(self) -> dict[bytes, None]:
        changed, self._changed = self._changed, {}
        return changed

    def _give_back(self, changed: dict[bytes, None]) -> None:
        """After a failed save: its keys are saved again, with their state as it is then."""
        changed.update(self._changed)
        self._changed = changed

    def _saved(self, generation: int) -> None:
        self._saved_generation = max(self._saved_generation, generation)
        self.saved_at = self._clock()

    async def _save_in_task(self) -> bool:
        loop = asyncio.get_running_loop()
        changed: dict[bytes, None] = {}
        try:
            wait = self._save_started + self._save_interval - loop.time()
            if wait > 0:
                await self._sleep(wait)  # commits arriving meanwhile join this save
            self._save_started = loop.time()
            generation, changed = self._generation, self._take_changed()
            payloads = []
            for payload in self._encode_rows(list(changed)):
                payloads.append(payload)
                await asyncio.sleep(0)  # a slice at a time: other tasks run between them
            job = await asyncio.to_thread(self._files.append, payloads) if payloads else None
        except OSError as exc:
            self._give_back(changed)
            self._stats["state_save_failures"] += 1
            level = logging.DEBUG if self._save_failing else logging.WARNING
            self._save_failing = True
            logger.log(level, "delta to cumulative: state not saved to %s: %s; a restart now would lose or "
                       "recount deltas since the last save", self._path, exc)
            return False
        except Exception:  # a bug must cost durability, not the metrics pipeline
            self._give_back(changed)
            self._stats["state_save_failures"] += 1
            logger.exception("delta to cumulative: unexpected error saving the state to %s", self._path)
            return False
        except BaseException:  # cancelled (the loop is closing): saved again by the next save, if any
            self._give_back(changed)
            raise
        finally:
            self._saving = None
        if self._save_failing:
            logger.warning("delta to cumulative: state saved to %s again", self._path)
        self._save_failing = False
        self._saved(generation)
        if job is not None:
            self._compacting = loop.create_task(self._compact_in_thread(job))
        return True

    async def _compact_in_thread(self, job: _Compaction) -> None:
        try:
            await asyncio.to_thread(self._files.compact, job)
        except Exception as exc:  # the logs stay and keep every change; tried again once they grew further
            self._stats["state_compaction_failures"] += 1
            logger.warning("delta to cumulative: compacting the state in %s failed (%s: %s); its change logs "
                           "stay until a later compaction succeeds", self._path, type(exc).__name__, exc)
        finally:
            self._compacting = None

    def _encode_rows(self, keys: list[bytes]) -> Iterator[bytes]:
        """The rows of `keys` as they are now (a stream no longer here as gone), one per line,
        `_ROWS_PER_SLICE` at a time."""
        streams = self._streams
        for i in range(0, len(keys), _ROWS_PER_SLICE):
            rows = []
            for key in keys[i:i + _ROWS_PER_SLICE]:
                name = base64.b64encode(key).decode("ascii")
                stream = streams.get(key)
                rows.append([_GONE, name] if stream is None else stream.row(name))
            yield _row_lines(rows)

    def _load(self, files: _StateFiles) -> None:
        try:
            rows, torn = files.load()
            streams = sorted((_decode_row(row) for row in rows), key=lambda item: item[1].last_seen)
        except Exception as exc:  # whatever it is, a state that cannot be read must not stop the agent
            self._stats["state_load_failures"] += 1
            where = files.set_aside(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock())))
            logger.warning("delta to cumulative: state file %s unreadable (%s: %s), %s; starting empty: delta "
                           "counters restart from zero", self._path, type(exc).__name__, exc, where)
            return
        for note in torn:
            self._stats["state_torn_tails"] += 1
            logger.warning("delta to cumulative: %s; a save cut short (crash, or a failed write) whose deltas "
                           "were not acknowledged: their clients send them again", note)
        if not streams and not files.exists():
            return
        if len(streams) > self._max_series:
            logger.warning("delta to cumulative: state holds %d streams, max_series is %d; keeping the most "
                           "recently seen", len(streams), self._max_series)
            streams = streams[-self._max_series:]
        self._streams.update(streams)
        self.saved_at = self._clock()
        logger.info("delta to cumulative: loaded %d streams from %s", len(streams), self._path)


# -- streams ------------------------------------------------------------------------------------------------


class _Stream:
    """What one stream has counted: `intervals`, a flat sorted list [start0, end0, start1, end1, ...] of
    disjoint, non-touching runs (`intervals[0]` is the cumulative start time), and `last_seen` (clock)."""

    __slots__ = ("intervals", "last_seen")
    TAG = ""

    def __init__(self, intervals: list[int], last_seen: float) -> None:
        self.intervals = intervals
        self.last_seen = last_seen

    @staticmethod
    def invalid(point) -> str | None:
        return None

    def compatible(self, point) -> bool:
        return True

    def row(self, key: str) -> list:
        return [self.TAG, key, self.last_seen, self.intervals, *self.values()]


class _Sum(_Stream):
    __slots__ = ("value",)
    TAG = "s"

    @classmethod
    def first(cls, point, now: float) -> _Sum:
        stream = cls([point.start_time_unix_nano, point.time_unix_nano], now)
        stream.value = _number(point)
        return stream

    def add(self, point) -> None:
        self.value += _number(point)

    def write(self, point) -> None:
        point.start_time_unix_nano = self.intervals[0]
        if isinstance(self.value, int) and self.value in _INT64:
            point.as_int = self.value
        else:
            point.as_double = float(self.value)

    def values(self) -> list:
        return [self.value]

    def restore(self, value) -> None:
        self.value = _checked(value, (int, float))


class _Histogram(_Stream):
    __slots__ = ("bounds", "counts", "count", "sum", "min", "max")
    TAG = "h"

    @staticmethod
    def invalid(point) -> str | None:
        buckets, bounds = len(point.bucket_counts), len(point.explicit_bounds)
        return None if buckets == bounds + 1 or buckets == bounds == 0 else "delta_invalid_histogram"

    @classmethod
    def first(cls, point, now: float) -> _Histogram:
        stream = cls([point.start_time_unix_nano, point.time_unix_nano], now)
        stream.bounds = list(point.explicit_bounds)
        stream.counts = list(point.bucket_counts)
        stream.count = point.count
        stream.sum, stream.min, stream.max = _optional(point)
        return stream

    def compatible(self, point) -> bool:
        return self.bounds == list(point.explicit_bounds)

    def add(self, point) -> None:
        self.counts = [a + b for a, b in zip(self.counts, point.bucket_counts)]
        self.count += point.count
        self.sum, self.min, self.max = _add_optional((self.sum, self.min, self.max), point)

    def write(self, point) -> None:
        point.start_time_unix_nano = self.intervals[0]
        del point.bucket_counts[:]
        point.bucket_counts.extend(self.counts)
        point.count = self.count
        _write_optional(point, self.sum, self.min, self.max)

    def values(self) -> list:
        return [self.bounds, self.counts, self.count, self.sum, self.min, self.max]

    def restore(self, bounds, counts, count, sum_, min_, max_) -> None:
        self.bounds = _checked_list(bounds, (int, float))
        self.counts = _checked_list(counts, int)
        if len(self.counts) != len(self.bounds) + 1 and self.counts:
            raise ValueError("histogram bucket counts do not fit its bounds")
        self.count = _checked(count, int)
        self.sum, self.min, self.max = (_checked(v, (int, float, type(None))) for v in (sum_, min_, max_))


class _ExponentialHistogram(_Stream):
    __slots__ = ("scale", "zero_threshold", "zero_count", "positive", "negative", "count", "sum", "min", "max")
    TAG = "e"
    # positive and negative: (offset, counts)

    @staticmethod
    def invalid(point) -> str | None:
        return None if -10 <= point.scale <= 20 else "delta_invalid_histogram"

    @classmethod
    def first(cls, point, now: float) -> _ExponentialHistogram:
        stream = cls([point.start_time_unix_nano, point.time_unix_nano], now)
        stream.scale, stream.zero_threshold, stream.zero_count = point.scale, point.zero_threshold, point.zero_count
        stream.positive = (point.positive.offset, list(point.positive.bucket_counts))
        stream.negative = (point.negative.offset, list(point.negative.bucket_counts))
        stream.count = point.count
        stream.sum, stream.min, stream.max = _optional(point)
        return stream

    def add(self, point) -> None:
        mine = ExponentialBuckets(self.scale, self.zero_threshold, self.zero_count, self.positive, self.negative)
        theirs = ExponentialBuckets(point.scale, point.zero_threshold, point.zero_count,
                                    (point.positive.offset, list(point.positive.bucket_counts)),
                                    (point.negative.offset, list(point.negative.bucket_counts)))
        self.scale, self.zero_threshold, self.zero_count, self.positive, self.negative = add_exponential(mine, theirs)
        self.count += point.count
        self.sum, self.min, self.max = _add_optional((self.sum, self.min, self.max), point)

    def write(self, point) -> None:
        point.start_time_unix_nano = self.intervals[0]
        point.scale, point.zero_threshold, point.zero_count = self.scale, self.zero_threshold, self.zero_count
        for buckets, (offset, counts) in ((point.positive, self.positive), (point.negative, self.negative)):
            buckets.offset = offset
            del buckets.bucket_counts[:]
            buckets.bucket_counts.extend(counts)
        point.count = self.count
        _write_optional(point, self.sum, self.min, self.max)

    def values(self) -> list:
        return [self.scale, self.zero_threshold, self.zero_count, *self.positive, *self.negative, self.count,
                self.sum, self.min, self.max]

    def restore(self, scale, zero_threshold, zero_count, pos_offset, pos, neg_offset, neg, count, sum_, min_,
                max_) -> None:
        self.scale = _checked(scale, int)
        if not -10 <= self.scale <= 20:
            raise ValueError(f"exponential histogram scale {self.scale} out of range")
        self.zero_threshold = _checked(zero_threshold, (int, float))
        self.zero_count = _checked(zero_count, int)
        self.positive = (_checked(pos_offset, int), _checked_list(pos, int))
        self.negative = (_checked(neg_offset, int), _checked_list(neg, int))
        self.count = _checked(count, int)
        self.sum, self.min, self.max = (_checked(v, (int, float, type(None))) for v in (sum_, min_, max_))


_STREAM_TYPES: dict[str, type[_Stream]] = {
    "sum": _Sum, "histogram": _Histogram, "exponential_histogram": _ExponentialHistogram}
_BY_TAG = {cls.TAG: cls for cls in _STREAM_TYPES.values()}


# -- counted intervals ----------------------------------------------------------------------------------


def _place(intervals: list[int], start: int, end: int) -> str:
    """Where `(start, end]` falls against the counted runs: `_TAIL`, `_LATE`, `_DUPLICATE` or `_OVERLAP`."""
    if start >= intervals[-1]:
        return _TAIL
    for i in range(0, len(intervals), 2):
        run_start, run_end = intervals[i], intervals[i + 1]
        if run_end <= start:
            continue
        if run_start >= end:
            return _LATE  # wholly before this run and after the previous one
        return _DUPLICATE if run_start <= start and end <= run_end else _OVERLAP
    return _TAIL  # not reached: the last run ends after `start`


def _record(intervals: list[int], start: int, end: int) -> None:
    """Add `(start, end]` (known not to overlap) to the runs, merging touching ones, keeping at most
    MAX_INTERVALS runs (the oldest gap is given up first)."""
    i = 0
    while i < len(intervals) and intervals[i + 1] <= start:
        i += 2
    intervals[i:i] = [start, end]
    if i + 2 < len(intervals) and intervals[i + 2] == end:
        del intervals[i + 1:i + 3]
    if i > 0 and intervals[i - 1] == start:
        del intervals[i - 1:i + 1]
    while len(intervals) > 2 * MAX_INTERVALS:
        del intervals[1:3]


# -- points -------------------------------------------------------------------------------------------------


def _number(point) -> int | float:
    return point.as_double if point.WhichOneof("value") == "as_double" else point.as_int


def _optional(point) -> tuple[float | None, float | None, float | None]:
    return tuple(getattr(point, name) if point.HasField(name) else None for name in ("sum", "min", "max"))


def _add_optional(current: tuple, point) -> tuple[float | None, float | None, float | None]:
    sum_, min_, max_ = current
    new_sum, new_min, new_max = _optional(point)
    return (None if sum_ is None or new_sum is None else sum_ + new_sum,
            None if min_ is None or new_min is None else min(min_, new_min),
            None if max_ is None or new_max is None else max(max_, new_max))


def _write_optional(point, sum_: float | None, min_: float | None, max_: float | None) -> None:
    for name, value in (("sum", sum_), ("min", min_), ("max", max_)):
        if value is None:
            point.ClearField(name)
        else:
            setattr(point, name, value)


def _has_delta(request: ExportMetricsServiceRequest) -> bool:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind in _STREAM_TYPES and getattr(metric, kind).aggregation_temporality == _DELTA:
                    return True
    return False


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _attributes_id(attributes: Sequence[KeyValue]) -> bytes:
    """The attributes as bytes that do not depend on their order."""
    if not attributes:
        return _frame(b"")
    ordered = sorted(attributes, key=lambda kv: kv.key)
    return _frame(b"".join(_frame(kv.SerializeToString(deterministic=True)) for kv in ordered))


# -- state file ---------------------------------------------------------------------------------------------


def _decode_row(row: list) -> tuple[bytes, _Stream]:
    tag, key, last_seen, intervals, *values = row
    stream = _BY_TAG[tag](_checked_list(intervals, int), float(_checked(last_seen, (int, float))))
    if not intervals or len(intervals) % 2 or any(a >= b for a, b in zip(intervals, intervals[1:])):
        raise ValueError(f"stream intervals {intervals!r} are not sorted (start, end) pairs")
    stream.restore(*values)
    digest = base64.b64decode(_checked(key, str), validate=True)
    if len(digest) != 16:
        raise ValueError(f"stream key {key!r} is not a 16-byte digest")
    return digest, stream


def _checked(value, types):
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"unexpected {type(value).__name__} {value!r} in the state file")
    return value


def _checked_list(values, types) -> list:
    if not isinstance(values, list):
        raise TypeError(f"expected a list in the state file, found {values!r}")
    return [_checked(v, types) for v in values]


# -- state files: a snapshot and change logs ------------------------------------------------------------------

_GONE = "-"  # the tag of a row that says a stream was forgotten
_ROWS_PER_SLICE = 250  # rows encoded on the loop between two yields (~0.5 ms)
_ROWS_PER_FRAME = 1000  # rows per snapshot frame
_MAGIC = b"\xffd2c"  # never in JSON text (ensure_ascii), so a frame cannot start inside a payload
_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_MAX_CANDIDATES = 64  # frame starts looked at after a damaged frame before calling the file corrupt
_KEY = slice(6, 30)  # where a row line holds its key: `["s","<24 characters of base64>",...`


class _Corrupt(ValueError):
    """The state files cannot be trusted; the message says why."""


class _Compaction(NamedTuple):
    base: bool  # fold in the snapshot at `path`
    logs: tuple[int, ...]  # and these closed logs, oldest first
    generation: int  # the first log the new snapshot does not cover


class _StateFiles:
    """The files of one state, beside each other: the snapshot at `path` and change logs `<name>.log-<n>`
    for n from the snapshot's `log` on, numbered without gaps.

    Both are sequences of frames (magic, length, CRC-32, payload). A snapshot: a header `{"version": 2,
    "log": n}`, row frames, a trailer `{"streams": count}`; written whole to a temp file and renamed into
    place. A log: the same header, then one frame per save. A row frame holds rows one per line; a row is
    a stream's whole state `[tag, key, last_seen, intervals, *values]`, or `["-", key]` for a stream
    forgotten, and a later row of a key replaces an earlier one. Compaction merges at that level, as bytes
    (key at a fixed offset, see `_row_lines`): parsing 100k rows into lists would make the collector walk
    the whole heap, live state included, while the thread holds the GIL (50-130 ms measured).

    `append` and `compact` run in worker threads (`compact` beside a running `append`: it reads only the
    snapshot and closed logs and writes the next snapshot); `_lock` guards the bookkeeping, and only threads
    take it, never the event loop. `load` and `set_aside` run at construction."""

    def __init__(self, path: Path, min_compact_bytes: int) -> None:
        self.path = path
        self._min_compact_bytes = min_compact_bytes
        self._lock = threading.Lock()
        self._next_log = 1  # the log appended to (created by the next append unless in `_sizes`)
        self._sizes: dict[int, int] = {}  # bytes of every log not yet folded into the snapshot, oldest first
        self._snapshot = False  # there is a snapshot to fold in
        self._snapshot_bytes = 0
        self._compact_soon = False  # files that could not be set aside: supersede them at the first chance
        self._version_1 = False  # the snapshot is of version 1: rewrite it before a log is written beside it
        self._compacting = False
        self._retry_at = 0  # after a failed compaction: log bytes that make it due again
        # Keys set once: the loop reads them while threads count (a new key would change the dict's size).
        self._counters = Counter(dict.fromkeys(("state_appends", "state_bytes_appended", "state_rewrites",
                                                "state_bytes_rewritten"), 0))

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def exists(self) -> bool:
        return self._snapshot or bool(self._sizes)

    def _log_path(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.log-{number}")

    def _logs_on_disk(self) -> dict[int, Path]:
        prefix = f"{self.path.name}.log-"
        return {int(p.name[len(prefix):]): p for p in self.path.parent.glob(prefix + "*")
                if p.name[len(prefix):].isdigit()}

    # -- load ---------------------------------------------------------------------------------------------

    def load(self) -> tuple[list[list], list[str]]:
        """The rows saved (one per stream, parsed), and a note per torn log tail dropped (and cut off its
        file). Raises `_Corrupt` (or OSError, ValueError...) when the files cannot be trusted."""
        try:
            for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # from a crash during a rewrite
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("delta to cumulative: could not remove leftover temp files: %s", exc)
        logs = self._logs_on_disk()
        rows: dict[str, list] = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            first = min(logs, default=1)  # no snapshot: the logs alone (each row is a whole stream's state)
        else:
            first, payloads = _snapshot_payloads(data, self.path.name)
            for payload in payloads:
                rows.update((row[1], row) for row in _parse_rows(payload))
            self._snapshot, self._snapshot_bytes, self._version_1 = True, len(data), data[:1] == b"{"
            if self._version_1:  # logs beside it are older: version 1 writes none, and this one converts first
                first = max(logs, default=0) + 1
        for number in [n for n in logs if n < first]:  # folded into the snapshot before a crash deleted them
            logs.pop(number).unlink(missing_ok=True)
        if logs and sorted(logs) != list(range(first, max(logs) + 1)):
            missing = min(set(range(first, max(logs) + 1)) - set(logs))
            raise _Corrupt(f"change log {self._log_path(missing).name} is missing: the rows after it could be "
                           "older than what was sent")
        torn = []
        for number in sorted(logs):
            data = logs[number].read_bytes()
            payloads, end = _log_payloads(data, logs[number].name, number)
            if end < len(data):
                torn.append(f"{len(data) - end} bytes at the end of {logs[number].name} were not a whole record "
                            "and were dropped")
                try:  # else dropped again at the next load, until a compaction folds the log in
                    with open(logs[number], "r+b") as file:
                        file.truncate(end)
                        os.fsync(file.fileno())
                except OSError as exc:
                    logger.debug("delta to cumulative: could not cut the torn tail off %s: %s", logs[number], exc)
            for payload in payloads:
                for row in _parse_rows(payload):
                    if row[0] == _GONE:
                        rows.pop(row[1], None)
                    else:
                        rows[row[1]] = row
            self._sizes[number] = end
        self._next_log = max(logs) + 1 if logs else first  # never append to a log a crash may have torn
        if self._version_1:
            try:
                self._convert_version_1()
            except OSError as exc:
                logger.warning("delta to cumulative: could not rewrite the version 1 state file %s (%s); the "
                               "first save does, before writing a change log", self.path, exc)
        return list(rows.values()), torn

    def _convert_version_1(self) -> None:
        """Rewrite a version 1 snapshot in this version's format; no log may be written beside it before."""
        size = self._write_snapshot(_line_slices(_snapshot_payloads(self.path.read_bytes(), self.path.name)[1]),
                                    self._next_log)
        self._version_1, self._snapshot_bytes = False, size
        self._counters["state_rewrites"] += 1
        self._counters["state_bytes_rewritten"] += size

    def set_aside(self, stamp: str) -> str:
        """Move the snapshot and every log out of the way (`<name>.corrupt-<stamp>`) and start empty; say
        where they went."""
        self._sizes, self._snapshot, self._snapshot_bytes, self._version_1 = {}, False, 0, False
        moved, stuck = [], []
        try:
            logs = self._logs_on_disk()
        except OSError:
            logs = {}
        for path in [self.path, *logs.values()]:
            try:
                os.replace(path, path.with_name(f"{path.name}.corrupt-{stamp}"))
                moved.append(path.name)
            except FileNotFoundError:
                pass
            except OSError:
                try:
                    path.unlink()
                except OSError:
                    stuck.append(path.name)
        self._next_log = max(logs, default=0) + 1  # a log left behind is older than the next snapshot covers
        self._compact_soon = bool(stuck)  # a snapshot written by the first save's compaction replaces them
        if stuck:
            return f"{', '.join(stuck)} could not be moved aside nor removed: the first compaction supersedes them"
        return f"moved aside to *.corrupt-{stamp}" if moved else "nothing to move aside"

    # -- append ---------------------------------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> _Compaction | None:
        """Append one record (the rows in `payloads`) to the log and fsync it; return a compaction to run
        when one is due (the log was closed: the next append starts another). On OSError the log is left as
        it is (a torn tail at worst, dropped at load) and the next append starts another."""
        record = _pack(b"\n".join(payloads))
        with self._lock:
            if self._version_1:
                self._convert_version_1()
            number = self._next_log
            new = number not in self._sizes
            flags = os.O_WRONLY | os.O_APPEND
            if new:
                record = _pack(json.dumps({"version": STATE_VERSION, "log": number}).encode()) + record
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags |= os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(self._log_path(number), flags, 0o644)
            except OSError:
                if not new:  # gone, or no longer writable: the next append starts another
                    self._next_log += 1
                raise
            try:
                self._sizes.setdefault(number, 0)
                _write_all(fd, record)
                _fdatasync(fd)
                if new:
                    _fsync_directory(self.path.parent)
            except OSError:
                self._next_log += 1  # after a failed write or fsync this log is not to be trusted further
                raise
            finally:
                os.close(fd)
            self._sizes[number] += len(record)
            self._counters["state_appends"] += 1
            self._counters["state_bytes_appended"] += len(record)
            return self._compaction_if_due()

    def _compaction_if_due(self) -> _Compaction | None:
        logged = sum(self._sizes.values())
        due = self._compact_soon or logged >= max(self._min_compact_bytes, self._snapshot_bytes, self._retry_at)
        if self._compacting or not due:
            return None
        self._next_log += 1
        self._compacting, self._compact_soon = True, False
        return _Compaction(self._snapshot, tuple(n for n in self._sizes if n < self._next_log), self._next_log)

    # -- compaction -------------------------------------------------------------------------------------------

    def compact(self, job: _Compaction) -> None:
        """Write the snapshot of `job` (the old one with its logs folded in) and delete those logs. Reads
        and writes files only: the live state is not looked at, and nothing the event loop holds is locked.
        It works ~1000 rows at a time and lets go of the GIL between them (`time.sleep(0)`): a thread that
        keeps it makes the loop wait up to the 5 ms switch interval each time it wants it back."""
        try:
            changes: dict[bytes, bytes | None] = {}
            for number in job.logs:
                path = self._log_path(number)
                for lines in _line_slices(_log_payloads(path.read_bytes(), path.name, number)[0]):
                    for line in lines:
                        changes[_line_key(line)] = None if line[2:3] == b"-" else line
                    time.sleep(0)
            old = _snapshot_payloads(self.path.read_bytes(), self.path.name)[1] if job.base else []
            size = self._write_snapshot(_merged(_line_slices(old), changes), job.generation)
        except BaseException:
            with self._lock:
                self._compacting = False
                self._retry_at = sum(self._sizes.values()) + max(self._min_compact_bytes, self._snapshot_bytes)
            raise
        with self._lock:
            for number in job.logs:
                self._sizes.pop(number, None)
                self._log_path(number).unlink(missing_ok=True)  # stale for the new snapshot, if it stays
            self._snapshot, self._snapshot_bytes, self._compacting, self._retry_at = True, size, False, 0
            self._counters["state_rewrites"] += 1
            self._counters["state_bytes_rewritten"] += size

    def _write_snapshot(self, slices: Iterator[list[bytes]], generation: int) -> int:
        """Write the row lines of `slices` as the snapshot covering the logs before `generation`: a temp file,
        fsynced, renamed over `path`, the directory fsynced. Returns its size."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(_pack(json.dumps({"version": STATE_VERSION, "log": generation}).encode()))
                count = sum(_write_lines(file, lines) for lines in slices)
                file.write(_pack(json.dumps({"streams": count}).encode()))
                file.flush()
                os.fsync(file.fileno())
                size = file.tell()
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(self.path.parent)
        return size


def _merged(old: Iterator[list[bytes]], changes: dict[bytes, bytes | None]) -> Iterator[list[bytes]]:
    """The lines of `old` with `changes` applied (a line replaced, or gone for None), then the lines of keys
    new in `changes`; `changes` is emptied. Lets go of the GIL between two slices."""
    for lines in old:
        kept = []
        for line in lines:
            key = _line_key(line)
            if key in changes:
                line = changes.pop(key)
                if line is None:
                    continue
            kept.append(line)
        yield kept
        time.sleep(0)
    yield [line for line in changes.values() if line is not None]


def _row_lines(rows: list[list]) -> bytes:
    """`rows` as JSON, one per line. A row holds no string but its tag and key (numbers, null and lists of
    numbers otherwise), so `],["` appears in the array's JSON only between two rows; each line then starts
    with `["<tag>","<key>"`, the key at `_KEY` (tags are one character, keys 24)."""
    return json.dumps(rows, separators=(",", ":")).encode()[1:-1].replace(b'],["', b']\n["')


def _line_key(line: bytes) -> bytes:
    if line[:2] != b'["' or line[3:6] != b'","' or line[30:31] != b'"':
        raise _Corrupt(f"expected a row line, found {line[:40]!r}")
    return line[_KEY]


def _parse_rows(payload: bytes) -> list[list]:
    """The rows of a row frame, each a list starting with a tag and a key (`_decode_row` checks the rest)."""
    rows = json.loads(b"[" + payload.replace(b"\n", b",") + b"]")
    for row in rows:
        if not isinstance(row, list) or len(row) < 2 or not isinstance(row[0], str) or not isinstance(row[1], str):
            raise _Corrupt(f"expected a row [tag, key, ...], found {str(row)[:80]}")
    return rows


def _line_slices(payloads: list[bytes], size: int = 128 * 1024) -> Iterator[list[bytes]]:
    """The row lines of `payloads`, cut at a line end every `size` bytes or so: no single call on a large
    payload holds the GIL long."""
    for payload in payloads:
        start = 0
        while start < len(payload):
            end = payload.find(b"\n", start + size)
            end = len(payload) if end < 0 else end
            yield payload[start:end].split(b"\n")
            start = end + 1


def _write_lines(file, lines: list[bytes]) -> int:
    for i in range(0, len(lines), _ROWS_PER_FRAME):
        file.write(_pack(b"\n".join(lines[i:i + _ROWS_PER_FRAME])))
    return len(lines)


def _pack(payload: bytes) -> bytes:
    return _FRAME.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _frame_at(data: bytes, offset: int) -> tuple[bytes, int] | None:
    """The payload of an intact frame at `offset` and the offset after it, or None."""
    start = offset + _FRAME.size
    if start > len(data):
        return None
    magic, length, crc = _FRAME.unpack_from(data, offset)
    if magic != _MAGIC or start + length > len(data):
        return None
    payload = data[start:start + length]
    return (payload, start + length) if zlib.crc32(payload) == crc else None


def _read_frames(data: bytes, name: str) -> tuple[list[bytes], int]:
    """The payloads of the intact frames from the start of `data`, and where they end. A damaged frame ends
    them: a torn tail when nothing intact follows it; when something does, the file is corrupt (raises)."""
    payloads, offset = [], 0
    while offset < len(data):
        frame = _frame_at(data, offset)
        if frame is None:
            candidate = data.find(_MAGIC, offset + 1)
            for _ in range(_MAX_CANDIDATES):
                if candidate < 0:
                    return payloads, offset
                if _frame_at(data, candidate) is not None:
                    break
                candidate = data.find(_MAGIC, candidate + 1)
            raise _Corrupt(f"{name}: a damaged frame at byte {offset} is followed by more data that looks intact")
        payload, offset = frame
        payloads.append(payload)
    return payloads, offset


def _header(payload: bytes, name: str) -> int:
    """The log number a header names (a snapshot's: the first log it does not cover)."""
    header = json.loads(payload)
    if not isinstance(header, dict) or header.get("version") != STATE_VERSION:
        raise _Corrupt(f"{name}: expected a header with version {STATE_VERSION}, found {payload[:80]!r}")
    number = header.get("log")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise _Corrupt(f"{name}: its header names no log number: {payload[:80]!r}")
    return number


def _log_payloads(data: bytes, name: str, number: int) -> tuple[list[bytes], int]:
    """The row frames of log `number` in order, and where its intact frames end (before a torn tail)."""
    payloads, end = _read_frames(data, name)
    if not payloads:
        return [], end  # torn before its header was whole: no record of it was acknowledged
    if _header(payloads[0], name) != number:
        raise _Corrupt(f"{name}: its header names another log")
    return payloads[1:], end


def _snapshot_payloads(data: bytes, name: str) -> tuple[int, list[bytes]]:
    """The first log a snapshot does not cover, and its row frames. Anything but a whole snapshot raises
    `_Corrupt`: one is written whole and renamed into place, so a torn one is not a crash's doing. Version 1
    (one JSON document, no logs) is read too, as row frames."""
    if data[:1] == b"{":
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("version") != 1:
            raise _Corrupt(f"{name}: expected an object with version 1 or {STATE_VERSION}")
        rows = document["streams"]
        if not isinstance(rows, list) or not all(isinstance(row, list) and row and row[0] != _GONE for row in rows):
            raise _Corrupt(f"{name}: expected a list of rows")
        return 1, [_row_lines(rows[i:i + _ROWS_PER_FRAME]) for i in range(0, len(rows), _ROWS_PER_FRAME)]
    payloads, end = _read_frames(data, name)
    if end != len(data) or len(payloads) < 2:
        raise _Corrupt(f"{name}: not a whole snapshot (damaged at byte {end})")
    trailer, rows = json.loads(payloads[-1]), payloads[1:-1]
    count = sum(payload.count(b"\n") + 1 for payload in rows)
    if not isinstance(trailer, dict) or trailer.get("streams") != count:
        raise _Corrupt(f"{name}: holds {count} rows, its trailer says {payloads[-1][:80]!r}")
    return _header(payloads[0], name), rows


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
