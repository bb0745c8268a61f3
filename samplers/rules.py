"""Tier rules compiled for the ingest path: which tier a span puts its trace in.

A trace's tier is the highest-priority (lowest-index) tier any of its spans matches, so a span only needs
checking against tiers above the trace's current one: most spans of a trace cost nothing here. Attribute
conditions first test `key in span_bytes` at C speed before walking the attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

from samplers.settings import Tier
from samplers.wire import find_attribute, resource_attributes_bytes


def as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class TierMatcher:
    def __init__(self, tiers: Sequence[Tier]) -> None:
        self.tiers = tuple(tiers)
        self.catch_all = len(self.tiers) - 1
        self._rules = []
        for index, tier in enumerate(self.tiers[:-1]):
            m = tier.match
            self._rules.append((
                index,
                tuple((k.encode(), frozenset(v)) for k, v in m.resource_attributes),
                tuple((k.encode(), frozenset(v)) for k, v in m.span_attributes),
                frozenset(n.encode() for n in m.span_names),
                frozenset(m.span_kinds),
                m.root_only,
            ))

    @property
    def quick_keys(self) -> tuple[bytes, ...] | None:
        """When every rule above the catch-all needs some span attribute, a span lacking all of these keys
        cannot move its trace up a tier, so the caller may skip `span_tier` (a bytes search instead of a call).
        None when some rule could match without a span attribute."""
        keys: list[bytes] = []
        for _i, _res, span_conds, *_ in self._rules:
            if not span_conds:
                return None
            if span_conds[0][0] not in keys:
                keys.append(span_conds[0][0])
        return tuple(keys)

    def resource_mask(self, resource_part: bytes) -> tuple[bool, ...]:
        """Per tier: do this resource's attributes meet the tier's resource conditions?"""
        mask = []
        resource = None
        for _i, resource_conds, *_ in self._rules:
            ok = True
            if resource_conds:
                if resource is None:
                    resource = resource_attributes_bytes(resource_part)
                for key, values in resource_conds:
                    value = find_attribute(resource, key, 1) if key in resource else None
                    if value is None or as_text(value) not in values:
                        ok = False
                        break
            mask.append(ok)
        return tuple(mask)

    def span_tier(self, span: bytes, name: bytes, kind: int, is_root: bool,
                  resource_ok: tuple[bool, ...], below: int) -> int:
        """The lowest tier index smaller than `below` that this span matches, else `below`."""
        for index, _res, span_conds, names, kinds, root_only in self._rules:
            if index >= below:
                break
            if not resource_ok[index] or (root_only and not is_root):
                continue
            if names and name not in names:
                continue
            if kinds and kind not in kinds:
                continue
            ok = True
            for key, values in span_conds:
                if key not in span:
                    ok = False
                    break
                value = find_attribute(span, key, 9)
                if value is None or as_text(value) not in values:
                    ok = False
                    break
            if ok:
                return index
        return below
