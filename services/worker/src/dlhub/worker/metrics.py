"""The worker's Prometheus metrics (served by ``dlhub.common.metrics.start_metrics_server``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TASKS = Counter(
    "dlhub_worker_tasks",
    "Dispatched task steps this worker answered, by outcome (completed/failed) and error code",
    ["outcome", "error"],
)
EXECUTOR_RESTARTS = Counter(
    "dlhub_worker_executor_restarts", "Executor processes replaced after they died or were killed"
)
BATCH_SIZE = Histogram(
    "dlhub_worker_batch_size",
    "Requests merged into one model call by the batcher (1: ran alone)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_ROWS = Histogram(
    "dlhub_worker_batch_rows",
    "Input rows of one merged model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
