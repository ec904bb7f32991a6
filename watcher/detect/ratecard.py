"""Rate cards: merchant (payTo address or resource URL) -> category, published price, version, tolerance.

Lookup order for a payment: its resource URL exactly (query string ignored), then the longest URL
prefix entry (written with a trailing `*`), then its payTo address. A charged amount outside
[price - tolerance, price + tolerance] of the card in force is `price_drift`.
"""

from __future__ import annotations

from typing import Iterable

import msgspec

from watcher.detect.policyfile import Card
from watcher.money import usdc

_CACHE_MAX = 100_000


class Rate(msgspec.Struct, frozen=True, gc=False):
    """One card entry with money in base units."""

    merchant: str
    category: str
    version: str
    price: int | None          # base units; None: category only, no price check
    low: int                   # smallest amount within tolerance
    high: int                  # largest amount within tolerance


class RateCard:
    def __init__(self, cards: Iterable[Card] = ()) -> None:
        self.by_address: dict[str, Rate] = {}
        self.by_url: dict[str, Rate] = {}
        self.prefixes: list[tuple[str, Rate]] = []
        for c in cards:
            price = usdc(c.price_usdc) if c.price_usdc is not None else None
            tol = 0 if price is None else int(price * c.tolerance_pct / 100)
            rate = Rate(c.merchant, c.category, c.version, price,
                        0 if price is None else price - tol, 0 if price is None else price + tol)
            if c.merchant.startswith("0x"):
                self.by_address[c.merchant] = rate
            elif c.merchant.endswith("*"):
                self.prefixes.append((c.merchant[:-1], rate))
            else:
                self.by_url[c.merchant] = rate          # the policy dropped its query string
        self.prefixes.sort(key=lambda p: -len(p[0]))
        self._cache: dict[tuple[str, str | None], Rate | None] = {}

    def __len__(self) -> int:
        return len(self.by_address) + len(self.by_url) + len(self.prefixes)

    def lookup(self, merchant: str, resource: str | None) -> Rate | None:
        key = (merchant, resource)
        try:
            return self._cache[key]
        except KeyError:
            pass
        rate = None
        if resource:
            url = resource.split("?", 1)[0]
            rate = self.by_url.get(url)
            if rate is None:
                for prefix, r in self.prefixes:
                    if url.startswith(prefix):
                        rate = r
                        break
        if rate is None:
            rate = self.by_address.get(merchant)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = rate
        return rate

    def categorize(self, merchant: str, resource: str | None) -> str | None:
        rate = self.lookup(merchant, resource)
        return None if rate is None else rate.category

    def known(self, merchant: str) -> bool:
        return merchant in self.by_address
