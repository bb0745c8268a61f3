"""The systemd notification protocol (sd_notify(3)), spoken directly: one datagram per message to the
AF_UNIX socket named by `NOTIFY_SOCKET`, so there is no dependency on libsystemd or a binding to it.

    notifier = Notifier.from_environment()      # a no-op when NOTIFY_SOCKET is unset (not under systemd)
    notifier.ready("running")                   # READY=1 + STATUS=
    task = asyncio.create_task(keep_watchdog(notifier, notifier.watchdog_interval))

Rules followed (systemd.service(5), sd_notify(3), sd_watchdog_enabled(3)):
- `NOTIFY_SOCKET` is a filesystem path (`/run/systemd/notify`) or an abstract socket written with a leading
  `@`, which stands for the NUL byte. Anything else is not a socket this module can reach: it says so once
  and stays silent.
- A message is newline-separated `KEY=VALUE` assignments.
- The watchdog is on when `WATCHDOG_USEC` is a positive integer and `WATCHDOG_PID`, if set, is this process:
  the manager then expects `WATCHDOG=1` at least every `WATCHDOG_USEC`; sd_watchdog_enabled(3) advises
  half of that, which leaves a whole half-period of slack for scheduling delays.
- `RELOADING=1` carries `MONOTONIC_USEC=` (CLOCK_MONOTONIC in µs), which systemd 253+ requires to match the
  reload to the READY=1 that ends it; systemd 252 ignores the extra field.

Sending never blocks and never raises: the socket is non-blocking, and a message that cannot be sent (the
manager's queue full, the socket gone) is dropped and logged, once per kind of failure. A lost READY=1 shows
in `systemctl status` as a start timeout; a lost WATCHDOG=1 is covered by the next one.

Why the watchdog runs on the event loop (`keep_watchdog`), not in a thread: the point is to tell systemd the
loop still turns. A thread would keep pinging while every receiver and exporter on a stuck loop starved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from agent.logs import kv

log = logging.getLogger("headwater.notify")

# sd_notify(3): a STATUS= line is free text for a person; keep it to one short line.
_MAX_STATUS_CHARS = 200


class NotifySocketError(ValueError):
    """`NOTIFY_SOCKET` or the watchdog variables hold something this module cannot use."""


def socket_address(value: str) -> str | bytes:
    """The address to `sendto` for a `NOTIFY_SOCKET` value: a path as is; `@name` as the abstract name
    `\\0name` (bytes, since the NUL byte is part of the name)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    raise NotifySocketError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @abstract-name")


@dataclass(frozen=True)
class Watchdog:
    """What the manager asked for: a ping at least every `timeout` seconds."""

    timeout: float

    @property
    def interval(self) -> float:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.timeout / 2


def watchdog_from_environment(env: Mapping[str, str], pid: int) -> Watchdog | None:
    """The watchdog systemd armed for process `pid`, or None when there is none for it.

    `WATCHDOG_PID` names the process the watchdog is meant for; a process that inherited the variables from
    its parent must not ping on the parent's behalf (and need not: systemd only counts the main process's
    pings under NotifyAccess=main)."""
    usec = env.get("WATCHDOG_USEC")
    if usec is None or usec == "":
        return None
    try:
        micros = int(usec)
    except ValueError:
        raise NotifySocketError(f"WATCHDOG_USEC={usec!r}: expected a positive integer (microseconds)") from None
    if micros <= 0:
        raise NotifySocketError(f"WATCHDOG_USEC={usec!r}: expected a positive integer (microseconds)")
    owner = env.get("WATCHDOG_PID")
    if owner not in (None, ""):
        try:
            owner_pid = int(owner)
        except ValueError:
            raise NotifySocketError(f"WATCHDOG_PID={owner!r}: expected a process id") from None
        if owner_pid != pid:
            return None
    return Watchdog(micros / 1_000_000)


class Notifier:
    """Sends sd_notify messages to one socket; `Notifier(None)` (no NOTIFY_SOCKET) sends nothing."""

    def __init__(self, address: str | bytes | None, watchdog: Watchdog | None = None) -> None:
        self.address = address
        self.watchdog = watchdog if address is not None else None
        self._socket: socket.socket | None = None
        self._failures_logged: set[str] = set()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (default: this process's environment).
        Values it cannot use are logged and leave that part off: a bad variable must not stop the agent."""
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        try:
            address = socket_address(value)
        except NotifySocketError as exc:
            log.warning("not notifying systemd", **kv(reason=str(exc)))
            return cls(None)
        try:
            watchdog = watchdog_from_environment(env, pid)
        except NotifySocketError as exc:
            log.warning("systemd watchdog off", **kv(reason=str(exc)))
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message of `KEY=VALUE` lines (keyword names are the keys: `send(READY=1, STATUS="...")`).
        Returns whether the datagram left; failures are logged, never raised."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
            return True
        except OSError as exc:
            kind = type(exc).__name__
            if kind not in self._failures_logged:  # WATCHDOG=1 every few seconds must not flood the log
                self._failures_logged.add(kind)
                log.warning("systemd notification not sent", **kv(socket=_printable(self.address),
                                                                   message=",".join(fields), error=str(exc)))
            return False

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status[:_MAX_STATUS_CHARS])

    def reloading(self) -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         STATUS="reloading the config")

    def stopping(self, status: str = "stopping: draining exporters") -> bool:
        return self.send(STOPPING=1, STATUS=status[:_MAX_STATUS_CHARS])

    def status(self, status: str) -> bool:
        return self.send(STATUS=status[:_MAX_STATUS_CHARS])

    def ping_watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


async def keep_watchdog(notifier: Notifier, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Ping the watchdog every half of its timeout, from the event loop, until cancelled. Returns at once when
    no watchdog is armed. `sleep` is injectable so tests drive time."""
    watchdog = notifier.watchdog
    if watchdog is None:
        return
    log.info("systemd watchdog on", **kv(timeout_s=watchdog.timeout, ping_every_s=watchdog.interval))
    while True:
        notifier.ping_watchdog()
        await sleep(watchdog.interval)


async def report_status(notifier: Notifier, line: Callable[[], str], every: float,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Send `STATUS=<line()>` every `every` seconds until cancelled (nothing when not under systemd). A line
    that fails to build is logged and skipped: the status is a courtesy, never a reason to stop."""
    if not notifier.enabled:
        return
    while True:
        await sleep(every)
        try:
            text = line()
        except Exception:
            log.exception("status line failed")
            continue
        notifier.status(text)


def _one_line(value: str) -> str:
    return value.replace("\n", " ")


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
