"""The daily summary's equity chart is a PNG, whatever the number of points."""

from __future__ import annotations

import pytest

from bot.telegram.chart import PNG_SIGNATURE, equity_png

DAY0 = 1_704_067_200_000


@pytest.mark.parametrize("count", [0, 1, 50])
def test_equity_chart_is_a_png(count: int) -> None:
    points = [(DAY0 + i * 900_000, 10_000.0 + i) for i in range(count)]
    png = equity_png(points, quote="USDT", title="Equity")
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 1_000
