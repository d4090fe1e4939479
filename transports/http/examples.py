"""Example pages shipped with maitred (``transports/http/static/``, package data), served by the
http transport under ``/examples/``: static files, no build step. ``GET /examples/`` lists them.

Only the files in that folder are served, by exact name (no paths, so no traversal).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

#: files of the folder served elsewhere, under their own access rule (``/admin/``)
NOT_EXAMPLES = frozenset({"admin.html"})

#: suffix → Content-Type of the files served
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
}


def example_files() -> dict[str, bytes]:
    """``{file name: content}`` of the shipped example pages."""
    folder = resources.files("maitred.transports.http").joinpath("static")
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        name = entry.name
        if name in NOT_EXAMPLES:
            continue
        if entry.is_file() and any(name.endswith(s) for s in _TYPES):
            out[name] = entry.read_bytes()
    return out


def _content_type(name: str) -> str:
    for suffix, ctype in _TYPES.items():
        if name.endswith(suffix):
            return ctype
    return "application/octet-stream"


def _index(names: list[str]) -> bytes:
    items = "".join(f'<li><a href="{n}">{n}</a></li>' for n in names)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>maitred examples</title></head><body><h1>maitred examples</h1>"
        f"<ul>{items}</ul></body></html>"
    ).encode()


def add_example_routes(router: web.UrlDispatcher) -> None:
    """``GET /examples/`` (an index) and ``GET /examples/<name>``; the files are read once."""
    files = example_files()

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=_index(sorted(files)), content_type="text/html", charset="utf-8")

    async def one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content = files.get(name)
        if content is None:
            return web.Response(status=404, text=f"no example {name}\n")
        return web.Response(
            body=content,
            content_type=_content_type(name),
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/examples/")

    router.add_get("/examples", redirect)
    router.add_get("/examples/", index)
    router.add_get("/examples/{name}", one)
