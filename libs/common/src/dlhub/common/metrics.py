"""Prometheus metrics shared by the services (``[metrics]`` in the configuration, ``MetricsConfig``).

Every service records into prometheus_client's process-wide default registry. The registry service serves it
on ``GET /metrics`` of its HTTP port; the broker, workers, builder and search serve it with
``start_metrics_server`` on their own small HTTP server (``metrics.<service>_port`` on ``metrics.host``).

A port of 0 asks the OS for a free one, so that the several workers ``dlhub up`` starts never collide: the
port actually bound is logged and written to ``<data_dir>/run/metrics/<service>-<pid>.port`` (removed at
exit), which is how a scraper's file-based discovery, or a test, finds it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

from prometheus_client import start_http_server

from dlhub.common.config import DLHubSettings
from dlhub.common.logging import get_logger

log = get_logger(__name__)

SERVICES = ("broker", "worker", "builder", "search")


def port_file_dir(settings: DLHubSettings) -> Path:
    return settings.data_dir / "run" / "metrics"


def start_metrics_server(settings: DLHubSettings, service: str) -> int | None:
    """Serve the default registry for ``service`` (one of ``SERVICES``); the bound port, or None when metrics
    are disabled."""
    config = settings.metrics
    if not config.enabled:
        return None
    port: int = getattr(config, f"{service}_port")
    server, _thread = start_http_server(port, addr=config.host)
    bound = int(server.server_port)
    directory = port_file_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{service}-{os.getpid()}.port"
    path.write_text(str(bound))
    atexit.register(_unlink, path)
    log.info("metrics endpoint", service=service, url=f"http://{config.host}:{bound}/metrics")
    return bound


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
