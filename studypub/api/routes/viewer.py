"""The web viewer: a static page at ``/`` and its assets (the page's script and style, and the
feed client module it imports, usable by other pages too), shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from studypub.errors import NotFound

router = APIRouter(include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
ASSETS = {
    "app.js": "text/javascript",
    "feed-client.js": "text/javascript",
    "style.css": "text/css",
    "index.html": "text/html",
}


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    # Only the named files: never a path taken from the request.
    if name not in ASSETS:
        raise NotFound(f"no viewer asset {name!r}")
    return FileResponse(
        WEB_DIR / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"}
    )
