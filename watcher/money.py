"""Money is an integer number of token base units. USDC has 6 decimals.

Conversion to dollars happens only for display and metrics, never in state.
"""

from __future__ import annotations

USDC_DECIMALS = 6
USDC_UNIT = 10**USDC_DECIMALS
MAX_UINT256 = 2**256


def usdc(amount_usdc: float | int | str) -> int:
    """Dollars (as written in a config file) to base units, rounding to the nearest unit."""
    from decimal import Decimal

    return int((Decimal(str(amount_usdc)) * USDC_UNIT).to_integral_value())


def fmt_usdc(base_units: int) -> str:
    """Base units to a display string such as '12.345600'."""
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(int(base_units)), USDC_UNIT)
    return f"{sign}{whole}.{frac:0{USDC_DECIMALS}d}"


def to_float_usdc(base_units: int) -> float:
    """For metrics and charts only."""
    return base_units / USDC_UNIT
