"""Small text charts for the memory screens, drawn with Rich markup: a horizontal bar on a common scale, a
budget gauge, and a column chart over time. Empty or zero data draws nothing solid."""

from __future__ import annotations

EIGHTHS = " ▏▎▍▌▋▊▉█"
COLUMN_EIGHTHS = " ▁▂▃▄▅▆▇█"


def hbar(value: float, scale: float, width: int) -> str:
    """`value` as a bar of up to `width` cells, `scale` filling them all; a sliver for a tiny nonzero value."""
    if value <= 0 or scale <= 0 or width <= 0:
        return ""
    eighths = max(1, round(min(value / scale, 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def gauge(used: float, total: float, width: int) -> str:
    """A budget's use: the used part solid, the rest dotted; all dotted without a budget."""
    filled = hbar(used, total, width) if total > 0 else ""
    return f"[b]{filled}[/b][dim]{'·' * (width - len(filled))}[/dim]"


def columns(values: list[float], height: int) -> list[str]:
    """A column chart, top row first: one column per value on a common scale, `height` rows tall. A zero
    draws an empty column; no values draw no rows."""
    top = max(values, default=0.0)
    if top <= 0:
        return [" " * len(values) for _ in range(height)] if values else []
    units = [max(1, round(value / top * height * 8)) if value > 0 else 0 for value in values]
    rows = []
    for row in range(height):
        floor = (height - 1 - row) * 8
        rows.append("".join(COLUMN_EIGHTHS[min(8, max(0, unit - floor))] for unit in units))
    return rows


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
