"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts and
styles served from here (fastapi-offline's copies) rather than a CDN, so that they work where the
service has no internet."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_PATH = "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} API",
                               swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png")


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} API",
                          redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False)


def assets() -> StaticFiles:
    return StaticFiles(directory=ASSETS_DIR)
