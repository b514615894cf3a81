"""URL shapes the registry hands out: the API prefix and the paths of tasks, servables and blobs.

The domain needs some of them too (signed blob URLs for workers), so they live here rather than in ``http``.
"""

from __future__ import annotations

from typing import Final

API_PREFIX: Final = "/api/v1"
SERVABLE: Final = API_PREFIX + "/servables/{owner}/{name}"
VERSION: Final = SERVABLE + r"/versions/{version:\d+}"
BLOB: Final = API_PREFIX + "/blobs/{blob_id}"


def task_url(task_id: str) -> str:
    return f"{API_PREFIX}/tasks/{task_id}"


def task_results_url(task_id: str) -> str:
    return f"{API_PREFIX}/tasks/{task_id}/results"
