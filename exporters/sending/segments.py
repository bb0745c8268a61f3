"""The file layer of the disk queue: segment files of records, the position file, and the three things done to
them in a thread (scan at open, append and fsync, read back). Nothing here touches the event loop or the
queue's bookkeeping: each call takes plain values and returns an outcome the queue applies on the loop.

Layout of a queue directory:

- `00000000000000001234.seg`: records appended in seq order; the name is the seq of the first record. A
  segment is only ever appended to by the process that created it (a stateful codec's writer lives in memory),
  so after a restart writing always starts a new segment, and never after garbage.
- a record: a fixed header `HEADER` (magic/version byte, payload length, crc32, seq, created, nbytes, count)
  then the payload from the segment's `SegmentWriter`. The crc covers the other header fields and the payload.
- `position.json`: `{"version": 1, "position": P, "next_seq": N, "done": [[a, b], ...]}`: the first seq not
  acknowledged; a seq larger than any ever written (so seqs keep growing even when every segment was deleted);
  half-open ranges of seqs above P that are done (acknowledged out of order, dropped, found corrupt), so that
  only entries not done come back after a restart. Replaced atomically.

Checks are split by cost: the scan at open reads headers only (magic, length within the file, seqs growing),
which finds torn tails; the crc is verified when a record is read back, which every record after a restart is.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import struct
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.sending.queue import SegmentCodec, SegmentReader, SegmentWriter

MAGIC = 0xB1  # record format version 1
HEADER = struct.Struct("<BIIqdqq")  # magic, payload length, crc32, seq, created, nbytes, count
_CRC_FIELDS = struct.Struct("<BIqdqq")  # the header without its crc, as the crc covers it
POSITION_FILE = "position.json"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")

Write = Callable[[int, bytes | memoryview], int]


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _crc(payload: bytes | memoryview, seq: int, created: float, nbytes: int, count: int) -> int:
    fields = _CRC_FIELDS.pack(MAGIC, len(payload), seq, created, nbytes, count)
    return zlib.crc32(payload, zlib.crc32(fields))


def pack_record(seq: int, created: float, nbytes: int, count: int, payload: bytes) -> bytes:
    crc = _crc(payload, seq, created, nbytes, count)
    return HEADER.pack(MAGIC, len(payload), crc, seq, created, nbytes, count) + payload


@dataclass(frozen=True, slots=True)
class RecordHeader:
    length: int
    crc: int
    seq: int
    created: float
    nbytes: int
    count: int


def unpack_header(buf: bytes) -> RecordHeader | None:
    """The header at the start of `buf` (HEADER.size bytes); None when the magic byte is not ours."""
    magic, length, crc, seq, created, nbytes, count = HEADER.unpack(buf)
    if magic != MAGIC:
        return None
    return RecordHeader(length, crc, seq, created, nbytes, count)


def _sane(header: RecordHeader, first_seq: int, last_seq: int) -> bool:
    """What a scan can check of a header without reading the payload: seqs grow, sizes are not negative."""
    return header.seq >= first_seq and header.seq > last_seq and header.nbytes >= 0 and header.count >= 0


@dataclass(eq=False, slots=True)
class Segment:
    """One segment file. `starts`/`ends` locate its records (appended on the event loop once fsynced, read by
    the reader thread); `live` counts records whose entry is neither acknowledged nor dropped: at 0 the file
    can go. `size` is the file's length, what the disk bound counts (garbage after a torn tail included)."""

    first_seq: int
    path: Path
    size: int = 0
    live: int = 0
    deleted: bool = False
    starts: array = field(default_factory=lambda: array("q"))
    ends: array = field(default_factory=lambda: array("q"))

    def add(self, start: int, end: int) -> int:
        self.starts.append(start)
        self.ends.append(end)
        return len(self.starts) - 1

    def __repr__(self) -> str:
        return f"Segment({self.path.name}, size={self.size}, records={len(self.starts)}, live={self.live})"


# --------------------------------------------------------------------------------------------------------------
# The position file
# --------------------------------------------------------------------------------------------------------------


MAX_DONE_RANGES = 10_000
"""Done ranges kept in the position file at most; past that, the rest are sent again after a restart."""


@dataclass(frozen=True, slots=True)
class Progress:
    """What the position file holds: everything below `position` is done, and so is every seq in a `done`
    range (half-open, sorted, above `position`); `next_seq` is above every seq ever handed to a put."""

    position: int
    next_seq: int
    done: tuple[tuple[int, int], ...] = ()

    def is_done(self, seq: int) -> bool:
        if seq < self.position:
            return True
        index = bisect.bisect_right(self.done, (seq, _FAR)) - 1
        return index >= 0 and self.done[index][0] <= seq < self.done[index][1]


_FAR = 1 << 62


def read_position(directory: Path) -> tuple[Progress | None, str | None]:
    """The progress in the position file, and a problem when it exists but cannot be used (then None)."""
    path = directory / POSITION_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, f"cannot read {path}: {error}"
    try:
        doc = json.loads(raw)
        position, next_seq = int(doc["position"]), int(doc.get("next_seq", doc["position"]))
        done = tuple((int(a), int(b)) for a, b in doc.get("done", ()))
        if position < 0 or next_seq < position:
            raise ValueError(f"position {position}, next_seq {next_seq}")
        if any(a < position or b <= a for a, b in done) or list(done) != sorted(done):
            raise ValueError(f"done ranges {done[:5]}...")
    except (ValueError, KeyError, TypeError) as error:
        return None, f"{path} is unreadable ({error!r})"
    return Progress(position, next_seq, done), None


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(write: Write, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written}")
        view = view[written:]


def write_position(directory: Path, progress: Progress, write: Write = os.write) -> None:
    """Replace the position file atomically: write a temporary file, fsync, rename, fsync the directory."""
    tmp = directory / (POSITION_FILE + ".tmp")
    doc = {"version": 1, "position": progress.position, "next_seq": progress.next_seq,
           "done": [list(r) for r in progress.done[:MAX_DONE_RANGES]]}
    data = json.dumps(doc, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(write, fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / POSITION_FILE)
    fsync_directory(directory)


# --------------------------------------------------------------------------------------------------------------
# Scan at open
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """What a directory holds: segments with their records (entries to restore: `restored`, not done by
    `progress`), records found broken (`corrupt`: the header when it is sane, else None), and problems for
    `on_error`. `persisted`: the position file holds `progress`."""

    progress: Progress
    persisted: bool = False
    reserved: int = 0  # the next_seq the position file holds: seqs below it may have been handed out already
    segments: list[Segment] = field(default_factory=list)
    restored: list[tuple[Segment, int, RecordHeader]] = field(default_factory=list)
    corrupt: list[RecordHeader | None] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _walk(segment: Segment, last_seq: int) -> tuple[list[RecordHeader], list[RecordHeader | None], int, int]:
    """The sane records of one segment (recorded in `segment`), the broken ones, the last sane seq, and where the
    readable part ends. Reads headers only. A header whose seq does not grow is counted and stepped over by its
    length; a wrong magic byte or a length past the end of the file ends the walk (what follows cannot be
    located)."""
    headers: list[RecordHeader] = []
    broken: list[RecordHeader | None] = []
    fd = os.open(segment.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        segment.size = size
        pos = 0
        while pos < size:
            if size - pos < HEADER.size:
                broken.append(None)  # torn inside a header
                break
            header = unpack_header(os.pread(fd, HEADER.size, pos))
            if header is None:
                broken.append(None)
                break
            end = pos + HEADER.size + header.length
            sane = _sane(header, segment.first_seq, last_seq)
            if end > size:
                broken.append(header if sane else None)  # torn tail
                break
            if sane:
                segment.add(pos, end)
                headers.append(header)
                last_seq = header.seq
            else:
                broken.append(None)
            pos = end
    finally:
        os.close(fd)
    return headers, broken, last_seq, pos


def scan_directory(directory: Path, write: Write = os.write, reserve: int = 0) -> Scan:
    """Read a queue directory (in a thread): the position file, every segment's record headers. Persists the
    position file when it changed or was missing, and only then deletes segments that hold nothing to send
    (so a seq is never handed out twice for different data). Missing or unreadable position file: start from
    the first record on disk, reported in `problems` (resend rather than lose)."""
    directory.mkdir(parents=True, exist_ok=True)
    stored, problem = read_position(directory)
    progress = stored or Progress(0, 0)
    scan = Scan(progress)
    if problem:
        scan.problems.append(("position", f"{problem}: starting from the first record on disk"))
    names = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _SEGMENT_NAME.match(p.name)))
    if stored is None and names and not problem:
        scan.problems.append(("position", f"{directory / POSITION_FILE} is missing: starting from the first record on disk"))
    last_seq = -1
    removable: list[Segment] = []
    for first_seq, path in names:
        segment = Segment(first_seq, path)
        try:
            headers, broken, last_seq, readable = _walk(segment, last_seq)
        except OSError as error:
            scan.problems.append(("read", f"cannot read segment {path}: {error}"))
            continue
        if readable < segment.size:  # garbage after the last record: reported now, so cut it to report it once
            try:
                os.truncate(path, readable)
                segment.size = readable
            except OSError as error:
                scan.problems.append(("write", f"cannot cut the torn tail of {path}: {error}"))
        keep = False
        for index, header in enumerate(headers):
            if not progress.is_done(header.seq):
                scan.restored.append((segment, index, header))
                keep = True
        scan.corrupt.extend(h for h in broken if h is None or not progress.is_done(h.seq))
        for header in broken:
            if header is not None:
                last_seq = max(last_seq, header.seq)
        scan.segments.append(segment)
        if not keep:
            removable.append(segment)
    next_seq = max(progress.next_seq, progress.position, last_seq + 1)
    scan.progress = Progress(progress.position, next_seq, progress.done)
    reserved = next_seq + reserve  # `reserve` seqs from here on may be handed out before the next write
    if stored is None or reserved != stored.next_seq:
        try:
            write_position(directory, Progress(progress.position, reserved, progress.done), write)
        except OSError as error:
            scan.problems.append(("position", f"cannot write {directory / POSITION_FILE}: {error}"))
            return scan
    scan.persisted = True
    scan.reserved = reserved
    for segment in removable:
        try:
            segment.path.unlink()
        except OSError as error:
            scan.problems.append(("delete", f"cannot delete {segment.path}: {error}"))
            continue
        segment.deleted = True
        scan.segments.remove(segment)
    try:
        (directory / (POSITION_FILE + ".tmp")).unlink(missing_ok=True)
    except OSError:
        pass
    return scan


# --------------------------------------------------------------------------------------------------------------
# Append (the writer thread)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """What the writer thread gets of an entry: plain values, so the loop can change its slot meanwhile."""

    seq: int
    item: Any
    created: float
    nbytes: int
    count: int


@dataclass
class AppendOutcome:
    """`placed`: (batch index, segment, start, end) of records written and fsynced; `unencodable`: (batch
    index, message); everything else in the batch was not written. `opened`: new segments (register them);
    `sizes`: file lengths now. `error`: why writing stopped, if it did."""

    placed: list[tuple[int, Segment, int, int]] = field(default_factory=list)
    unencodable: list[tuple[int, str]] = field(default_factory=list)
    opened: list[Segment] = field(default_factory=list)
    sizes: dict[Segment, int] = field(default_factory=dict)
    error: str | None = None


class SegmentAppender:
    """Appends records to the current segment and fsyncs them; opens a new segment past `segment_bytes` or
    after any error (the codec writer's state may be ahead of what reached the file). Used by one thread at a
    time (the queue's cycles do not overlap). `write` is a seam: tests make it fail like a full disk."""

    def __init__(self, directory: Path, codec: SegmentCodec[Any], segment_bytes: int, write: Write) -> None:
        self._directory = directory
        self._codec = codec
        self._segment_bytes = segment_bytes
        self._write = write
        self._current: Segment | None = None
        self._fd = -1
        self._writer: SegmentWriter[Any] | None = None
        self._durable = 0  # bytes of the current segment known fsynced

    def append(self, batch: Sequence[Pending]) -> AppendOutcome:
        outcome = AppendOutcome()
        chunk: list[bytes] = []
        placements: list[tuple[int, Segment, int, int]] = []
        end = self._durable
        for index, pending in enumerate(batch):
            if self._current is None or end >= self._segment_bytes:
                if chunk and not self._commit(chunk, placements, end, outcome):
                    return outcome
                chunk, placements = [], []
                if not self._open_next(pending.seq, outcome):
                    return outcome
                end = 0
            assert self._writer is not None and self._current is not None
            try:
                payload = self._writer.encode(pending.item)
            except Exception as error:  # a codec bug must not stop the other entries from being written
                outcome.unencodable.append((index, f"{type(error).__name__}: {error}"))
                continue
            record = pack_record(pending.seq, pending.created, pending.nbytes, pending.count, payload)
            placements.append((index, self._current, end, end + len(record)))
            chunk.append(record)
            end += len(record)
        if chunk:
            self._commit(chunk, placements, end, outcome)
        return outcome

    def _open_next(self, first_seq: int, outcome: AppendOutcome) -> bool:
        self.seal()
        path = self._directory / segment_name(first_seq)
        try:
            # O_TRUNC: a file of this name can only be one this process abandoned after a failed write.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            fsync_directory(self._directory)
        except OSError as error:
            outcome.error = f"cannot create segment {path}: {error}"
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            return False
        self._current = Segment(first_seq, path)
        self._writer = self._codec.writer()
        self._durable = 0
        outcome.opened.append(self._current)
        outcome.sizes[self._current] = 0
        return True

    def _commit(self, chunk: list[bytes], placements: list[tuple[int, Segment, int, int]], end: int,
                outcome: AppendOutcome) -> bool:
        segment = self._current
        assert segment is not None
        try:
            _write_all(self._write, self._fd, b"".join(chunk))
            os.fsync(self._fd)
        except OSError as error:
            outcome.error = f"cannot write segment {segment.path}: {error}"
            try:  # best effort: a tail that is not garbage spares a "corrupt" report after a restart
                os.ftruncate(self._fd, self._durable)
                outcome.sizes[segment] = self._durable
            except OSError:
                try:
                    outcome.sizes[segment] = os.fstat(self._fd).st_size
                except OSError:
                    pass
            self.seal()
            return False
        self._durable = end
        outcome.placed.extend(placements)
        outcome.sizes[segment] = end
        return True

    @property
    def current(self) -> Segment | None:
        """The segment the next append goes to, while it has room (read on the loop between cycles, which do
        not overlap)."""
        return self._current if self._durable < self._segment_bytes else None

    def seal(self) -> None:
        """No more appends to the current segment."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._current = None
        self._writer = None
        self._durable = 0

    def delete(self, segment: Segment) -> None:
        """Remove a segment file (sealing it first if it is the current one)."""
        if segment is self._current:
            self.seal()
        segment.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Read back (a reader thread)
# --------------------------------------------------------------------------------------------------------------


class RecordUnreadable(Exception):
    """A record that cannot be delivered; `io` says whether reading failed (as opposed to the record being bad)."""

    def __init__(self, message: str, io: bool = False) -> None:
        super().__init__(message)
        self.io = io


class SegmentReaders:
    """Decodes records in a thread, one codec reader per segment, fed by `learn` every earlier record of the
    segment that it did not decode, so a codec with a per-segment dictionary can read any record. Reading
    forward continues where the reader stopped; going back starts a new reader from the segment's start. Used by
    one thread at a time (the queue holds a lock across a read)."""

    def __init__(self, codec: SegmentCodec[Any]) -> None:
        self._codec = codec
        self._readers: dict[Segment, tuple[SegmentReader[Any], int]] = {}

    def read(self, wanted: Sequence[tuple[Segment, int]]) -> list[Any]:
        """The item of each (segment, record index), or a `RecordUnreadable`, in the order asked."""
        for segment in [s for s in self._readers if s.deleted]:
            del self._readers[segment]
        results: list[Any] = []
        files: dict[Segment, int] = {}
        try:
            for segment, index in wanted:
                try:
                    fd = files.get(segment)
                    if fd is None:
                        fd = files[segment] = os.open(segment.path, os.O_RDONLY)
                    results.append(self._read_one(fd, segment, index))
                except OSError as error:
                    self._readers.pop(segment, None)
                    results.append(RecordUnreadable(f"cannot read {segment.path}: {error}", io=True))
        finally:
            for fd in files.values():
                os.close(fd)
        return results

    def _read_one(self, fd: int, segment: Segment, index: int) -> Any:
        reader, next_index = self._readers.get(segment, (None, 0))
        if reader is None or next_index > index:
            reader, next_index = self._codec.reader(), 0
        for earlier in range(next_index, index):
            payload = _payload(fd, segment, earlier)
            if payload is not None:
                try:
                    reader.learn(payload)
                except ValueError:
                    pass  # its own entry is reported when (if) it is read; later records may fail to decode
        self._readers[segment] = (reader, index + 1)
        payload = _payload(fd, segment, index)
        if payload is None:
            return RecordUnreadable(f"record {index} of {segment.path.name}: crc mismatch")
        try:
            return reader.decode(payload)
        except ValueError as error:
            return RecordUnreadable(f"record {index} of {segment.path.name}: the codec refused it ({error})")


def _payload(fd: int, segment: Segment, index: int) -> bytes | None:
    """A record's payload when its crc holds, else None."""
    start, end = segment.starts[index], segment.ends[index]
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        return None
    header = unpack_header(data[: HEADER.size])
    if header is None:
        return None
    payload = memoryview(data)[HEADER.size :]
    if len(payload) != header.length:
        return None
    if _crc(payload, header.seq, header.created, header.nbytes, header.count) != header.crc:
        return None
    return bytes(payload)
