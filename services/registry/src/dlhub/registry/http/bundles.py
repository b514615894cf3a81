"""``GET /internal/v1/bundles/{sha256}``: a built version's bundle, for Task Managers (docs/task-managers.md).

Outside the public API: a Task Manager learns a bundle's digest only from a dispatch on the authenticated
bus, and the digest (256 bits, of an archive that also holds per-version metadata) is the capability, as the
signature is for a signed blob URL. The worker checks the bytes against it; this side only serves the file.
"""

from __future__ import annotations

from aiohttp import web

from dlhub.common.bundles import DIGEST_RE
from dlhub.common.errors import NotFound, ValidationFailed
from dlhub.registry.http.keys import SERVABLES

BUNDLE_PATH = "/internal/v1/bundles/{sha256}"


async def bundle(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["sha256"]
    if not DIGEST_RE.match(digest):
        raise ValidationFailed("not a sha256 hex digest", field="sha256")
    path = request.app[SERVABLES].bundles.path(digest)
    if not path.is_file():
        raise NotFound("no bundle with this digest")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
