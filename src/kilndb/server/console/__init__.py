"""The web console: one page, its script, stylesheet and icon, served by ``kiln serve``'s
HTTP listener at ``/`` and ``/console`` (the assets under ``/console/``).

The files ship inside the package and are read once, when the application is built:
nothing is fetched from elsewhere and nothing is built. The page reads the same HTTP API
as any client (``/v1/status``, ``/v1/cluster``, ``/v1/replication``, ``/v1/events``, the
REST routes under ``/v1/db/``, ``/v1/metrics/history``, ``/v1/events/recent``) with the
token the user gives it; the assets themselves hold no data and need none.

Every console response carries :data:`SECURITY_HEADERS`: the page may load scripts,
styles, images and connections from this server only, run no inline script, and be
framed by no other page.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

__all__ = ["ASSETS", "SECURITY_HEADERS", "add_console_routes"]

#: The files of the console and their content types.
ASSETS = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

#: Headers of every console response.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def add_console_routes(app: web.Application) -> None:
    """Serve the console on ``app``: the page at ``/`` and ``/console``, each asset at
    ``/console/<name>``."""
    files = resources.files(__name__)
    bodies = {name: (files / name).read_bytes() for name in ASSETS}

    def serve(name: str) -> web.Response:
        return web.Response(
            body=bodies[name],
            content_type=ASSETS[name],
            charset="utf-8" if ASSETS[name].startswith("text/") else None,
            headers=SECURITY_HEADERS,
        )

    async def page(_: web.Request) -> web.Response:
        return serve("index.html")

    async def asset(http: web.Request) -> web.Response:
        name = http.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(headers=SECURITY_HEADERS)
        return serve(name)

    app.router.add_get("/", page)
    app.router.add_get("/console", page)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/{name}", asset)
