"""A fake Santiment GraphQL API on 127.0.0.1 that answers what sanpy sends.

sanpy POSTs ``{"query": "<graphql>"}`` to the endpoint (``authorization: Apikey <key>`` when a key
is set). The fake understands, with regexes rather than a GraphQL parser:

* aliased ``query_N: getMetric(metric: "m"){ timeseriesDataJson(slug: "s" from: ".." to: ".."
  interval: "1d" aggregation: null includeIncompleteData: false) }`` (``san.get``), several
  aliases in one document (``san.Batch``), ``timeseriesDataPerSlugJson`` (``san.get_many``) and
  ``availableSince(slug: ..)``;
* ``projectBySlug(slug: "s"){ availableMetrics }`` (``san.available_metrics_for_slug``);
* ``query: getAvailableMetrics`` (``san.available_metrics``).

Answers and errors have the real API's shapes (sanbase2), which sanpy turns into its exceptions:

* data: ``{"data": {"query_0": {"timeseriesDataJson": [{"datetime": "..Z", "value": 1.0}]}}}``;
  points with ``from <= datetime < to``; without ``includeIncompleteData`` the running day is left
  out;
* resolver errors (plan restrictions, unknown metrics): HTTP 200 with ``data`` holding ``null`` at
  the failed field and ``errors: [{"message", "locations", "path"}]`` -> ``SanGraphqlQueryError``;
* plans: a request carrying a key registered with :meth:`FakeSantiment.register_api_key` is
  served on that key's plan; a request **without** the ``authorization`` header is served, as
  the real API serves it, as the anonymous FREE plan (not refused). :meth:`FakeSantiment.restrict`
  and :meth:`FakeSantiment.limit_history` apply to one plan (FREE by default): a range partly
  outside the plan's history is cut silently, a range wholly outside gets "Both `from` and `to`
  parameters are outside the allowed interval..";
* a key the server does not know: HTTP 400 ``{"errors": {"details": "Apikey not valid or
  malformed"}}``; the key is not echoed (a malformed header gets sanbase's "Unsupported
  authorization header value" answer, 400);
* rate limit (:meth:`FakeSantiment.inject` with 429): HTTP 429 ``{"errors": {"details": "API
  Rate Limit Reached. Try again in N seconds (..)"}}`` with sanbase's headers
  ``x-ratelimit-reset`` (the N seconds), ``x-ratelimit-remaining[-month|-hour|-minute]`` and
  ``x-ratelimit-limit[-month|-hour|-minute]``, no ``Retry-After`` -> ``SanRateLimitError``.
  Answers that pass carry the same quota headers (the remaining calls count down);
* 5xx: JSON details for 500, an HTML page for 502/503/504 (as a gateway sends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any

import pandas as pd
from aiohttp import web

DAY_MS = 86_400_000
_FIELD_HEAD = re.compile(r"(?:(?P<alias>[_A-Za-z]\w*)\s*:\s*)?(?P<name>[_A-Za-z]\w*)")
_RELATIVE = re.compile(r"^utc_now(?:-(\d+)([smhdw]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
FREE = "FREE"
PLAN_LIMITS = {  # API calls per minute, hour and month (Santiment's published SanAPI plans)
    "FREE": {"minute": 100, "hour": 500, "month": 1_000},
    "PRO": {"minute": 600, "hour": 30_000, "month": 600_000},
}
BAD_KEY = "Apikey not valid or malformed"

SeriesData = pd.DataFrame | pd.Series | Mapping[Any, float]


@dataclass(frozen=True, slots=True)
class TimeseriesCall:
    """One ``timeseriesDataJson`` (or per-slug) field of a request, as the fake read it."""

    alias: str
    metric: str
    slug: str | None
    from_: str | None
    to: str | None
    interval: str | None


@dataclass(slots=True)
class SantimentRequest:
    """One POST the fake received."""

    query: str
    authorization: str | None
    status: int = 0
    plan: str | None = None
    """The plan the request was served on (``None`` when refused before)."""
    timeseries: list[TimeseriesCall] = field(default_factory=list)


@dataclass(slots=True)
class _Field:
    alias: str
    name: str
    args: str
    selection: tuple[int, int] | None  # bounds of the selection set inside the query text
    offset: int


class _Failure(Exception):
    """A resolver error: becomes one entry of ``errors``, ``null`` at the field."""


class FakeSantiment:
    """The fake server. ``async with FakeSantiment() as fake:``; point sanpy at ``fake.url``.

    ``now_ms`` fixes the fake's clock (for ``utc_now`` dates and incomplete days); by default it
    is the wall clock.
    """

    def __init__(self, *, now_ms: int | None = None) -> None:
        self._now_ms = now_ms
        self._series: dict[tuple[str, str], dict[int, float]] = {}
        self._available: dict[str, list[str]] = {}
        self._restricted: dict[str, dict[str, str]] = {}  # metric -> plan -> message
        self._null: set[str] = set()
        self._history: dict[str, tuple[int | None, int | None]] = {}  # plan -> (from, to)
        self._keys: dict[str, str] = {}  # API key -> plan
        self._calls: dict[str, int] = {}  # calls counted per key ("" for anonymous)
        self._injected: list[list[int]] = []  # [status, remaining, retry_after_s]
        self._delay_s = 0.0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.requests: list[SantimentRequest] = []
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeSantiment:
        """Listen on 127.0.0.1 on a free port; sets :attr:`url` (the GraphQL endpoint)."""
        app = web.Application()
        app.router.add_post("/graphql", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/graphql"
        return self

    async def close(self) -> None:
        """Stop the server (delayed answers are released first)."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSantiment:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def now_ms(self) -> int:
        """The fake's clock (the wall clock unless set)."""
        return self._now()

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        self._now_ms = value

    # -- state ----------------------------------------------------------------------------------

    def add_series(self, slug: str, metric: str, data: SeriesData) -> None:
        """Serve daily ``data`` for ``metric`` of ``slug`` (merged into what is there).

        ``data``: a mapping or Series from day (epoch ms, ISO text, date, datetime, Timestamp) to
        value, or a frame with ``observed_at``/``datetime`` and ``value`` columns (or a
        DatetimeIndex and ``value``). Values are stored at 00:00 UTC of their day.
        """
        points = self._series.setdefault((slug, metric), {})
        for when, value in _pairs(data):
            ms = _to_ms(when)
            points[ms - ms % DAY_MS] = float(value)
        available = self._available.setdefault(slug, [])
        if metric not in available:
            available.append(metric)

    def set_available_metrics(self, slug: str, metrics: Iterable[str]) -> None:
        """Answer ``projectBySlug(slug).availableMetrics`` with ``metrics``."""
        self._available[slug] = list(metrics)

    def restrict(self, metric: str, message: str | None = None, *, plan: str = FREE) -> None:
        """Refuse ``metric`` to requests on ``plan`` the way the access-control middleware does
        (HTTP 200, ``errors``)."""
        self._restricted.setdefault(metric, {})[plan] = message or (
            f"The metric {metric} is not accessible with the currently used SANAPI {plan} "
            "subscription. Please upgrade to SANAPI PRO subscription or a Custom Plan that has "
            "access to it.\n\nIf you have a subscription for one product but attempt to fetch "
            "data using another product, this error will still be shown. The data on SANBASE "
            "cannot be fetched with a SANAPI subscription and vice versa.\n"
        )

    def limit_history(self, from_ms: int | None, to_ms: int | None, *, plan: str = FREE) -> None:
        """Apply ``plan``'s history window to every metric (``None``: unrestricted side)."""
        self._history[plan] = (from_ms, to_ms)

    def null_result(self, metric: str) -> None:
        """Answer ``{"data": {alias: null}}`` for ``metric`` (sanpy: ``SanEmptyResultError``)."""
        self._null.add(metric)

    def register_api_key(self, key: str, plan: str = "PRO") -> None:
        """Serve requests carrying ``authorization: Apikey <key>`` on ``plan``. Requests without
        the header stay anonymous FREE requests; any other key is refused (400)."""
        if plan not in PLAN_LIMITS:
            raise ValueError(f"plan {plan!r} is not one of {sorted(PLAN_LIMITS)}")
        self._keys[key] = plan

    def inject(self, status: int, times: int = 1, *, retry_after_s: int = 0) -> None:
        """Answer the next ``times`` requests with HTTP ``status`` (429 or 5xx shapes)."""
        self._injected.append([status, times, retry_after_s])

    def delay(self, seconds: float) -> None:
        """Hold every answer for ``seconds`` (without blocking the server's event loop)."""
        self._delay_s = seconds

    @property
    def timeseries_calls(self) -> list[TimeseriesCall]:
        """Every timeseries field requested so far, in order."""
        return [call for request in self.requests for call in request.timeseries]

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        try:
            query = str(json.loads(body)["query"])
        except (ValueError, KeyError, TypeError):
            query = body
        record = SantimentRequest(query, request.headers.get("authorization"))
        self.requests.append(record)
        if self._delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=self._delay_s)
        refused = self._auth_response(record.authorization)
        if refused is not None:  # authentication comes first, as in sanbase's plug order
            record.status = refused.status
            return refused
        key = (record.authorization or "").removeprefix("Apikey ")
        plan = self._keys.get(key, FREE)
        response = self._injected_response(key, plan)
        if response is None:
            self._calls[key] = self._calls.get(key, 0) + 1
            record.plan = plan
            payload = self._execute(query, record)
            response = web.json_response(payload, headers=self._quota_headers(key, plan))
        record.status = response.status
        return response

    def _quota_headers(
        self, key: str, plan: str, *, blocked_s: int | None = None
    ) -> dict[str, str]:
        """sanbase's rate-limit headers (``RequestHaltPlug.rate_limit_headers``)."""
        limits = PLAN_LIMITS[plan]
        used = self._calls.get(key, 0)
        if blocked_s is None:
            remaining = {period: max(0, n - used) for period, n in limits.items()}
        else:  # blocked: the minute's calls are spent (what a burst runs into)
            remaining = {period: max(0, n - used) for period, n in limits.items()}
            remaining["minute"] = 0
        headers = {
            "x-ratelimit-remaining-month": remaining["month"],
            "x-ratelimit-remaining-hour": remaining["hour"],
            "x-ratelimit-remaining-minute": remaining["minute"],
            "x-ratelimit-remaining": remaining["minute"],
            "x-ratelimit-limit-month": limits["month"],
            "x-ratelimit-limit-hour": limits["hour"],
            "x-ratelimit-limit-minute": limits["minute"],
            "x-ratelimit-limit": limits["minute"],
        }
        if blocked_s is not None:
            headers = {"x-ratelimit-reset": blocked_s, **headers}
        return {name: str(value) for name, value in headers.items()}

    def _injected_response(self, key: str, plan: str) -> web.Response | None:
        if not self._injected:
            return None
        entry = self._injected[0]
        status, _, retry_after = entry
        entry[1] -= 1
        if entry[1] <= 0:
            self._injected.pop(0)
        if status == 429:
            who = (
                f"The request is made by user with id 1 using plan {plan}\nYou can update your "
                "subscription plan or you can contact Santiment Support if you\nmade a mistake "
                "and exhausted your API calls and you want Santiment to reset your limits.\n"
                if key
                else "The request is made without user authentication. If this is not "
                "expected, check the authorization logic of your code.\n"
            )
            details = (
                f"API Rate Limit Reached. Try again in {retry_after} seconds "
                f"({retry_after} seconds).\n{who}"
            )
            headers = self._quota_headers(key, plan, blocked_s=retry_after)
            return web.json_response({"errors": {"details": details}}, status=429, headers=headers)
        if status in (502, 503, 504):
            reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}.get(
                status, "Gateway Time-out"
            )
            page = f"<html><head><title>{status} {reason}</title></head><body></body></html>"
            return web.Response(status=status, text=page, content_type="text/html")
        return web.json_response({"errors": {"details": "Internal server error"}}, status=status)

    def _auth_response(self, header: str | None) -> web.Response | None:
        if not header or header == "null":
            return None  # anonymous: served on the FREE plan
        if not header.startswith("Apikey "):
            details = (
                f"Unsupported authorization header value: {header!r}.\nThe supported formats "
                'of the authorization header are:\n  "Bearer <JWT>"\n  "Apikey <apikey>"\n'
                '  "Basic <basic>"\n'
            )
            return web.json_response({"errors": {"details": details}}, status=400)
        if header.removeprefix("Apikey ") not in self._keys:
            return web.json_response({"errors": {"details": BAD_KEY}}, status=400)
        return None

    # -- GraphQL --------------------------------------------------------------------------------

    def _execute(self, query: str, record: SantimentRequest) -> dict[str, Any]:
        open_at, close_at = query.find("{"), query.rfind("}")
        if open_at < 0 or close_at < open_at:
            return {"errors": [{"message": "syntax error before: end of document"}]}
        fields = _fields(query, open_at + 1, close_at)
        unknown = [
            f for f in fields if f.name not in ("getMetric", "projectBySlug", "getAvailableMetrics")
        ]
        if unknown:
            # Validation errors fail the whole document: no "data" at all.
            return {
                "errors": [
                    {
                        "message": f'Cannot query field "{f.name}" on type "RootQueryType".',
                        "locations": [_location(query, f.offset)],
                    }
                    for f in unknown
                ]
            }
        data: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for top in fields:
            if top.name == "getAvailableMetrics":
                data[top.alias] = sorted({m for _, m in self._series} | set(self._restricted))
            elif top.name == "projectBySlug":
                slug = _arg(top.args, "slug") or ""
                if slug not in self._available:
                    data[top.alias] = None
                    errors.append(_error(f"Project with slug '{slug}' not found.", query, top))
                else:
                    data[top.alias] = {"availableMetrics": list(self._available[slug])}
            else:
                data[top.alias] = self._get_metric(query, top, record, errors)
        payload: dict[str, Any] = {"data": data}
        if errors:
            payload["errors"] = errors
        return payload

    def _get_metric(
        self, query: str, top: _Field, record: SantimentRequest, errors: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        metric = _arg(top.args, "metric") or ""
        if metric in self._null:
            return None
        known = metric in self._restricted or any(m == metric for _, m in self._series)
        if not known:
            errors.append(
                _error(
                    f"The metric '{metric}' is not supported, is deprecated or is mistyped.",
                    query,
                    top,
                )
            )
            return None
        result: dict[str, Any] = {}
        for sub in _fields(query, *(top.selection or (0, 0))):
            try:
                result[sub.alias] = self._resolve_metric_field(metric, sub, record, top.alias)
            except _Failure as failure:
                result[sub.alias] = None
                errors.append(_error(str(failure), query, sub, path=[top.alias, sub.alias]))
        return result

    def _resolve_metric_field(
        self, metric: str, sub: _Field, record: SantimentRequest, alias: str
    ) -> Any:
        if sub.name == "availableSince":
            points = self._series.get((_arg(sub.args, "slug") or "", metric), {})
            return _iso(min(points)) if points else None
        if sub.name not in ("timeseriesDataJson", "timeseriesDataPerSlugJson"):
            raise _Failure(f'Cannot query field "{sub.name}" on type "Metric".')
        from_text, to_text = _arg(sub.args, "from"), _arg(sub.args, "to")
        interval = _arg(sub.args, "interval")
        per_slug = sub.name == "timeseriesDataPerSlugJson"
        slugs = _slugs(sub.args) if per_slug else [_arg(sub.args, "slug") or ""]
        record.timeseries += [
            TimeseriesCall(alias, metric, slug, from_text, to_text, interval) for slug in slugs
        ]
        plan = record.plan or FREE
        if plan in self._restricted.get(metric, {}):
            raise _Failure(self._restricted[metric][plan])
        if interval not in (None, "1d"):
            raise _Failure(f"The fake Santiment serves daily data only, not interval {interval!r}.")
        if from_text is None or to_text is None:
            raise _Failure("Both `from` and `to` arguments are required.")
        start, end = self._parse_time(from_text), self._parse_time(to_text)
        start, end = self._apply_history(metric, plan, start, end)
        include_incomplete = (_arg(sub.args, "includeIncompleteData") or "false") == "true"
        last_day = self._now() if include_incomplete else self._now() - DAY_MS

        def points(slug: str) -> dict[int, float]:
            series = self._series.get((slug, metric), {})
            return {t: v for t, v in series.items() if start <= t < end and t <= last_day}

        if not per_slug:
            return [{"datetime": _iso(t), "value": v} for t, v in sorted(points(slugs[0]).items())]
        by_slug = {slug: points(slug) for slug in slugs}
        days = sorted({t for series in by_slug.values() for t in series})
        return [
            {
                "datetime": _iso(t),
                "data": [{"slug": s, "value": by_slug[s].get(t, 0.0)} for s in slugs],
            }
            for t in days
        ]

    def _apply_history(self, metric: str, plan: str, start: int, end: int) -> tuple[int, int]:
        if plan not in self._history:
            return start, end
        allowed_from, allowed_to = self._history[plan]
        new_start = start if allowed_from is None else max(start, allowed_from)
        new_end = end if allowed_to is None else min(end, allowed_to)
        if new_end <= new_start:
            raise _Failure(
                "Both `from` and `to` parameters are outside the allowed interval you can query "
                f"{metric} with your current subscription SANAPI {plan}. Upgrade to a higher "
                "tier in order to access more data.\n\nAllowed time restrictions:\n"
                f"  - `from` - {_restriction_time(allowed_from)}\n"
                f"  - `to` - {_restriction_time(allowed_to)}\n"
            )
        return new_start, new_end

    def _now(self) -> int:
        return self._now_ms if self._now_ms is not None else int(time.time() * 1000)

    def _parse_time(self, text: str) -> int:
        relative = _RELATIVE.match(text.strip())
        if relative is not None:
            amount, unit = relative.groups()
            return self._now() - int(amount or 0) * _UNIT_S[unit or "s"] * 1000
        try:
            return _to_ms(text)
        except ValueError as exc:
            raise _Failure(f"Argument parsing failed: {text!r} is not a valid datetime.") from exc


# -- query text helpers ---------------------------------------------------------------------------


def _fields(query: str, start: int, end: int) -> list[_Field]:
    """The fields of the selection set ``query[start:end]`` (one nesting level)."""
    fields: list[_Field] = []
    i = start
    while i < end:
        while i < end and (query[i].isspace() or query[i] == ","):
            i += 1
        if i >= end:
            break
        head = _FIELD_HEAD.match(query, i, end)
        if head is None:
            i += 1
            continue
        offset, i = i, head.end()
        args, selection = "", None
        i = _skip_space(query, i, end)
        if i < end and query[i] == "(":
            close = _matching(query, i, end)
            args, i = query[i + 1 : close], close + 1
            i = _skip_space(query, i, end)
        if i < end and query[i] == "{":
            close = _matching(query, i, end)
            selection, i = (i + 1, close), close + 1
        name = head.group("name")
        fields.append(_Field(head.group("alias") or name, name, args, selection, offset))
    return fields


def _matching(text: str, i: int, end: int) -> int:
    """Index of the bracket closing the one at ``text[i]`` (strings skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[text[i]]]
    j = i + 1
    while j < end:
        ch = text[j]
        if ch == '"':
            j += 1
            while j < end and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
        elif ch in pairs:
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return j
        j += 1
    return end


def _skip_space(text: str, i: int, end: int) -> int:
    while i < end and text[i].isspace():
        i += 1
    return i


def _arg(args: str, name: str) -> str | None:
    """Value of argument ``name`` (a quoted string or a bare token; ``null`` is ``None``)."""
    match = re.search(rf'\b{name}\s*:\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,(){{}}\[\]]+))', args)
    if match is None:
        return None
    if match.group(1) is not None:
        return match.group(1)
    return None if match.group(2) == "null" else match.group(2)


def _slugs(args: str) -> list[str]:
    match = re.search(r"\bslugs\s*:\s*\[([^\]]*)\]", args)
    return re.findall(r'"([^"]*)"', match.group(1)) if match else []


def _location(query: str, offset: int) -> dict[str, int]:
    line = query.count("\n", 0, offset) + 1
    column = offset - (query.rfind("\n", 0, offset) + 1) + 1
    return {"line": line, "column": column}


def _error(message: str, query: str, f: _Field, path: list[str] | None = None) -> dict[str, Any]:
    return {
        "message": message,
        "locations": [_location(query, f.offset)],
        "path": path or [f.alias],
    }


# -- time and data helpers ------------------------------------------------------------------------


def _to_ms(value: Any) -> int:
    """Epoch ms (UTC) of an int, ISO text (``Z``, offsets, ``T`` or space), date or datetime."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a time")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("NaN is not a time")
        return int(value)
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    if hasattr(value, "item"):  # numpy scalars
        return _to_ms(value.item())
    raise ValueError(f"cannot read {value!r} as a time")


def _pairs(data: SeriesData) -> Iterable[tuple[Any, float]]:
    if isinstance(data, pd.DataFrame):
        for column in ("observed_at", "datetime"):
            if column in data.columns:
                return zip(data[column].tolist(), data["value"].tolist(), strict=True)
        return zip(list(data.index), data["value"].tolist(), strict=True)
    if isinstance(data, pd.Series):
        return zip(list(data.index), data.tolist(), strict=True)
    return data.items()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _restriction_time(ms: int | None) -> str:
    if ms is None:
        return "unrestricted"
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%fZ")
