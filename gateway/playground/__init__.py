"""The compression playground: a static page (HTML, CSS, JS shipped in the package) served at /playground."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["playground_routes"]

_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "playground.css": ("playground.css", "text/css; charset=utf-8"),
    "playground.js": ("playground.js", "text/javascript; charset=utf-8"),
}
_HEADERS = {
    # the page calls only its own origin; nothing from elsewhere is loaded or allowed
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def playground_routes() -> list[Route]:
    """GET /playground (the page) and /playground/{playground.css, playground.js}.

    The page holds nothing: every compression it runs is a POST /v1/compress made with the API key
    typed into it, so it is under that key's permissions and limits like any other client.
    """
    cache = {path: (_read(name), media) for path, (name, media) in _FILES.items()}

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "")
        found = cache.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, media = found
        return Response(body, media_type=media, headers=_HEADERS)

    return [Route("/playground", page, methods=["GET"]), Route("/playground/{name}", page, methods=["GET"])]
