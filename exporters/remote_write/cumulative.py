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

On disk: a snapshot at `state_path` and change logs beside it, `<name>.log-<n>` (see `StateFiles`). A save
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
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
)

from exporters.remote_write.buckets import (
    MAX_EXPONENTIAL_BUCKETS as MAX_EXPONENTIAL_BUCKETS,  # re-exported
)
from exporters.remote_write.buckets import ExponentialBuckets, add_exponential
from exporters.remote_write.cumulative_files import (
    GONE,
    ROWS_PER_SLICE,
    Compaction,
    StateFiles,
    row_lines,
)

logger = logging.getLogger("headwater.exporters.remote_write")

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
        self._files = None if self._path is None else StateFiles(self._path, min_compact_bytes)
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

    async def _compact_in_thread(self, job: Compaction) -> None:
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
        `ROWS_PER_SLICE` at a time."""
        streams = self._streams
        for i in range(0, len(keys), ROWS_PER_SLICE):
            rows = []
            for key in keys[i:i + ROWS_PER_SLICE]:
                name = base64.b64encode(key).decode("ascii")
                stream = streams.get(key)
                rows.append([GONE, name] if stream is None else stream.row(name))
            yield row_lines(rows)

    def _load(self, files: StateFiles) -> None:
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
