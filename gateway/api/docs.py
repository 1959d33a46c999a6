"""The interactive API documentation at ``/docs``, served entirely from this package.

FastAPI's default page loads Swagger UI from a CDN, so on a machine without Internet access
(a depot, a test bench, a car park) ``/docs`` was blank. The page here references only the
assets in ``gateway/api/static/swagger-ui/`` (Swagger UI from the ``swagger-ui-dist`` npm
package, Apache-2.0, LICENSE and NOTICE beside it; ``scripts/refresh-swagger-ui.sh``
updates them), served under ``/docs/static/``, and turns off Swagger UI's online spec
validator, the one other thing it would fetch. ReDoc is not offered. The page may not be
framed (``X-Frame-Options``, CSP ``frame-ancestors``) and is not sniffed, like the
dashboard's pages (decision 0039); its scripts are not restricted (Swagger UI's page has an
inline script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "install_docs"]

#: what every dashboard page also says about framing, sniffing and referrers
_HEADERS: Final = {
    "Content-Security-Policy": "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: Swagger UI's files (see scripts/refresh-swagger-ui.sh)
ASSETS: Final = Path(__file__).parent / "static" / "swagger-ui"
_STATIC: Final = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets under ``/docs/static/``."""
    app.mount(_STATIC, StaticFiles(directory=ASSETS), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_STATIC}/favicon-32x32.png",
            # no badge from validator.swagger.io: nothing leaves the machine
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(_HEADERS)
        return page
