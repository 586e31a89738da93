"""HTTP, Server-Sent Events and WebSocket, in the socket server's own event loop.

Endpoints (DESIGN.md "HTTP, SSE and WebSocket"):

``GET /v1/health``          200 while the process is up, with the compact health snapshot
                            (``Server.health()``)
``GET /v1/ready``           200 when accepting work, 503 while draining
``GET /v1/status``          the observability snapshot (as ``server_status``)
``GET /v1/metrics``, ``/metrics``  Prometheus text format
``GET /v1/events``          SSE changefeed: ``id: <position>``, ``event: fact_written``,
                            ``data: <fact>``; resume with ``Last-Event-ID`` or
                            ``?cursor=``; ``?stores=a,b``; ``?database=``; 409 if the cursor
                            was compacted away; ``?token=`` in place of the Authorization
                            header (EventSource cannot send one); ``?event=fact_committed``
                            names the events as before (deprecated)
``GET /v1/events/recent``   the recent-events ring
``GET /v1/metrics/history`` the last minutes of rates, latencies and lag, one sample a
                            second (:mod:`kilndb.server.history`)
``GET /``, ``/console``     the web console (:mod:`kilndb.server.console`)
``POST /v1/dispatch``       one op envelope (the wire protocol's JSON) → its reply
``GET /v1/db/{database}/stores``  the database's stores
``GET /v1/db/{database}/stores/{store}/keys``  a page of keys and the ``next`` cursor
``/v1/db/{database}/stores/{store}/keys/{key}``  GET latest, PUT (body: JSON value),
                            DELETE; ``.../history`` GET
``GET /v1/ws``              WebSocket carrying op envelopes; ``subscribe`` pushes
                            ``{"event": "fact_written", "fact": …}`` messages

The REST routes under ``/v1/db/`` take their op's options as query parameters (the op
table's ``query``), read from text and then checked by the op table's checkers,
so that a bad value gets the same ``bad_request`` on every transport. A query parameter
a route does not take is refused with 400 naming it, on ``/v1/events`` too.

Every request goes through a :class:`~kilndb.server.session.Session` (one per request:
HTTP has no connection), so it is authorized and answered as on every other transport;
blocking work runs on the server's bounded worker pool. An SSE stream is one more feed
of the database's fan-out hub, pushed by a task of the server through an
:class:`~kilndb.server.push.Outbox`: an idle stream holds no thread, and a stream whose
reader lets ``max_subscriber_buffer`` bytes pile up ends (the client resumes with
``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Container, Iterator
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kilndb.codec import FrameDecoder
from kilndb.errors import (
    AuthenticationError,
    FrameTooLargeError,
    InvalidArgumentError,
    KilnError,
    NotFoundError,
)
from kilndb.protocol import BadRequest, Request, check_params, parse_request
from kilndb.protocol.ops import OPS, Transport
from kilndb.server.auth import ANONYMOUS, Principal
from kilndb.server.console import add_console_routes
from kilndb.server.history import SAMPLE_SECONDS, History
from kilndb.server.push import Outbox, changefeed, changefeed_start, event_bodies
from kilndb.server.services import Services
from kilndb.server.session import Answer, Execute, Open, Refuse, Session
from kilndb.server.websocket import websocket_handler
from kilndb.streams import new_channel

__all__ = ["KEYS_PAGE", "build_app"]

log = logging.getLogger("kilndb.server")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds of silence after which an SSE stream sends a keep-alive comment.
SSE_KEEPALIVE_SECONDS = 15.0


_GAUGES = (
    "active_connections",
    "subscription_count",
    "open_databases",
    "failing_databases",
    "replication_followers",
    "replication_follower_lag_records",
    "replication_lag_records",
    "cluster_members_alive",
    "cluster_members_suspect",
    "cluster_members_dead",
    "cluster_members_left",
    "coordinator_databases_led",
    "coordinator_lease_valid_seconds",
    "coordinator_elections_seen",
)


#: A REST route takes ``metadata.K=V`` query parameters when its op's ``query`` has this.
_METADATA_PARAMETERS = "metadata.*"
_METADATA = "metadata."

#: Keys in a page of ``GET .../keys`` without ``limit``.
KEYS_PAGE = 1000

#: The parameters of ``GET /v1/events``.
_EVENTS_PARAMETERS = frozenset({"cursor", "stores", "database", "channel", "token", "event"})
#: The name of the SSE events, as TCP and WebSocket push them, and the name they had
#: before (``?event=fact_committed``; deprecated, removed in the next release).
SSE_EVENT = "fact_written"
SSE_EVENT_DEPRECATED = "fact_committed"
#: The response header of ``GET /v1/events`` that names the stream's channel id.
CHANNEL_HEADER = "Kiln-Channel-Id"

_INTEGER = re.compile(r"-?[0-9]+")


def _from_text(kind: str, text: str) -> Any:
    """``text`` as ``kind`` reads it; text that does not read as one is passed on as is,
    for the op's checker to refuse by the parameter's name."""
    try:
        if kind != "str" and _INTEGER.fullmatch(text):
            return int(text)
        if kind == "number" and math.isfinite(number := float(text)):
            return number
    except ValueError:  # not a number, or an integer of thousands of digits
        pass
    return text


def _check_names(http: web.Request, allowed: Container[str]) -> None:
    """Refuse a query parameter outside ``allowed``, or one given twice."""
    unknown = dict.fromkeys(name for name in http.query if name not in allowed)
    if unknown:
        raise InvalidArgumentError(f"unknown query parameter(s): {', '.join(unknown)}")
    for name in http.query:
        if len(http.query.getall(name)) > 1:
            raise InvalidArgumentError(f"query parameter {name!r} given more than once")


def _params(http: web.Request, op: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The checked parameters of ``op``: ``fields`` (from the path and body) and those
    its query parameters give. Raises InvalidArgumentError naming a bad one."""
    kinds = OPS[op].query
    assert kinds is not None, f"{op} has no REST route"
    with_metadata = _METADATA_PARAMETERS in kinds
    _check_names(
        http,
        {
            name
            for name in http.query
            if name in kinds or (with_metadata and name.startswith(_METADATA) and name != _METADATA)
        },
    )
    metadata: dict[str, str] = {}
    query: dict[str, Any] = {}
    for name, text in http.query.items():
        if name in kinds and name != _METADATA_PARAMETERS:
            query[name] = _from_text(kinds[name], text)
        else:
            metadata[name.removeprefix(_METADATA)] = text
    if metadata:
        query["metadata"] = metadata
    return check_params(op, {**query, **fields})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(error: KilnError) -> web.Response:
    """The reply carrying ``error``, with the HTTP status its class declares."""
    return _json(error.to_wire(), error.http_status)


@web.middleware
async def _body_limit(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Refuse a body over ``client_max_size`` (the server's ``max_frame_bytes``) with
    413 and ``frame_too_large``: at once when its ``Content-Length`` says so, else once
    reading it passes the limit."""
    limit = request.client_max_size
    size = request.content_length
    if size is not None and size > limit:
        return _error(FrameTooLargeError(size, limit))
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(
            FrameTooLargeError(limit + 1, limit, f"request body over the limit of {limit} bytes")
        )


class _Collector:
    """Exposes the server's counters, and the alerts firing, to prometheus_client."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        metrics = status["metrics"]
        firing = GaugeMetricFamily(
            "kiln_alerts_firing", "alerts firing now", labels=["type", "metric"]
        )
        counts: dict[tuple[str, str], int] = {}
        for alert in status["alerts"]:
            key = (alert["type"], alert["metric"])
            counts[key] = counts.get(key, 0) + 1
        for (kind, metric), count in sorted(counts.items()):
            firing.add_metric([kind, metric], float(count))
        yield firing
        for name, value in sorted(metrics.items()):
            base = name.removesuffix("_total")
            family: Metric
            if name in _GAUGES:
                family = GaugeMetricFamily(f"kiln_{name}", name.replace("_", " "))
            else:
                family = CounterMetricFamily(f"kiln_{base}", name.replace("_", " "))
            family.add_metric([], float(value))
            yield family
        # Per followed database, as armdb's reconnect_count and max_version_seen.
        reconnects = CounterMetricFamily(
            "kiln_replication_reconnects",
            "times a follower reconnected to its leader after an error",
            labels=["database"],
        )
        seen = GaugeMetricFamily(
            "kiln_replication_max_position_seen",
            "highest position a follower applied",
            labels=["database"],
        )
        for follower in status["replication"]["following"]:
            reconnects.add_metric([follower["database"]], float(follower["reconnects"]))
            seen.add_metric([follower["database"]], float(follower["max_position_seen"]))
        yield reconnects
        yield seen


def _sse_events(decoder: FrameDecoder, data: bytes, name: bytes) -> bytes:
    """The SSE events, named ``name``, of the fact frames in ``data``."""
    events = []
    for body in event_bodies(decoder, data):
        fact = orjson.loads(body)["fact"]
        events.append(
            b"id: %d\nevent: %s\ndata: %s\n\n" % (fact["position"], name, orjson.dumps(fact))
        )
    return b"".join(events)


def build_app(services: Services) -> web.Application:
    """The aiohttp application of a server."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Collector(services.status))
    metrics = services.metrics

    def _principal(http: web.Request) -> Principal | None:
        """Who the bearer token speaks for (None: no token sent)."""
        if not services.auth.enabled:
            return ANONYMOUS
        header = http.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return services.auth.verify(header.removeprefix("Bearer "))
        # EventSource cannot send a header: the SSE stream (a GET) takes ``?token=``.
        if http.path == "/v1/events" and "token" in http.query:
            return services.auth.verify(http.query["token"])
        return None

    def _session(http: web.Request, database: str, transport: Transport) -> Session:
        principal = _principal(http)
        return Session(
            transport, services.auth, services.routing, principal=principal, database=database
        )

    def _authorize(http: web.Request, op: str, database: str | None) -> None:
        """Raise the 401/403 error unless the request's bearer token grants ``op``."""
        try:
            principal = _principal(http)
            if principal is None:
                raise AuthenticationError("send Authorization: Bearer <token>")
            principal.check(op, database)
        except KilnError:
            metrics.count("errors_total")
            raise

    def _denied(http: web.Request, op: str, database: str | None) -> web.Response | None:
        """The 401/403 reply unless the request's bearer token grants ``op``."""
        try:
            _authorize(http, op, database)
        except KilnError as exc:
            return _error(exc)
        return None

    async def answer(
        http: web.Request, request: Request, database: str, transport: Transport = "http"
    ) -> dict[str, Any]:
        """The reply fields of ``request``, admitted by a session of its own (for ``sse``:
        admitted, and an empty reply; the stream is the caller's)."""
        metrics.count("requests_total")
        try:
            step = _session(http, database, transport).receive(request)  # reads the token
            if isinstance(step, Refuse):
                if step.error.error_code == "unauthenticated":
                    raise AuthenticationError("send Authorization: Bearer <token>")
                raise step.error
        except KilnError:
            metrics.count("errors_total")
            raise
        if isinstance(step, Answer):
            return step.fields
        if isinstance(step, Open):
            return {}
        assert isinstance(step, Execute)  # http carries no session op but ping
        return await services.runner.run(step.request)

    async def rest(http: web.Request, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``op`` with its checked ``params`` on the path's database."""
        database = http.match_info["database"]
        return await answer(http, Request(op, params, None, database), database)

    async def health(_: web.Request) -> web.Response:
        return _json(services.health())

    async def ready(_: web.Request) -> web.Response:
        state = services.state()
        return _json({"status": state}, 200 if state == "ready" else 503)

    async def status(http: web.Request) -> web.Response:
        if denied := _denied(http, "server_status", None):
            return denied
        return _json(services.status())

    async def prometheus(http: web.Request) -> web.Response:
        if denied := _denied(http, "server_status", None):
            return denied
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def replication(http: web.Request) -> web.Response:
        if denied := _denied(http, "server_status", None):
            return denied
        return _json(services.replication_status())

    async def cluster(http: web.Request) -> web.Response:
        # Any database's read scope will do: clients learn where its leader is.
        if denied := _denied(http, "cluster", http.query.get("database", "default")):
            return denied
        return _json(services.cluster_status())

    async def recent(http: web.Request) -> web.Response:
        if denied := _denied(http, "server_status", None):
            return denied
        return _json(metrics.recent_events())

    sampled = History(metrics, services.databases, services.replication_status)

    async def metrics_history(http: web.Request) -> web.Response:
        if denied := _denied(http, "server_status", None):
            return denied
        return _json(sampled.snapshot())

    async def start_sampling(_: web.Application) -> None:
        services.tasks.every(SAMPLE_SECONDS, sampled.sample, "kilndb-metrics-history")

    async def dispatch(http: web.Request) -> web.Response:
        parsed = parse_request(await http.read())
        if isinstance(parsed, BadRequest):
            metrics.count("requests_total")
            metrics.count("errors_total")
            return _error(parsed.error)
        database = http.query.get("database", "default")
        try:
            result = await answer(http, parsed, database)
        except KilnError as exc:
            return _error(exc)
        reply = {"ok": True, **result}
        if parsed.request_id is not None:
            reply["request_id"] = parsed.request_id
        return _json(reply)

    async def fact(http: web.Request) -> web.Response:
        info = http.match_info
        store, key = info["store"], info["key"]
        fields: dict[str, Any] = {"store": store, "key": key}
        try:
            if http.method == "PUT":
                try:
                    fields["value"] = orjson.loads(await http.read())
                except orjson.JSONDecodeError as exc:
                    raise InvalidArgumentError(f"body is not JSON: {exc}") from exc
            op = {"GET": "read", "PUT": "write", "DELETE": "delete"}[http.method]
            result = await rest(http, op, _params(http, op, fields))
        except KilnError as exc:
            return _error(exc)
        if result["fact"] is None:
            return _error(NotFoundError(f"{store}/{key} has no value"))
        return _json(result["fact"])

    async def history(http: web.Request) -> web.Response:
        info = http.match_info
        try:
            fields = {"store": info["store"], "key": info["key"]}
            result = await rest(http, "history", _params(http, "history", fields))
        except KilnError as exc:
            return _error(exc)
        return _json(result["facts"])

    async def stores(http: web.Request) -> web.Response:
        try:
            result = await rest(http, "stores", _params(http, "stores", {}))
        except KilnError as exc:
            return _error(exc)
        return _json({"stores": result["stores"]})

    async def keys(http: web.Request) -> web.Response:
        """A page of keys and ``next``: the ``after`` of the next page, or null at the end."""
        try:
            params = _params(http, "keys", {"store": http.match_info["store"]})
            page = KEYS_PAGE if params["limit"] is None else params["limit"]
            if page == 0:
                raise InvalidArgumentError("query parameter 'limit' must be at least 1")
            params["limit"] = page + 1  # one more tells whether another page follows
            result = await rest(http, "keys", params)
        except KilnError as exc:
            return _error(exc)
        found: list[str] = result["keys"]
        more = len(found) > page
        return _json({"keys": found[:page], "next": found[page - 1] if more else None})

    async def events(http: web.Request) -> web.StreamResponse:
        try:
            _check_names(http, _EVENTS_PARAMETERS)
        except KilnError as exc:
            return _error(exc)
        cursor_text = http.headers.get("Last-Event-ID") or http.query.get("cursor") or "0"
        stores_text = http.query.get("stores")
        database = http.query.get("database", "default")
        name = http.query.get("event", SSE_EVENT)
        try:
            if name not in (SSE_EVENT, SSE_EVENT_DEPRECATED):
                raise InvalidArgumentError(
                    f"query parameter 'event' must be {SSE_EVENT} or {SSE_EVENT_DEPRECATED}"
                )
            if not _INTEGER.fullmatch(cursor_text) or int(cursor_text) < 0:
                raise InvalidArgumentError(f"bad cursor {cursor_text!r}")
            stores = [s for s in stores_text.split(",") if s] if stores_text else None
            asked = {
                "stores": stores,
                "after": int(cursor_text),
                "channel": http.query.get("channel"),
            }
            params = check_params("subscribe", asked)
            await answer(http, Request("subscribe", params, None, database), database, "sse")
            cursor, channel = params["after"], new_channel(params["channel"])
            db = services.databases.get(database, create=False)
            changefeed_start(db, stores, cursor)  # checks the cursor and the store names
        except KilnError as exc:
            return _error(exc)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                CHANNEL_HEADER: channel,
            }
        )
        await response.prepare(http)
        transport = http.transport

        def held() -> int:
            return transport.get_write_buffer_size() if transport is not None else 0

        outbox = Outbox(services.loop, services.config.max_subscriber_buffer, held)
        # The stream is one more feed of the database's fan-out hub, which reads the log
        # once for every subscriber and keeps only the facts of the stores each follows:
        # an idle stream, or one whose stores nobody writes, costs a write nothing.
        feed = changefeed(outbox, stores, cursor)
        services.fanout.attach(db, feed)
        metrics.http_stream(True)
        metrics.event("subscription_opened", transport="sse", after=cursor, channel_id=channel)
        log.debug("sse stream opened", extra={"channel_id": channel})
        pusher = services.tasks.spawn(_push_sse(response, outbox, name.encode()), "kilndb-sse")
        try:
            await pusher
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            pusher.cancel()
            services.fanout.detach(feed)
            outbox.end()
            metrics.http_stream(False)
            metrics.event("subscription_closed", transport="sse", channel_id=channel)
        return response

    # One body limit on every transport: an HTTP body may be as large as a frame.
    limit = services.config.max_frame_bytes
    app = web.Application(client_max_size=limit, middlewares=[_body_limit])
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ready", ready)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/metrics", prometheus)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/v1/events/recent", recent)
    app.router.add_get("/v1/metrics/history", metrics_history)
    app.on_startup.append(start_sampling)
    add_console_routes(app)
    app.router.add_get("/v1/replication", replication)
    app.router.add_get("/v1/cluster", cluster)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/dispatch", dispatch)
    app.router.add_get("/v1/db/{database}/stores", stores)
    app.router.add_get("/v1/db/{database}/stores/{store}/keys", keys)
    key = "/v1/db/{database}/stores/{store}/keys/{key}"
    app.router.add_route("GET", key, fact)
    app.router.add_route("PUT", key, fact)
    app.router.add_route("DELETE", key, fact)
    app.router.add_get(key + "/history", history)
    websocket = websocket_handler(services, _principal)
    app.router.add_get("/v1/ws", websocket)
    # streamkit's path (wskit's ``GET /streamz``), for its clients: the same endpoint.
    app.router.add_get("/streamz", websocket)
    return app


async def _push_sse(response: web.StreamResponse, outbox: Outbox, name: bytes) -> None:
    """Write an SSE stream's events, named ``name`` (and a keep-alive comment after a
    silence) until its outbox ends."""
    decoder = FrameDecoder()
    while (data := await outbox.take(SSE_KEEPALIVE_SECONDS)) is not None:
        await response.write(_sse_events(decoder, data, name) if data else b": keep-alive\n\n")
