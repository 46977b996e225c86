"""What one image costs, in integer micro-units. Prices are data (catalog.Pricing); this applies
them with exact decimals and rounds once, at the end."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from .catalog import ModelSpec
from .generation import ResolvedRequest

MICROS = Decimal(1_000_000)


def unit_price_micros(spec: ModelSpec, req: ResolvedRequest,
                      multiplier: Decimal = Decimal(1)) -> int:
    """Price of one image of `req` for a caller whose group ratio is `multiplier`."""
    pricing = spec.pricing
    size, quality = str(req.size), req.quality or ""
    quality_mult = pricing.quality_multipliers.get(quality, Decimal(1))
    if f"{size}/{quality}" in pricing.table:
        price = pricing.table[f"{size}/{quality}"]
    elif size in pricing.table:
        price = pricing.table[size] * quality_mult
    else:
        if pricing.base_pixels:
            size_mult = Decimal(req.size.pixels) / Decimal(pricing.base_pixels)
        else:
            size_mult = pricing.size_multipliers.get(size, Decimal(1))
        price = pricing.per_image * size_mult * quality_mult
    micros = (price * multiplier * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(micros)


def format_money(micros: int, currency: str) -> str:
    return f"{Decimal(micros) / MICROS:.6f} {currency}"


def parse_money(text: str | int | float | Decimal) -> int:
    """'1.5' -> 1_500_000 micros. Floats go through str() so 0.1 stays 0.1."""
    value = Decimal(str(text))
    micros = (value * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(micros)
