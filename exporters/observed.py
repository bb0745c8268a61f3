"""Observable instruments that several objects report through: every remote-write endpoint, and the one a
config reload builds in place of another.

    self._observed = OwnedMeter(meter or metrics.get_meter("headwater.exporters.x"), self)
    self._observed.create_observable_gauge("headwater_x", callbacks=[self._observe])   # as on a meter
    ...
    self._observed.forget()   # at shutdown: the gauges stop reporting this object

Why: the OpenTelemetry SDK keeps the callbacks of the first `create_observable_*` call for a name on a meter
and ignores later ones, so a second endpoint's queue gauges never appeared, and after a reload replaced an
exporter its gauges kept reading the one it replaced (stopped, its queue handed over). Here each observable
instrument is created once per meter and name, with a callback that asks every object registered under
that name, oldest first: where two report the same attributes (an exporter and its replacement, for the
moment of the swap) the newer one's value is the one kept. Counters and histograms are shared by the SDK
already and pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics

Callback = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]

_TABLE = "_headwater_observed"  # on the meter: {(kind, name): {owner id: callbacks}}


class OwnedMeter:
    """`meter` as seen by `owner`: observable instruments report for it until `forget`."""

    def __init__(self, meter: Any, owner: object) -> None:
        self._meter = meter
        self._owner = id(owner)
        self._registered: list[dict[int, Sequence[Callback]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)

    def create_observable_gauge(self, name: str, callbacks: Sequence[Callback] | None = None, unit: str = "",
                                description: str = "") -> Any:
        return self._observable("create_observable_gauge", name, callbacks, unit, description)

    def create_observable_counter(self, name: str, callbacks: Sequence[Callback] | None = None, unit: str = "",
                                  description: str = "") -> Any:
        return self._observable("create_observable_counter", name, callbacks, unit, description)

    def create_observable_up_down_counter(self, name: str, callbacks: Sequence[Callback] | None = None,
                                          unit: str = "", description: str = "") -> Any:
        return self._observable("create_observable_up_down_counter", name, callbacks, unit, description)

    def forget(self) -> None:
        """Stop reporting for the owner (safe twice)."""
        for owners in self._registered:
            owners.pop(self._owner, None)
        self._registered.clear()

    def _observable(self, kind: str, name: str, callbacks: Sequence[Callback] | None, unit: str,
                    description: str) -> Any:
        table: dict[tuple[str, str], tuple[Any, dict[int, Sequence[Callback]]]] = self._meter.__dict__.setdefault(
            _TABLE, {})
        if (kind, name) not in table:
            owners: dict[int, Sequence[Callback]] = {}

            def observe(options: metrics.CallbackOptions) -> list[metrics.Observation]:
                return [o for found in list(owners.values()) for callback in found for o in callback(options)]

            instrument = getattr(self._meter, kind)(name, callbacks=[observe], unit=unit, description=description)
            table[(kind, name)] = (instrument, owners)
        instrument, owners = table[(kind, name)]
        owners.pop(self._owner, None)  # re-registered: goes last, as the newest
        owners[self._owner] = list(callbacks or ())
        self._registered.append(owners)
        return instrument
