"""Charts drawn on the server as SVG: horizontal bars (one or two series) and a line.

No JavaScript: a chart is markup the page embeds. Every text is escaped.

>>> svg = bars([("micro_loan on push", (3, 5))], ("live", "candidate"))
>>> svg.startswith("<svg") and "micro_loan on push" in svg and svg.count("<rect") == 4  # two legend keys, two bars
True
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bars", "line"]

COLOURS = ("#4e79a7", "#f28e2b", "#59a14f")
ROW = 22
LABEL_WIDTH = 230
"""At least; wider when a label needs it (the whole chart scales down to the page's width)."""
CHAR_WIDTH = 7
"""A generous width of one character of the 12 px labels."""
BAR_WIDTH = 380


def bars(
    rows: Sequence[tuple[str, Sequence[float]]], series: Sequence[str], *, title: str = "", unit: str = ""
) -> Markup:
    """One row per label, one bar per series in it, all on the same scale; the value written at each bar's end."""
    n = max(len(series), 1)
    top = 26 if series else 6
    height = top + len(rows) * (ROW * n + 6) + 4
    label_width = max([LABEL_WIDTH] + [CHAR_WIDTH * len(label) + 10 for label, _ in rows])
    width = label_width + BAR_WIDTH + 70
    peak = max([v for _, values in rows for v in values] + [0.0]) or 1.0
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
    ]
    if title:
        out.append(f"<title>{escape(title)}</title>")
    for i, name in enumerate(series):
        x = label_width + i * 120
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + 16}" y="16" font-size="12">{escape(name)}</text>')
    y = top
    for label, values in rows:
        out.append(
            f'<text x="{label_width - 6}" y="{y + ROW * n / 2 + 4:.0f}" font-size="12" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        for i, value in enumerate(values):
            w = BAR_WIDTH * value / peak
            out.append(
                f'<rect x="{label_width}" y="{y + i * ROW + 2}" width="{w:.1f}" height="{ROW - 4}" '
                f'fill="{COLOURS[i % len(COLOURS)]}"><title>{escape(label)}: {_num(value)}{unit}</title></rect>'
            )
            out.append(
                f'<text x="{label_width + w + 4:.1f}" y="{y + i * ROW + ROW - 7}" font-size="11">'
                f"{_num(value)}{escape(unit)}</text>"
            )
        y += ROW * n + 6
    out.append("</svg>")
    return Markup("".join(out))


def line(points: Sequence[tuple[float, float]], *, x_label: str, y_label: str, width: int = 640) -> Markup:
    """A line through ``points`` (x, y), axes from 0 to the largest x and y."""
    height, left, bottom = 220, 60, 30
    max_x = max([x for x, _ in points] + [0.0]) or 1.0
    max_y = max([y for _, y in points] + [0.0]) or 1.0
    min_x = min([x for x, _ in points] + [max_x])
    span = (max_x - min_x) or 1.0

    def at(x: float, y: float) -> tuple[str, str]:
        return (
            f"{left + (width - left - 10) * (x - min_x) / span:.1f}",
            f"{height - bottom - (height - bottom - 10) * y / max_y:.1f}",
        )

    path = " ".join(",".join(at(x, y)) for x, y in points)
    dots = "".join(
        f'<circle cx="{cx}" cy="{cy}" r="3" fill="{COLOURS[0]}"/>' for cx, cy in (at(x, y) for x, y in points)
    )
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#888"/>'
        f'<line x1="{left}" y1="10" x2="{left}" y2="{height - bottom}" stroke="#888"/>'
        f'<text x="{left - 4}" y="16" font-size="11" text-anchor="end">{_num(max_y)}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{width - 10}" y="{height - 8}" font-size="11" text-anchor="end">{escape(x_label)}</text>'
        f'<text x="{left + 4}" y="{height - 8}" font-size="11">{escape(y_label)}</text>'
        f'<polyline fill="none" stroke="{COLOURS[0]}" stroke-width="2" points="{path}"/>' + dots + "</svg>"
    )


def _num(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
