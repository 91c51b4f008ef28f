"""GET / and its two assets: the try-it page (the files in service/ui/).

The page is open without the API key, like /docs: it holds no data, and asks for the key
itself when the API answers 401 (kept in the tab's sessionStorage, sent as X-API-Key).
`FEATCACHE_UI=false` leaves these routes out.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from fastapi import APIRouter, Response

#: path -> (file in service/ui/, media type)
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(ASSETS)

#: Only this server's own scripts, styles and API; images from uploads (blob:) and heatmaps
#: (data:). Nothing from elsewhere, so the page works offline and cannot leak the key.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def read_asset(name: str) -> bytes:
    return (resources.files("service") / "ui" / name).read_bytes()


def _serve(name: str, media_type: str) -> Callable[[], Response]:
    body = read_asset(name)  # read once, when the app is built: a missing file fails then

    def asset() -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return asset


for _path, (_name, _type) in ASSETS.items():
    router.add_api_route(_path, _serve(_name, _type), methods=["GET"], name=f"ui:{_name}")
