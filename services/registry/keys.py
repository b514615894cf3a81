"""Typed application state."""

from __future__ import annotations

from aiohttp import web

from libs.common.codec import Codec
from libs.common.config import DLHubSettings
from services.registry.auth import Authenticator
from services.registry.background import BackgroundTasks
from services.registry.ports import Bus
from services.registry.runs import Runs
from services.registry.servables import Servables
from services.registry.store import MetadataStore
from services.registry.tasks import TaskTable

SETTINGS = web.AppKey("settings", DLHubSettings)
CODEC = web.AppKey("codec", Codec)
STORE = web.AppKey("store", MetadataStore)
BUS = web.AppKey("bus", Bus)
AUTH = web.AppKey("auth", Authenticator)
TASKS = web.AppKey("tasks", TaskTable)
BACKGROUND = web.AppKey("background", BackgroundTasks)
SERVABLES = web.AppKey("servables", Servables)
RUNS = web.AppKey("runs", Runs)
