"""The built-in web dashboard's pages, served by the API process
(docs/decisions/0019-web-dashboard.md).

Every page is the same small HTML shell (``webui/layout.html``) naming its page and
loading ``webui/app.js``; the script reads everything it shows from the ``/v1`` JSON API
with the session cookie (``gateway.api.routes.session``), so what a person sees is exactly
what the API lets their account see: no page holds data, and none needs a login to be
served (the script sends a person without a session to ``/login``).

Assets: ``webui/`` (ours), ``webui/vendor/leaflet`` (from npm, pinned by
``web/package-lock.json``, copied by ``scripts/build-web.sh``) and
``webui/munich-roads.geojson`` (the simulator's road network, the offline base layer),
under ``/web/static/``. Nothing comes from another site unless a tile URL is configured.

Every page carries a strict Content-Security-Policy: scripts, styles and connections only
from this origin, no inline script or style, no framing.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware

from gateway.api.deps import Vin
from gateway.api.settings import WebSettings

__all__ = ["ASSETS", "content_security_policy", "install_web"]

ASSETS: Final = Path(__file__).parent / "webui"
_STATIC: Final = "/web/static"

#: page -> (title, whether it draws a map)
_PAGES: Final = {
    "login": ("Log in", False),
    "map": ("Fleet map", True),
    "vehicle": ("Vehicle", True),
    "alerts": ("Alerts", False),
    "reports": ("Reports", False),
    "jobs": ("Fleet commands", False),
    "quarantine": ("Quarantine", False),
    "health": ("Gateway health", False),
    "sharing": ("Drivers and sharing", False),
    "fleets": ("Fleets and rules", False),
}


def content_security_policy(settings: WebSettings) -> str:
    images = "'self' data:"
    if settings.tile_url is not None:
        parts = urlsplit(settings.tile_url)
        images += f" {parts.scheme}://{parts.netloc.replace('{s}', '*')}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; font-src 'self'; manifest-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _headers(settings: WebSettings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def _render(layout: str, page: str, settings: WebSettings) -> str:
    title, has_map = _PAGES[page]
    head = ""
    scripts = ""
    if has_map:
        head = f'<link rel="stylesheet" href="{_STATIC}/vendor/leaflet/leaflet.css">'
        scripts = f'<script src="{_STATIC}/vendor/leaflet/leaflet.js"></script>'
    return (
        layout.replace("{{title}}", html.escape(title))
        .replace("{{page}}", page)
        .replace("{{head}}", head)
        .replace("{{scripts}}", scripts)
        .replace("{{tile_url}}", html.escape(settings.tile_url or "", quote=True))
        .replace("{{tile_attribution}}", html.escape(settings.tile_attribution, quote=True))
        .replace("{{static}}", _STATIC)
    )


def install_web(app: FastAPI, settings: WebSettings) -> None:
    """The pages under ``/`` and their assets under ``/web/static/``."""
    # compressed when the browser accepts it (Leaflet's 148 kB script travels as 43 kB)
    assets = GZipMiddleware(StaticFiles(directory=ASSETS), minimum_size=1024)
    app.mount(_STATIC, assets, name="web")
    layout = (ASSETS / "layout.html").read_text(encoding="utf-8")
    pages = {page: _render(layout, page, settings) for page in _PAGES}
    headers = _headers(settings)

    def page(name: str) -> HTMLResponse:
        return HTMLResponse(pages[name], headers=headers)

    @app.get("/", include_in_schema=False)
    def fleet_map() -> HTMLResponse:
        return page("map")

    @app.get("/login", include_in_schema=False)
    def login() -> HTMLResponse:
        return page("login")

    @app.get("/vehicles/{vin}", include_in_schema=False)
    def vehicle(vin: Vin) -> HTMLResponse:
        del vin  # validated (422 for a malformed VIN); the script reads it from the URL
        return page("vehicle")

    @app.get("/alerts", include_in_schema=False)
    def alerts() -> HTMLResponse:
        return page("alerts")

    @app.get("/reports", include_in_schema=False)
    def reports() -> HTMLResponse:
        return page("reports")

    @app.get("/jobs", include_in_schema=False)
    def jobs() -> HTMLResponse:
        return page("jobs")

    @app.get("/quarantine", include_in_schema=False)
    def quarantine() -> HTMLResponse:
        return page("quarantine")

    @app.get("/health", include_in_schema=False)
    def health() -> HTMLResponse:
        return page("health")

    @app.get("/sharing", include_in_schema=False)
    def sharing() -> HTMLResponse:
        return page("sharing")

    @app.get("/fleets", include_in_schema=False)
    def fleets() -> HTMLResponse:
        return page("fleets")
