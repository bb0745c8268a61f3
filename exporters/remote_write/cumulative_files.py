"""The files delta-to-cumulative state lives in (`cumulative.py` keeps the state, this module its bytes on disk):
a snapshot and change logs of checksummed frames, appended and fsynced in a thread, compacted from the files
alone, and read back at load with torn tails cut and anything untrustworthy refused. See `cumulative.py`'s
docstring for what is on disk when, and why a change log.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger("headwater.exporters.remote_write")

STATE_VERSION = 2

GONE = "-"  # the tag of a row that says a stream was forgotten
ROWS_PER_SLICE = 250  # rows encoded on the loop between two yields (~0.5 ms)
_ROWS_PER_FRAME = 1000  # rows per snapshot frame
_MAGIC = b"\xffd2c"  # never in JSON text (ensure_ascii), so a frame cannot start inside a payload
_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_MAX_CANDIDATES = 64  # frame starts looked at after a damaged frame before calling the file corrupt
_KEY = slice(6, 30)  # where a row line holds its key: `["s","<24 characters of base64>",...`


class _Corrupt(ValueError):
    """The state files cannot be trusted; the message says why."""


class Compaction(NamedTuple):
    base: bool  # fold in the snapshot at `path`
    logs: tuple[int, ...]  # and these closed logs, oldest first
    generation: int  # the first log the new snapshot does not cover


class StateFiles:
    """The files of one state, beside each other: the snapshot at `path` and change logs `<name>.log-<n>`
    for n from the snapshot's `log` on, numbered without gaps.

    Both are sequences of frames (magic, length, CRC-32, payload). A snapshot: a header `{"version": 2,
    "log": n}`, row frames, a trailer `{"streams": count}`; written whole to a temp file and renamed into
    place. A log: the same header, then one frame per save. A row frame holds rows one per line; a row is
    a stream's whole state `[tag, key, last_seen, intervals, *values]`, or `["-", key]` for a stream
    forgotten, and a later row of a key replaces an earlier one. Compaction merges at that level, as bytes
    (key at a fixed offset, see `row_lines`): parsing 100k rows into lists would make the collector walk
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
                    if row[0] == GONE:
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

    def append(self, payloads: list[bytes]) -> Compaction | None:
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

    def _compaction_if_due(self) -> Compaction | None:
        logged = sum(self._sizes.values())
        due = self._compact_soon or logged >= max(self._min_compact_bytes, self._snapshot_bytes, self._retry_at)
        if self._compacting or not due:
            return None
        self._next_log += 1
        self._compacting, self._compact_soon = True, False
        return Compaction(self._snapshot, tuple(n for n in self._sizes if n < self._next_log), self._next_log)

    # -- compaction -------------------------------------------------------------------------------------------

    def compact(self, job: Compaction) -> None:
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


def row_lines(rows: list[list]) -> bytes:
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
        if not isinstance(rows, list) or not all(isinstance(row, list) and row and row[0] != GONE for row in rows):
            raise _Corrupt(f"{name}: expected a list of rows")
        return 1, [row_lines(rows[i:i + _ROWS_PER_FRAME]) for i in range(0, len(rows), _ROWS_PER_FRAME)]
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
