"""The URL map of the v1 API."""

from __future__ import annotations

from aiohttp import web

from dlhub.registry import (
    handlers_blobs,
    handlers_citation,
    handlers_misc,
    handlers_runs,
    handlers_servables,
    handlers_vectors,
)

API_PREFIX = handlers_servables.API_PREFIX
SERVABLE = API_PREFIX + "/servables/{owner}/{name}"
VERSION = SERVABLE + r"/versions/{version:\d+}"
BLOB = API_PREFIX + "/blobs/{blob_id}"


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get(API_PREFIX + "/health", handlers_misc.health),
            web.get(API_PREFIX + "/openapi.json", handlers_misc.openapi),
            web.post(API_PREFIX + "/servables", handlers_servables.publish),
            web.get(API_PREFIX + "/servables", handlers_servables.list_servables),
            web.get(SERVABLE, handlers_servables.describe_latest),
            web.put(SERVABLE, handlers_servables.update),
            web.delete(SERVABLE, handlers_servables.delete_servable),
            web.get(SERVABLE + "/versions", handlers_servables.list_versions),
            web.get(VERSION, handlers_servables.describe_version),
            web.delete(VERSION, handlers_servables.delete_version),
            web.post(VERSION + "/deprecate", handlers_servables.deprecate_version),
            web.post(VERSION + "/undeprecate", handlers_servables.undeprecate_version),
            web.get(SERVABLE + "/citation", handlers_citation.citation_latest),
            web.get(VERSION + "/citation", handlers_citation.citation_version),
            web.post(SERVABLE + "/run", handlers_runs.run_latest),
            web.post(VERSION + "/run", handlers_runs.run_version),
            web.post(SERVABLE + "/verify", handlers_vectors.verify_latest),
            web.post(VERSION + "/verify", handlers_vectors.verify_version),
            web.post(API_PREFIX + "/pipelines/run", handlers_runs.run_pipeline),
            web.get(API_PREFIX + "/tasks/{task_id}", handlers_misc.get_task),
            web.get(API_PREFIX + "/search", handlers_misc.search),
            web.post(API_PREFIX + "/search/reindex", handlers_misc.reindex_search),
            web.post(API_PREFIX + "/blobs", handlers_blobs.upload),
            web.get(BLOB, handlers_blobs.describe),
            web.delete(BLOB, handlers_blobs.delete),
            web.get(BLOB + "/content", handlers_blobs.content),
        ]
    )
