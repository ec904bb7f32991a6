"""Merchant -> category, from the configuration's `[categories]` table.

A key is either a payTo address (matched exactly, any letter case) or a resource URL prefix (the longest
matching prefix wins). The detection policy's rate card (issue C) can supply a richer map.
"""

from __future__ import annotations

from typing import Callable

Categorize = Callable[[str, "str | None"], "str | None"]


class CategoryMap:
    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.by_address: dict[str, str] = {}
        self.prefixes: list[tuple[str, str]] = []
        for key, category in (table or {}).items():
            if key.startswith("0x") and len(key) == 42:
                self.by_address[key.lower()] = category
            else:
                self.prefixes.append((key, category))
        self.prefixes.sort(key=lambda kv: -len(kv[0]))
        self._cache: dict[tuple[str, str | None], str | None] = {}

    def __bool__(self) -> bool:
        return bool(self.by_address or self.prefixes)

    def __call__(self, merchant: str, resource: str | None) -> str | None:
        hit = self._cache.get((merchant, resource), self)
        if hit is not self:
            return hit  # type: ignore[return-value]
        cat = self.by_address.get(merchant.lower())
        if cat is None and resource:
            for prefix, c in self.prefixes:
                if resource.startswith(prefix):
                    cat = c
                    break
        if len(self._cache) < 100_000:
            self._cache[(merchant, resource)] = cat
        return cat


def rate_card_first(rate_card: Categorize, table: dict[str, str] | None) -> Categorize:
    """The policy's rate card, then the configuration's [categories] table (the daemon's and replay's)."""
    config_map = CategoryMap(table)
    if not config_map:
        return rate_card
    return lambda merchant, resource: rate_card(merchant, resource) or config_map(merchant, resource)
