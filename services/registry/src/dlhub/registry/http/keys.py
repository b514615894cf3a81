"""Typed application state."""

from __future__ import annotations

from aiohttp import web

from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.registry.audit import AuditLog
from dlhub.registry.auth import Authenticator
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.image_export import ImageExports
from dlhub.registry.jobs import DatasetJobs
from dlhub.registry.metrics import RegistryMetrics
from dlhub.registry.package_files import PackageFiles
from dlhub.registry.ports import Bus
from dlhub.registry.ratelimit import RateLimiter
from dlhub.registry.runs import Runs
from dlhub.registry.servables import Servables
from dlhub.registry.store import MetadataStore
from dlhub.registry.tasks import TaskTable

SETTINGS = web.AppKey("settings", DLHubSettings)
INSTANCE_ID = web.AppKey("instance_id", str)
"""This registry's bus identity and the owner of the tasks it accepts (``recovery.instance_id``)."""
CODEC = web.AppKey("codec", Codec)
STORE = web.AppKey("store", MetadataStore)
BUS = web.AppKey("bus", Bus)
AUTH = web.AppKey("auth", Authenticator)
TASKS = web.AppKey("tasks", TaskTable)
BACKGROUND = web.AppKey("background", BackgroundTasks)
SERVABLES = web.AppKey("servables", Servables)
RUNS = web.AppKey("runs", Runs)
IMAGES = web.AppKey("images", ImageExports)
FILES = web.AppKey("files", PackageFiles)
METRICS = web.AppKey("metrics", RegistryMetrics)
AUDIT = web.AppKey("audit", AuditLog)
LIMITER = web.AppKey("limiter", RateLimiter)
JOBS = web.AppKey("jobs", DatasetJobs)
