"""The equity curve PNG of the daily summary (matplotlib, Agg, no pyplot).

Built with ``matplotlib.figure.Figure`` directly, not ``pyplot``: no global figure registry and
no GUI backend, so it can run in a worker thread while the event loop goes on.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def equity_png(points: Sequence[tuple[int, float]], *, quote: str = "", title: str = "") -> bytes:
    """A small line chart of ``(ts_ms, equity)`` points as PNG bytes (600x300 px)."""
    figure = Figure(figsize=(6, 3), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if points:
        times = [datetime.fromtimestamp(ts / 1000, UTC) for ts, _ in points]
        values = [equity for _, equity in points]
        axes.plot(times, values, color="tab:blue", linewidth=1.5)
        if len(points) == 1:
            axes.scatter(times, values, color="tab:blue", s=12)
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    else:
        axes.text(0.5, 0.5, "no valuations", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel(f"equity ({quote})" if quote else "equity")
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
