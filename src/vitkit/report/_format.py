"""Human-readable formatting of report values; every function returns '—' for bad input."""

from __future__ import annotations

import math
from datetime import datetime

MISSING = "—"


def number(value: object) -> float | None:
    """``value`` as a finite float, or ``None``."""
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def percent(value: object, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.954 -> '95.4%'``."""
    x = number(value)
    return MISSING if x is None else f"{x * 100:.{digits}f}%"


def decimal(value: object, digits: int = 4) -> str:
    """A float with a fixed number of decimals."""
    x = number(value)
    return MISSING if x is None else f"{x:.{digits}f}"


def integer(value: object) -> str:
    """An integer with thousands separators: ``12345 -> '12,345'``."""
    x = number(value)
    return MISSING if x is None else f"{round(x):,}"


def learning_rate(value: object) -> str:
    """A learning rate in compact scientific notation: ``0.001 -> '1.0e-03'``."""
    x = number(value)
    return MISSING if x is None else f"{x:.1e}"


def duration(value: object) -> str:
    """Seconds as ``'42.1 s'``, ``'12 min 05 s'`` or ``'2 h 03 min'``."""
    x = number(value)
    if x is None or x < 0:
        return MISSING
    if x < 60:
        return f"{x:.1f} s"
    minutes, seconds = divmod(round(x), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def timestamp(value: object) -> str:
    """An ISO date/time as ``'2024-05-01 14:03 UTC'``; other text is returned unchanged."""
    if value is None or value == "":
        return MISSING
    text = str(value)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if len(text) <= 10:
        return moment.strftime("%Y-%m-%d")
    zone = moment.tzname()
    return moment.strftime("%Y-%m-%d %H:%M") + (f" {zone}" if zone else "")
