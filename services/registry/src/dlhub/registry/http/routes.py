"""The URL map of the v1 API: which handler answers each method and path."""

from __future__ import annotations

from aiohttp import web

from dlhub.registry.http import (
    blobs,
    builds,
    bundles,
    citations,
    files,
    health,
    identity,
    jobs,
    runs,
    search,
    servables,
    tasks,
    verify,
)
from dlhub.registry.urls import API_PREFIX, BLOB, SERVABLE, VERSION


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get(API_PREFIX + "/health", health.health),
            web.get(API_PREFIX + "/openapi.json", health.openapi),
            web.post(API_PREFIX + "/servables", servables.publish),
            web.get(API_PREFIX + "/servables", servables.list_servables),
            web.get(SERVABLE, servables.describe_latest),
            web.put(SERVABLE, servables.update),
            web.delete(SERVABLE, servables.delete_servable),
            web.get(SERVABLE + "/versions", servables.list_versions),
            web.get(VERSION, servables.describe_version),
            web.delete(VERSION, servables.delete_version),
            web.post(VERSION + "/deprecate", servables.deprecate_version),
            web.post(VERSION + "/undeprecate", servables.undeprecate_version),
            web.get(VERSION + "/build", builds.get_build),
            web.get(VERSION + "/export", builds.export_version),
            web.get(SERVABLE + "/files", files.list_files),
            web.get(VERSION + "/files", files.list_files),
            web.get(SERVABLE + "/files/{path:.+}", files.get_file),
            web.get(VERSION + "/files/{path:.+}", files.get_file),
            web.get(SERVABLE + "/package", files.get_package),
            web.get(VERSION + "/package", files.get_package),
            web.get(SERVABLE + "/citation", citations.citation_latest),
            web.get(VERSION + "/citation", citations.citation_version),
            web.post(SERVABLE + "/run", runs.run_latest),
            web.post(VERSION + "/run", runs.run_version),
            web.post(SERVABLE + "/verify", verify.verify_latest),
            web.post(VERSION + "/verify", verify.verify_version),
            web.post(API_PREFIX + "/pipelines/run", runs.run_pipeline),
            web.post(SERVABLE + "/apply", jobs.apply_latest),
            web.post(VERSION + "/apply", jobs.apply_version),
            web.get(API_PREFIX + "/tasks/{task_id}", tasks.get_task),
            web.post(API_PREFIX + "/tasks/{task_id}/cancel", jobs.cancel_task),
            web.get(API_PREFIX + "/tasks/{task_id}/results", jobs.task_results),
            web.get(API_PREFIX + "/search", search.search),
            web.post(API_PREFIX + "/search/reindex", search.reindex_search),
            web.post(API_PREFIX + "/blobs", blobs.upload),
            web.get(BLOB, blobs.describe),
            web.delete(BLOB, blobs.delete),
            web.get(BLOB + "/content", blobs.content),
            web.get(API_PREFIX + "/whoami", identity.whoami),
            web.get(API_PREFIX + "/auth", identity.auth_info),
            web.get(SERVABLE + "/access", identity.get_access),
            web.put(SERVABLE + "/access", identity.set_access),
            web.get(API_PREFIX + "/audit", identity.list_audit),
            web.get(bundles.BUNDLE_PATH, bundles.bundle),
        ]
    )
