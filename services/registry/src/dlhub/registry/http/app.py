"""The registry's aiohttp application: state in AppKeys, the store and the bus opened in cleanup contexts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from dlhub.common.bus import BusClient
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.logging import get_logger
from dlhub.registry.audit import AuditLog
from dlhub.registry.auth import Authenticator, IdentityProvider, LocalProvider
from dlhub.registry.background import BackgroundTasks
from dlhub.registry.blobs import blob_store, internal_base_url
from dlhub.registry.http.errors import error_middleware
from dlhub.registry.http.keys import (
    AUDIT,
    AUTH,
    BACKGROUND,
    BUS,
    CODEC,
    FILES,
    IMAGES,
    INSTANCE_ID,
    JOBS,
    LIMITER,
    METRICS,
    RUNS,
    SERVABLES,
    SETTINGS,
    STORE,
    TASKS,
)
from dlhub.registry.http.routes import setup_routes
from dlhub.registry.http.web import origin_of, setup_web
from dlhub.registry.image_export import ImageExports
from dlhub.registry.jobs import DatasetJobs
from dlhub.registry.memo import Memo
from dlhub.registry.metrics import RegistryMetrics, metrics_handler
from dlhub.registry.package_files import IndexLimits, PackageFiles
from dlhub.registry.packages import PackageBlobs
from dlhub.registry.ports import Bus
from dlhub.registry.ratelimit import RateLimiter
from dlhub.registry.recovery import TaskRecovery, instance_id
from dlhub.registry.runs import Runs
from dlhub.registry.servables import Servables
from dlhub.registry.store import MetadataStore
from dlhub.registry.store.factory import make_store
from dlhub.registry.takeover import TaskTakeover
from dlhub.registry.tasks import TaskTable

log = get_logger(__name__)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def _store_ctx(injected: MetadataStore | None) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = injected or make_store(app[SETTINGS])
        await store.open()
        app[STORE] = store
        try:
            yield
        finally:
            if injected is None:
                await store.close()

    return ctx


def _bus_ctx(injected: Bus | None) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if injected is not None:
            app[BUS] = injected
            yield
            return
        # The bus identity is the instance id: a restarted registry is the same peer to the broker, which
        # re-sends it the results of durable tasks it had not stored yet (recovery.py).
        bus = BusClient(bus=app[SETTINGS].bus, codec=app[CODEC], client_id=app[INSTANCE_ID])
        await bus.start()
        app[BUS] = bus
        try:
            yield
        finally:
            await bus.close()

    return ctx


def make_provider(settings: DLHubSettings, store: MetadataStore) -> IdentityProvider:
    """The configured identity provider (``auth.provider``); Globus loads globus-sdk only when chosen."""
    auth = settings.auth
    local = LocalProvider(
        store, cache_ttl_s=auth.token_cache_ttl_s, admin_users=settings.registry.admin_users
    )
    if auth.provider == "local":
        return local
    from dlhub.registry.auth_globus import GlobusProvider

    return GlobusProvider(store, auth.globus, local=local, admin_users=settings.registry.admin_users)


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store, bus, codec = app[STORE], app[BUS], app[CODEC]
    background = BackgroundTasks()
    tasks = TaskTable(
        store,
        codec,
        ttl_s=settings.registry.task_result_ttl_s,
        owner=app[INSTANCE_ID],
        deadline_grace_s=settings.registry.task_deadline_grace_s,
    )
    packages = PackageBlobs(settings.data_dir / "packages")
    servables = Servables(
        settings=settings,
        store=store,
        bus=bus,
        codec=codec,
        tasks=tasks,
        background=background,
        blobs=packages,
    )
    app[BACKGROUND] = background
    app[TASKS] = tasks
    app[AUTH] = Authenticator(
        provider=make_provider(settings, store), max_cached=settings.auth.globus.cache_max_entries
    )
    app[AUDIT] = AuditLog(store)
    if settings.auth.rate_limit.enabled:
        app[LIMITER] = RateLimiter(settings.auth.rate_limit)
    app[SERVABLES] = servables
    app[IMAGES] = ImageExports(settings.environments)
    # Index no more than the builder extracts: a package past its limits never became a ready version.
    limits = IndexLimits(max_files=settings.builder.max_files, max_bytes=settings.builder.max_extracted_bytes)
    app[FILES] = PackageFiles(packages, limits)
    app[RUNS] = Runs(
        settings=settings,
        bus=bus,
        codec=codec,
        servables=servables,
        tasks=tasks,
        background=background,
        memo=Memo(settings.registry, store),
        metrics=app[METRICS],
    )
    jobs = DatasetJobs(
        settings=settings,
        bus=bus,
        codec=codec,
        runs=app[RUNS],
        servables=servables,
        tasks=tasks,
        files=app[FILES],
        background=background,
    )
    app[JOBS] = jobs
    background.spawn(tasks.sweep_forever(settings.registry.task_sweep_interval_s), name="task sweep")
    background.spawn(jobs.sweep_forever(settings.registry.task_sweep_interval_s), name="job results sweep")
    blob_sweep = blob_store(settings).sweep_forever(settings.registry.blob_sweep_interval_s)
    background.spawn(blob_sweep, name="blob sweep")
    resumed = await servables.resume_builds()
    if resumed:
        log.info("resumed builds left over from a previous run", count=resumed)
    await jobs.fail_orphans()
    unindexed = await servables.resume_index_updates()
    if unindexed:
        log.info("index updates left over from a previous run are retried", count=unindexed)
    _start_task_recovery(settings, tasks, bus, background, servables)
    try:
        yield
    finally:
        await background.close()


def _start_task_recovery(
    settings: DLHubSettings, tasks: TaskTable, bus: Bus, background: BackgroundTasks, servables: Servables
) -> None:
    """Every accepted task ends: across this registry's restarts (recovery.py) and when another registry
    sharing the store is gone (takeover.py)."""
    TaskRecovery(
        tasks=tasks,
        bus=bus,
        background=background,
        config=settings.registry,
        on_build_reaped=servables.fail_overdue_build,
    ).start()
    TaskTakeover(
        tasks=tasks,
        bus=bus,
        background=background,
        config=settings.registry,
        url=internal_base_url(settings),
        on_build_taken=servables.take_over_build,
        on_build_lost=servables.fail_overdue_build,
    ).start()


def create_app(
    settings: DLHubSettings, *, bus: Bus | None = None, store: MetadataStore | None = None
) -> web.Application:
    """Build the registry application; ``bus`` and ``store`` may be injected (tests), else from settings."""
    metrics = RegistryMetrics(enabled=settings.metrics.enabled)
    app = web.Application(
        client_max_size=settings.registry.max_upload_bytes, middlewares=[error_middleware(metrics.requests)]
    )
    app[SETTINGS] = settings
    app[INSTANCE_ID] = instance_id(settings)
    app[METRICS] = metrics
    app[CODEC] = Codec(max_message_bytes=settings.bus.max_message_bytes)
    setup_routes(app)
    globus = settings.auth.provider == "globus"
    setup_web(app, [origin_of(settings.auth.globus.auth_url)] if globus else [])
    if metrics.enabled:
        app.router.add_get("/metrics", metrics_handler)
    app.cleanup_ctx.append(_store_ctx(store))
    app.cleanup_ctx.append(_bus_ctx(bus))
    app.cleanup_ctx.append(_services_ctx)
    return app
