"""Bar charts as inline SVG, drawn on the server: no script, no CDN, readable without colour
(each series has a pattern-free legend and the numbers are in a table beside the chart)."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 270
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 52, 36


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[int]
    css: str  # a class the stylesheet colours


GRID_STEPS = 4


def nice_max(value: int) -> int:
    """The chart's top: GRID_STEPS times the smallest 1/2/5 x 10^n step that reaches `value`,
    so every grid line falls on a round number (0, 1, 2, 3, 4; 0, 500, …, 2000)."""
    needed = max(-(-value // GRID_STEPS), 1)
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= needed:
                return GRID_STEPS * m * step
        step *= 10


# A chart's vertical axis: its top, and how a grid line's value is labelled.
Axis = tuple[int, Callable[[int], str]]


def count_axis(largest: int) -> Axis:
    return nice_max(largest), str


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def byte_axis(largest: int) -> Axis:
    """Four round steps in the binary unit of the largest value, every label in that unit
    (0, 1 KiB, 2 KiB, …), rather than round decimal steps that read 2.0 KiB, 2.9 KiB."""
    power = 0
    while largest >= 1024 ** (power + 1) and power < len(BYTE_UNITS) - 1:
        power += 1
    unit = 1024**power
    if power == 0:
        return nice_max(largest), lambda v: f"{v} B" if v else "0"
    needed = largest / unit / GRID_STEPS
    step = 10.0 ** math.floor(math.log10(needed))
    step = next(m * step for m in (1, 2, 5, 10) if m * step >= needed)
    return round(GRID_STEPS * step * unit), lambda v: f"{v / unit:g} {BYTE_UNITS[power]}" if v else "0"


def bar_chart(
    title: str,
    days: Sequence[date],
    series: Sequence[Series],
    fmt: Callable[[int], str] = str,
    axis: Callable[[int], Axis] = count_axis,
) -> SafeString:
    """`fmt` writes a bar's value in its tooltip; `axis` scales and labels the grid."""
    top, label = axis(max([0, *(v for s in series for v in s.values)]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.8 / max(len(series), 1), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="t-{id(series)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="t-{id(series)}">{escape(title)}</title>'
    ]
    for i in range(GRID_STEPS + 1):
        value = top * i // GRID_STEPS
        y = TOP + plot_h - plot_h * i / GRID_STEPS
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis y" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label(value))}</text>'
        )
    labelled = 0
    for d_index, day in enumerate(days):
        x0 = LEFT + slot * d_index + slot * 0.1
        for s_index, s in enumerate(series):
            value = s.values[d_index]
            h = plot_h * value / top
            x = x0 + bar * s_index
            parts.append(
                f'<rect class="{s.css}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{day:%b %d} {escape(s.label)}: {escape(fmt(value))}</title></rect>'
            )
        if d_index % max(len(days) // 6, 1) == 0 or d_index == len(days) - 1:
            # Every other label is "minor": a phone's stylesheet draws the labels larger and
            # leaves those out, so they never overlap.
            last = d_index == len(days) - 1
            minor = " minor" if labelled % 2 and not last else ""
            labelled += 1
            # The last date ends at its bar, never past the drawing's edge.
            x, anchor = (x0 + slot * 0.8, "end") if last else (x0 + slot * 0.4, "middle")
            parts.append(
                f'<text class="axis x{minor}" x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="{anchor}">{day:%b %d}</text>'
            )
    x = LEFT
    for s in series:
        parts.append(
            f'<rect class="{s.css}" x="{x}" y="10" width="14" height="14"/>'
            f'<text class="legend" x="{x + 20}" y="22">{escape(s.label)}</text>'
        )
        # Room for the label drawn at a phone's larger size too.
        x += 40 + 16 * len(s.label)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text is escaped above


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
