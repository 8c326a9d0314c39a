"""Unit tests for the server-drawn charts: grid labels are the values at their lines."""

import re
from datetime import date, timedelta

import pytest

from portal.charts import Series, bar_chart, byte_axis, nice_max


@pytest.mark.parametrize(
    ("value", "top"), [(0, 4), (1, 4), (4, 4), (5, 8), (9, 20), (1234, 2000), (4_000_000, 4_000_000)]
)
def test_the_top_is_four_round_steps_at_or_above_the_largest_value(value: int, top: int) -> None:
    assert nice_max(value) == top


def test_every_grid_label_names_the_value_at_its_line() -> None:
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
    svg = str(bar_chart("hits", days, [Series("hits", [3, 5, 1], "hits")]))
    labels = [int(v) for v in re.findall(r'text-anchor="end">(\d+)</text>', svg)]
    assert labels == [0, 2, 4, 6, 8]
    ys = [float(y) for y in re.findall(r'<line class="grid" x1="\d+" x2="\d+" y1="([\d.]+)"', svg)]
    bottom, top_line = ys[0], ys[-1]
    for label, y in zip(labels, ys, strict=True):
        assert abs((bottom - y) / (bottom - top_line) * 8 - label) < 1e-6
    # The tallest bar (5) reaches 5/8 of the way up.
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"><title>', svg)]
    assert abs(max(heights) / (bottom - top_line) - 5 / 8) < 1e-3


KIB, GIB = 1024, 1024**3


@pytest.mark.parametrize(
    ("largest", "top", "labels"),
    [
        (0, 4, ["0", "1 B", "2 B", "3 B", "4 B"]),
        (900, 2000, ["0", "500 B", "1000 B", "1500 B", "2000 B"]),
        (4000, 4 * KIB, ["0", "1 KiB", "2 KiB", "3 KiB", "4 KiB"]),
        (1500, 2 * KIB, ["0", "0.5 KiB", "1 KiB", "1.5 KiB", "2 KiB"]),
        (3 * GIB, 4 * GIB, ["0", "1 GiB", "2 GiB", "3 GiB", "4 GiB"]),
        (70 * GIB, 80 * GIB, ["0", "20 GiB", "40 GiB", "60 GiB", "80 GiB"]),
    ],
)
def test_a_bytes_axis_steps_roundly_in_the_largest_values_unit(
    largest: int, top: int, labels: list[str]
) -> None:
    axis_top, label = byte_axis(largest)
    assert axis_top == top
    assert [label(top * i // 4) for i in range(5)] == labels
