"""The web catalog: static files (package data in ``dlhub/registry/web``) served at ``/`` and ``/static/``.

The files are read once, when the application is built, with their ETags (a digest of the content), so a
request costs a dict lookup: no disk access, no authentication, no call to the store or the bus. The page
talks to ``/api/v1`` like any other client. Every answer carries a strict Content-Security-Policy (scripts
and styles only from this origin, no inline code, no framing). The app shell answers the client-side routes
(``/m/{owner}/{name}[@{version}]``, ``/tasks/{task_id}``, ``/publish``) so their URLs can be shared.

CSRF: the page keeps the API token in ``sessionStorage`` and sends it as an ``Authorization: Bearer``
header; the registry sets no cookies and sends no CORS headers, so another site can neither make a browser
attach the token nor read an answer (docs/web.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from aiohttp import web

from dlhub.common.errors import NotFound

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def content_security_policy(connect_origins: Sequence[str] = ()) -> str:
    """The policy, with ``connect_origins`` (Globus Auth's, for the token exchange) allowed to fetch."""
    if not connect_origins:
        return CONTENT_SECURITY_POLICY
    return CONTENT_SECURITY_POLICY.replace(
        "connect-src 'self'", "connect-src 'self' " + " ".join(connect_origins)
    )


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# ETags make a revisit a 304; "no-cache" makes the browser ask every time, so a new release is picked up at
# once without hashed file names (no build step).
CACHE_CONTROL = "no-cache"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
SHELL = "index.html"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static_files() -> dict[str, StaticFile]:
    """Every file of the ``web`` package data with a known type, by its path below it."""
    root = resources.files("dlhub.registry") / "web"
    found: dict[str, StaticFile] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if suffix in CONTENT_TYPES:
                body = child.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                found[prefix + child.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)

    walk(root, "")
    return found


def _answer(request: web.Request, file: StaticFile, security: dict[str, str]) -> web.Response:
    headers = dict(security, ETag=file.etag)
    headers["Cache-Control"] = CACHE_CONTROL
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type
    return web.Response(body=file.body, headers=headers)


def setup_web(app: web.Application, connect_origins: Sequence[str] = ()) -> None:
    """Add the catalog's routes: the shell at ``/`` and the client-side paths, the files at ``/static/``.
    ``connect_origins``: other origins the page may fetch from (Globus Auth's token endpoint)."""
    files = load_static_files()
    shell = files[SHELL]
    security = dict(SECURITY_HEADERS, **{"Content-Security-Policy": content_security_policy(connect_origins)})

    async def serve_shell(request: web.Request) -> web.Response:
        return _answer(request, shell, security)

    async def serve_static(request: web.Request) -> web.Response:
        file = files.get(request.match_info["path"])
        if file is None:
            raise NotFound("no such file")
        return _answer(request, file, security)

    app.router.add_routes(
        [
            web.get("/", serve_shell),
            web.get("/m/{owner}/{ref}", serve_shell),
            web.get("/tasks/{task_id}", serve_shell),
            web.get("/publish", serve_shell),
            web.get("/signin/callback", serve_shell),
            web.get("/static/{path:.+}", serve_static),
        ]
    )
