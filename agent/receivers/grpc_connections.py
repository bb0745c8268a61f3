"""Connection management for the OTLP/gRPC receiver, as grpc.aio server options.

- Keepalive: the server pings each connection after `keepalive_time` without activity, also when no call is
  open (so a client that vanished without a FIN is found), and closes it when the ack does not come within
  `keepalive_timeout` (grpc's ping timeout is set to it too). Pings never stop for want of data
  (`grpc.http2.max_pings_without_data` 0).
- `max_connection_idle`: a connection without a call for that long gets a GOAWAY, and its descriptor is
  reclaimed; the client reconnects when it next exports.
- `max_connection_age` (+ up to 10 % jitter, grpc's): a GOAWAY ends even a busy connection, so long-lived
  clients spread again over the receivers behind a load balancer; calls in flight get
  `max_connection_age_grace` to finish before the connection is closed.
- `max_concurrent_streams`: calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
  more wait in the client.

Clients pinging more often than every 5 minutes without data are told `too_many_pings` (grpc's default
enforcement, which the Collector also keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

_MAX_MS = 2**31 - 1  # grpc's options are C ints of milliseconds: about 24.8 days


@dataclass(frozen=True)
class GrpcConnectionSettings:
    """Keepalive and connection lifetimes of one gRPC listener, in seconds; 0 turns `max_connection_idle` or
    `max_connection_age` off.

        GrpcConnectionSettings(keepalive_time=60.0, keepalive_timeout=20.0, max_connection_age=3600.0)
    """

    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_connection_idle: float = 300.0
    max_connection_age: float = 3600.0
    max_connection_age_grace: float = 30.0
    max_concurrent_streams: int = 100

    def __post_init__(self) -> None:
        for name, least in (("keepalive_time", 0.001), ("keepalive_timeout", 0.001), ("max_connection_idle", 0.0),
                            ("max_connection_age", 0.0), ("max_connection_age_grace", 0.0)):
            value = getattr(self, name)
            if not least <= value <= _MAX_MS / 1000:
                bound = "above 0 seconds" if least else "of 0 seconds or more"
                raise ValueError(f"{name}: expected a duration {bound} and at most {_MAX_MS // 1000}s, "
                                 f"found {value!r}")
        if not 1 <= self.max_concurrent_streams <= _MAX_MS:
            raise ValueError(f"max_concurrent_streams: expected at least 1, found {self.max_concurrent_streams!r}")

    def server_options(self) -> list[tuple[str, int]]:
        """The grpc.aio server options these settings stand for."""
        options = [
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)),
            # grpc 1.85 closes a connection whose ping went unanswered after this one (default 1 min), not
            # after keepalive_timeout_ms (measured: a silent peer stayed open 48 s with only the latter at 0.3 s).
            ("grpc.http2.ping_timeout_ms", _ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
        ]
        if self.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", _ms(self.max_connection_idle)))
        if self.max_connection_age:
            options.append(("grpc.max_connection_age_ms", _ms(self.max_connection_age)))
            options.append(("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace)))
        return options


def _ms(seconds: float) -> int:
    return max(1, min(_MAX_MS, round(seconds * 1000)))
