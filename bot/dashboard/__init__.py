"""The live daemon's web dashboard (``[dashboard]``): a read-only page served inside the daemon's
event loop, fed by the :class:`bot.control.Controls` protocol and read-only views of the state
directory's databases (``state.db``, ``market.db``, ``metrics.db``).

* :mod:`bot.dashboard.access`: the token rule (loopback or a token from the environment);
* :mod:`bot.dashboard.reader`: read-only SQLite queries (decisions, refusals, bars, metrics);
* :mod:`bot.dashboard.view`: the snapshot the page shows, with the 1/N and buy-and-hold
  baselines computed from the stored bars;
* :mod:`bot.dashboard.app`: the FastAPI application (the page and ``/api/snapshot``);
* :mod:`bot.dashboard.server`: the uvicorn server run as a task of the daemon's loop.
"""

from bot.dashboard.access import DashboardConfigError, dashboard_token, is_loopback
from bot.dashboard.server import DashboardServer

__all__ = ["DashboardConfigError", "DashboardServer", "dashboard_token", "is_loopback"]
