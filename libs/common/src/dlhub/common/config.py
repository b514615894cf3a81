"""Typed configuration for every service.

Sources, highest priority first: explicit keyword arguments, environment variables (``DLHUB_`` prefix, ``__``
between nesting levels, e.g. ``DLHUB_BUS__HEARTBEAT_INTERVAL_S=0.5``), then the TOML file named by
``--config`` or ``DLHUB_CONFIG``. Every duration and size carries its unit in its name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dlhub.common.ids import DEVICE_PATTERN

MiB = 1024 * 1024


def default_data_dir() -> Path:
    return Path(os.environ.get("DLHUB_HOME", Path.home() / ".dlhub")) / "data"


class BusConfig(BaseModel):
    """How a service reaches the broker and how liveness is judged on both sides."""

    broker_url: str = "tcp://127.0.0.1:5560"
    heartbeat_interval_s: PositiveFloat = 1.0
    heartbeat_liveness: PositiveInt = 3
    reconnect_initial_s: PositiveFloat = 0.25
    reconnect_max_s: PositiveFloat = 32.0
    max_message_bytes: PositiveInt = 256 * MiB
    max_pending_calls: PositiveInt = 10_000
    """Tasks a submitter (the registry) awaits at once; one more is refused at once with ``queue_full``
    (503 with ``Retry-After`` at the REST API) rather than queued in its memory."""

    curve_enabled: bool | None = None
    """Authenticate and encrypt every connection to the broker with CurveZMQ (docs/security.md): a peer
    without an admitted key gets no connection. Unset: on under ``dlhub up`` (which writes the keys on first
    start), off for a service started alone. Off, anyone who reaches the broker's port may register for topics
    and read other users' inputs."""
    curve_keys_dir: Path | None = None
    """Where the key files are (``<name>.key``, ``<name>.key_secret``); default ``<data_dir>/keys``."""
    curve_key_name: str | None = None
    """The keypair this process uses (``<role>`` or ``<role>-<label>``); default the service's own role:
    ``registry``, ``worker``, ``builder`` or ``search``."""

    @property
    def liveness_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_liveness


class BrokerConfig(BaseModel):
    bind_url: str = "tcp://127.0.0.1:5560"
    extra_bind_urls: list[str] = Field(default_factory=list)
    """More endpoints on the same socket: ``dlhub up`` adds an ``ipc://`` one in the data directory, which
    costs its local services less per message than TCP on loopback, while remote workers use ``bind_url``."""
    max_queued_tasks: PositiveInt = 100_000
    """Tasks waiting for a free handler, all topics together; past it a task fails with ``queue_full``."""
    max_queued_per_topic: PositiveInt = 10_000
    """Tasks waiting for a free handler of one topic (one servable version); past it ``queue_full``, so that
    one overloaded servable cannot fill the whole queue."""
    shutdown_grace_s: NonNegativeFloat = 12.0
    """On SIGTERM the broker refuses new tasks (``shutting_down``) and lets the running ones finish for up to
    this long; what is left then fails typed. Longer than the workers' grace, so their last results pass."""
    sndhwm: int = 0
    max_unacked_results: PositiveInt = 100_000
    """Results of durable tasks (asynchronous runs) held until their client acknowledges them; past it the
    oldest is dropped (its task then ends through the registry's reconciliation or deadline)."""
    max_unacked_result_bytes: PositiveInt = 512 * MiB
    """The same bound in encoded bytes."""
    unacked_result_ttl_s: PositiveFloat = 3600.0
    """How long an unacknowledged result waits for a registry that went away to come back."""
    unserved_timeout_s: NonNegativeFloat = 30.0
    """A queued task whose topic no registered handler serves (no Task Manager's patterns match its servable)
    fails ``no_handler`` after waiting this long, rather than at its deadline; long enough for a restarting
    worker to register again (0: wait for the deadline)."""


class StoreConfig(BaseModel):
    """Where the registry keeps versions, tasks and tokens: an embedded SQLite file or a MongoDB server."""

    backend: Literal["sqlite", "mongodb"] = "sqlite"
    sqlite_path: Path | None = None
    sqlite_busy_timeout_s: PositiveFloat = 10.0
    """How long a write waits for a lock held by another process before failing ``store_unavailable``."""
    mongodb_url: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "dlhub"
    mongodb_server_selection_timeout_s: PositiveFloat = 5.0
    mongodb_connect_timeout_s: PositiveFloat = 5.0
    mongodb_socket_timeout_s: PositiveFloat = 30.0


class RegistryConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8642, ge=0, le=65535)
    public_url: str | None = None
    max_upload_bytes: PositiveInt = 100 * MiB
    max_request_json_bytes: PositiveInt = 64 * MiB
    sync_timeout_s: PositiveFloat = 300.0
    task_result_ttl_s: PositiveFloat = 7 * 24 * 3600.0
    task_sweep_interval_s: PositiveFloat = 60.0
    instance_id: str = Field(default="", max_length=200)
    """This registry's identity on the bus and the owner of the tasks it accepts; default
    ``registry@<hostname>:<port>``, the same after a restart (the broker keeps undelivered results for it).
    Replicas sharing a host and port must set distinct ids."""
    task_deadline_grace_s: PositiveFloat = 60.0
    """A task still pending or running this long after its own timeout (builds: the build timeout) is failed
    ``deadline_exceeded`` by any registry's reaper, whoever accepted it."""
    task_reap_interval_s: PositiveFloat = 10.0
    """How often each registry looks for tasks past their deadline."""
    job_timeout_s: PositiveFloat = 24 * 3600.0
    """A dataset job (``POST .../apply``) still running this long fails ``deadline_exceeded``."""
    job_batch_timeout_s: PositiveFloat = 300.0
    """One batch of a dataset job (one call through the broker); a job whose progress stops for this long
    plus ``task_deadline_grace_s`` (its registry is gone) is reaped."""
    job_max_inflight_batches: PositiveInt = 4
    """Batches of one dataset job awaited from the broker at once."""
    job_max_batch_rows: PositiveInt = 10_000
    """The largest ``batch_rows`` a job may ask for."""
    job_max_failures_listed: NonNegativeInt = 1000
    """Per-item failures kept in the job's task output (all of them are in its results file)."""
    task_reconcile_retry_s: PositiveFloat = 2.0
    """After a start (or a broker restart), how often the registry asks the broker again about its open
    tasks until it answers."""
    peer_heartbeat_interval_s: PositiveFloat = 5.0
    """How often the registry records in the store that it is alive, and looks for registries that are not
    (several registries sharing one store and broker: docs/operations.md)."""
    peer_stale_after_s: PositiveFloat = 30.0
    """A registry whose last heartbeat is older than this is gone: another registry takes its open runs over
    (their outcomes come to it) and fails ``registry_lost`` those the broker no longer holds. Keep it several
    heartbeat intervals (a registry that is only slow loses its tasks to another, which then ends them)."""
    allow_anonymous_run: bool = True
    admin_users: list[str] = Field(default_factory=list)
    """Users allowed to run administrative operations (``POST /search/reindex``); empty: nobody."""
    version_cache_max_versions: PositiveInt = 10_000
    """Versions (with their metadata documents, ~10 KB each) the registry keeps in memory for the run path;
    past it the servables cached longest ago are read from the store again when next used (a servable with
    more versions than this is still held, alone)."""
    memo_enabled: bool = True
    """Memoize results of deterministic servables at the registry (see ``dlhub.registry.memo``)."""
    memo_shared: bool = False
    """Also keep memoized results in the metadata store, shared by every registry instance."""
    memo_max_bytes: PositiveInt = 64 * MiB
    memo_max_entry_bytes: PositiveInt = 1 * MiB
    memo_ttl_s: PositiveFloat = 3600.0
    max_blob_bytes: PositiveInt = 100 * MiB
    """Largest file accepted by ``POST /blobs`` (an input of type file uploaded to the registry)."""
    blob_ttl_s: PositiveFloat = 24 * 3600.0
    """How long an uploaded blob is kept; expired blobs are swept every ``blob_sweep_interval_s``."""
    blob_sweep_interval_s: PositiveFloat = 60.0
    blob_url_ttl_s: PositiveFloat = 3600.0
    """Lifetime of the signed URL a ``{"blob": id}`` input becomes (must cover the task's time queued)."""
    max_build_log_bytes: PositiveInt = 1 * MiB
    """Cap of a build record's stored log: past it the head and the tail are kept (half each) around a
    marker line saying how many lines were dropped."""
    build_log_save_interval_s: PositiveFloat = 0.5
    """A running build's record is saved on every state change and at most this often for log lines."""
    index_retry_interval_s: PositiveFloat = 5.0
    """How often search index updates that failed (the search service down) are sent again."""
    build_follow_poll_interval_s: PositiveFloat = 0.25
    """How often ``GET .../build?follow=true`` polls the store (works across several registries)."""
    build_follow_timeout_s: PositiveFloat = 3600.0
    """A followed build's stream ends after this long even if the build has not finished."""
    max_body_nesting: PositiveInt = 64
    """Deepest nesting of arrays and objects accepted in a JSON or msgpack request body (400 past it)."""
    max_line_bytes: PositiveInt = 8190
    """Longest request line (method, path and query); past it a 414 ``uri_too_long``."""
    max_field_bytes: PositiveInt = 8190
    """Longest header field; past it a 431 ``request_header_fields_too_large``."""
    header_read_timeout_s: PositiveFloat = 30.0
    """A new connection that has not sent a complete request line and headers by then is closed."""
    keepalive_timeout_s: PositiveFloat = 75.0
    """An idle connection (or one that stalls part-way through a later request's headers) is closed after
    this long."""
    max_connections: PositiveInt = 1000
    """Open client connections; one more is answered 503 ``service_unavailable`` and closed."""
    shutdown_grace_s: NonNegativeFloat = 10.0
    """On SIGTERM the registry answers new requests 503 ``shutting_down`` (with ``Retry-After``) and lets the
    requests in progress (sync runs included) finish for up to this long, then exits."""
    internal_url: str | None = None
    """Base URL workers reach this registry at (signed blob URLs); default ``public_url``, else
    ``http://<host>:<port>`` (``127.0.0.1`` for a wildcard host)."""

    @model_validator(mode="after")
    def _peer_timing(self) -> RegistryConfig:
        # A stale timeout within a heartbeat or two would take over the tasks of live peers.
        if self.peer_stale_after_s <= 2 * self.peer_heartbeat_interval_s:
            raise ValueError("registry.peer_stale_after_s must exceed twice peer_heartbeat_interval_s")
        return self


class GlobusAuthConfig(BaseModel):
    """The registry as a Globus Auth resource server (``auth.provider = "globus"``)."""

    client_id: str = ""
    """The registry's confidential client (it introspects tokens and asks for dependent tokens)."""
    client_secret: SecretStr | None = None
    """Its secret: from ``DLHUB_AUTH__GLOBUS__CLIENT_SECRET`` or ``client_secret_file``; never logged."""
    client_secret_file: Path | None = None
    scope: str = ""
    """The scope a token must carry to be accepted (``https://auth.globus.org/scopes/<client_id>/all``)."""
    native_client_id: str = ""
    """The native-app client ``dlhub login`` and the web catalog sign people in with (public: no secret;
    the web catalog's ``<origin>/signin/callback`` must be one of its redirect URIs)."""
    auth_url: str = "https://auth.globus.org/"
    """Globus Auth's base URL: introspection, dependent tokens, and where the web catalog signs people in."""
    groups_url: str = "https://groups.api.globus.org/"
    """The Globus Groups API's base URL."""
    groups_scope: str = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"
    introspect_cache_ttl_s: PositiveFloat = 60.0
    """How long an introspected token is trusted before asking Globus Auth again (never past its expiry)."""
    groups_cache_ttl_s: PositiveFloat = 300.0
    """How long a person's group memberships are reused."""
    cache_max_entries: PositiveInt = 10_000
    clock_skew_s: NonNegativeFloat = 5.0
    """Tolerance on ``nbf``/``exp`` for clocks slightly out of step."""
    request_timeout_s: PositiveFloat = 10.0
    max_retries: NonNegativeInt = 1
    """Retries of a failed Globus call (globus-sdk's default, 5 with backoff, holds a request ~14 s)."""

    def secret(self) -> str:
        """The client secret, from the setting or its file ("" when neither is set)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return ""


class RateLimitConfig(BaseModel):
    """Per-identity token buckets (anonymous callers by address); administrators are exempt."""

    enabled: bool = False
    requests_per_s: PositiveFloat = 50.0
    burst: PositiveInt = 100
    max_tracked: PositiveInt = 100_000
    """Buckets kept in memory; past it the idlest half is dropped (they were full anyway)."""


class AuthConfig(BaseModel):
    """Who callers are (``provider``), how fast they may call, and what is audited."""

    provider: Literal["local", "globus"] = "local"
    token_cache_ttl_s: PositiveFloat = 30.0
    """Local tokens (and group memberships) are re-read from the store after this long."""
    globus: GlobusAuthConfig = Field(default_factory=GlobusAuthConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    audit_max_page: PositiveInt = 1000


ParslProvider = Literal["local", "slurm", "pbs", "kubernetes"]
ParslLauncher = Literal["default", "single_node", "simple", "srun", "mpiexec", "aprun"]


class ParslConfig(BaseModel):
    """How a worker with ``backend = "parsl"`` runs tasks: one Parsl HighThroughputExecutor (README, "Running
    on clusters with Parsl"). Blocks are batch jobs (or pods); each block has ``nodes_per_block`` nodes with
    ``workers_per_node`` Parsl worker processes, each keeping its servables loaded between tasks."""

    provider: ParslProvider = "local"
    """Where blocks run: this machine, a Slurm or PBS Pro batch job, or a Kubernetes pod."""
    workers_per_node: PositiveInt = 1
    """Parsl worker processes per node (HTEX ``max_workers_per_node``); each runs one task at a time."""
    cores_per_worker: PositiveFloat = 1.0
    nodes_per_block: PositiveInt = 1
    init_blocks: NonNegativeInt = 1
    min_blocks: NonNegativeInt = 1
    max_blocks: PositiveInt = 1
    parallelism: float = Field(default=1.0, gt=0.0, le=1.0)
    """Blocks asked for per outstanding task slot: 1 starts a block as soon as tasks wait for one, less
    waits for more tasks per block (Parsl's ``parallelism``)."""
    max_idletime_s: PositiveFloat = 120.0
    """A block with no task for this long is released (down to ``min_blocks``; Parsl's ``max_idletime``)."""
    strategy_period_s: PositiveFloat = 5.0
    """How often Parsl's strategy looks at outstanding tasks and block states to scale up or down."""
    walltime_s: PositiveInt = 3600
    """Wall-clock limit of one batch job (Slurm and PBS)."""
    partition: str | None = None
    """Slurm partition."""
    queue: str | None = None
    """PBS queue."""
    account: str | None = None
    """Account (allocation) charged for the jobs (Slurm and PBS)."""
    qos: str | None = None
    """Slurm quality of service."""
    exclusive: bool = True
    """Slurm: ask for whole nodes (``#SBATCH --exclusive``); false lets blocks share a node."""
    job_status_period_s: PositiveFloat = 60.0
    """Slurm: how often the blocks' job states are read (``squeue``, or ``sacct`` with accounting); a block
    whose job failed or ended is noticed within this."""
    scheduler_options: str = ""
    """Extra lines for the job script header, e.g. ``#SBATCH --constraint=cpu`` (Slurm and PBS)."""
    select_options: str = ""
    """PBS Pro ``-l select`` options appended after ``ncpus``, e.g. ``ngpus=1``."""
    cpus_per_node: PositiveInt = 1
    """PBS Pro ``ncpus`` per node."""
    worker_init: str = ""
    """Shell commands run before the Parsl workers start (load modules, activate the environment that has
    DLHub installed)."""
    launcher: ParslLauncher = "default"
    """How the workers are started inside a block; ``default`` is the provider's own choice (use ``srun`` or
    ``mpiexec`` for blocks of more than one node)."""
    image: str | None = None
    """Kubernetes: container image with DLHub and the servables' dependencies installed (required)."""
    namespace: str = "default"
    """Kubernetes namespace of the worker pods."""
    pod_max_cpu: PositiveFloat = 2.0
    pod_max_mem: str = "500Mi"
    """Kubernetes resource limits of one worker pod."""
    address: str | None = None
    """Address the Parsl workers reach the interchange at; default ``127.0.0.1`` for the local provider and
    Parsl's auto-detection otherwise."""
    encrypted: bool = True
    """Encrypt the interchange <-> worker traffic with CurveZMQ."""
    heartbeat_period_s: PositiveInt = 30
    heartbeat_threshold_s: PositiveInt = 120
    """A Parsl node silent for this long is lost; its tasks fail with ``worker_lost``."""
    startup_timeout_s: PositiveFloat = 120.0
    """Local provider: how long the worker waits for every Parsl worker to connect before it registers."""
    run_dir: Path | None = None
    """Parent of Parsl's run directory (submit scripts, logs); default ``<data_dir>/parsl``. Each worker
    service uses a fresh sub-directory and removes it when it stops, unless ``keep_run_dir``."""
    keep_run_dir: bool = False


class ReplicaConfig(BaseModel):
    """Dedicated workers for one servable, started by ``dlhub up`` besides the general ones."""

    servable: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    """``owner/name``: the replicas serve every version of it (topic ``servable/<owner>/<name>@*``), and
    nothing else."""
    count: PositiveInt = 1


class WorkerConfig(BaseModel):
    topics: list[str] = Field(default_factory=lambda: ["servable/*"])
    """Broker topics served; ``serves`` is the friendlier way to say which servables."""
    serves: list[str] | None = None
    """Servable name patterns this Task Manager serves (``["*"]``, ``["alice/*", "bob/model"]``; globs on
    ``owner/name``, ``@version`` optional): the broker routes it only their tasks. Set, it replaces
    ``topics``; unset, ``topics`` applies (every servable by default)."""
    site: str = Field(default="", max_length=200)
    """Where this Task Manager runs (a cluster, a lab): shown in /health and ``dlhub workers``."""
    instance_id: str = Field(default="", max_length=200)
    """A stable name for this Task Manager, shown beside its per-process handler id."""
    devices: list[Annotated[str, Field(pattern=DEVICE_PATTERN)]] | None = Field(default=None, max_length=256)
    """The devices it offers servables, ``kind:id`` (``["gpu:0", "gpu:1"]``): a servable whose placement
    needs a ``gpu`` is routed only to Task Managers offering one. Unset: GPUs are detected
    (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``); ``[]``: none (docs/task-managers.md, "Placement")."""
    registry_url: str | None = None
    """The registry's internal URL (``registry.internal_url``), where a Task Manager without the builder's
    disk fetches the bundles of versions it lacks (``GET /internal/v1/bundles/<sha256>``). Unset: versions
    are read from ``servable_dir`` only (a worker sharing the builder's disk, as under ``dlhub up``)."""
    bundle_dir: Path | None = None
    """Where fetched bundles are unpacked, one folder per sha256; default ``<data_dir>/bundle-cache``."""
    bundle_max_bytes: PositiveInt = 2048 * MiB
    """Largest bundle fetched (compressed), and the bound on its unpacked size."""
    bundle_max_files: PositiveInt = 100_000
    bundle_fetch_timeout_s: PositiveFloat = 300.0
    """Total time allowed to download one bundle."""
    processes: PositiveInt = 1
    """Executor processes of each servable version's lane (``dlhub.worker.lanes``): every version of the
    shared environment runs in processes of its own, so a slow, stuck or crashing servable never delays
    another one; this is also how many tasks of one servable run at once (Parsl back end: Parsl workers)."""
    tasks_per_process: PositiveInt = 1
    max_servable_lanes: PositiveInt = 8
    """Servable lanes a worker keeps warm at once; opening another one first stops the least recently used
    idle lane (a lane running a task is never stopped, so the bound may be passed while all are busy)."""
    servable_lane_idle_s: PositiveFloat = 600.0
    """A lane that has run no task for this long is stopped (started again on the next request)."""
    servable_max_tasks: PositiveInt | None = None
    """Tasks of one servable version (one topic) the broker hands this worker at once, running or waiting
    here; default three quarters of the worker's capacity (at least 1), so one busy servable cannot hold all
    of it while requests to other servables wait in the broker."""
    pipeline_depth: PositiveInt = 4
    """Requests written ahead to one executor process, which runs them in order: it goes from task to task
    without waiting for the worker, at the price of a task queued behind a slow one (1: one at a time)."""
    servable_dir: Path | None = None
    batch_enabled: bool = True
    """Merge concurrent requests to batchable servable methods (``dlhub.worker.batching``)."""
    batch_max_size: PositiveInt = 64
    """Rows per merged model call, unless the method's ``method_details.batch_max_size`` says otherwise."""
    batch_max_wait_ms: NonNegativeFloat = 2.0
    """How long a request waits for others to merge with (``method_details.batch_max_wait_ms`` overrides)."""
    batch_capacity: NonNegativeInt | None = None
    """Tasks accepted beyond ``processes * tasks_per_process`` so that there is something to merge; default
    ``batch_max_size`` when batching is enabled, 0 otherwise."""
    file_fetch_max_bytes: PositiveInt = 100 * MiB
    """Largest file an input of type file may be; a bigger download is aborted and the task fails."""
    file_fetch_timeout_s: PositiveFloat = 60.0
    """Total time allowed to download one file input (connection, redirects and body)."""
    file_fetch_max_redirects: NonNegativeInt = 5
    shutdown_grace_s: NonNegativeFloat = 10.0
    """On SIGTERM the worker tells the broker it takes no new work and lets its running tasks finish for up
    to this long; the broker fails what is left with ``handler_lost`` when the worker unregisters."""
    backend: Literal["local", "parsl"] = "local"
    """Run tasks in this worker's own executor processes (``processes`` of them) or through Parsl
    (``[worker.parsl]``)."""
    parsl: ParslConfig = Field(default_factory=ParslConfig)
    replicas: list[ReplicaConfig] = Field(default_factory=list)
    """``[[worker.replicas]]``: per-servable dedicated workers that ``dlhub up`` starts (read by the launcher
    only; ``dlhub up --replicas owner/name=N`` adds to these)."""


class S3Config(BaseModel):
    """How the builder reaches S3 (or an S3-compatible store) for ``s3://bucket/key`` components.

    Credentials left unset fall back to boto3's own chain (environment, shared files, instance role) unless
    ``anonymous`` is set; the secret key and session token are secrets, never logged or shown in a repr."""

    endpoint_url: str | None = None
    """An S3-compatible store (``http://127.0.0.1:9000``); default AWS S3."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    anonymous: bool = False
    """Unsigned requests (public buckets): no credentials are looked for or sent."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """Bucket in the path or in the host name; most S3-compatible stores need ``path``."""


class BuilderConfig(BaseModel):
    servable_dir: Path | None = None
    max_package_bytes: PositiveInt = 100 * MiB
    max_extracted_bytes: PositiveInt = 1024 * MiB
    max_files: PositiveInt = 10_000
    max_url_component_bytes: PositiveInt = 1024 * MiB
    """One component named by URL (``dlhub.url_files``): larger is refused, from its announced size when the
    server announces one, else as soon as the bytes received pass it. The whole version (package and URL
    components) is also held to ``max_extracted_bytes``."""
    max_url_components: PositiveInt = 100
    url_fetch_timeout_s: PositiveFloat = 300.0
    """The whole transfer of one URL component, from connecting to its last byte."""
    url_connect_timeout_s: PositiveFloat = 10.0
    url_max_redirects: NonNegativeInt = 5
    """HTTP(S) redirects followed per component; each target must be HTTP(S) again."""
    s3: S3Config = Field(default_factory=S3Config)
    preview_rows: NonNegativeInt = 10
    """Datasets: how many rows of each tabular file (CSV, TSV, JSON lines) the preview shows."""
    preview_max_bytes: PositiveInt = 16 * 1024
    """The most one file's preview may take (as JSON); rows are dropped from the end beyond it."""
    preview_max_cell_chars: PositiveInt = 200
    preview_max_columns: PositiveInt = 64
    preview_max_files: NonNegativeInt = 8
    """At most this many tabular files of a dataset are previewed (the first by path)."""
    preview_read_bytes: PositiveInt = 1 * MiB
    """How much of a file the preview reads at most: a preview never scans a whole large file."""


EnvironmentBackend = Literal["venv", "docker"]


def _all_backends() -> list[EnvironmentBackend]:
    return ["venv", "docker"]


class EnvironmentsConfig(BaseModel):
    """Per-servable environments (``dlhub.common.environments``): which servables get one, how they are built
    (builder) and where they run (worker).

    The rule (``mode = "auto"``): a servable that declares no dependencies (no ``dlhub.dependencies.python``
    entry, no requirements.txt/pyproject.toml, no ``python_version``), or whose declared dependencies are all
    installed at exactly the declared versions in the DLHub server's own environment, runs in the shared
    worker environment as before (no build, no extra process, same latency); any other declaration gets its
    own locked environment. ``"always"`` gives every servable its own environment; ``"shared"`` never does
    (an explicit deployment choice for trusted, pre-provisioned workers: the declaration is still recorded in
    the version's ``environment.json`` with the reason, and logged, never silently dropped).
    """

    mode: Literal["auto", "always", "shared"] = "auto"
    backend: EnvironmentBackend = "venv"
    """The deployment's backend for new environments; a servable may ask for another one with
    ``dlhub.environment.backend`` when it is in ``allowed_backends``."""
    allowed_backends: list[EnvironmentBackend] = Field(default_factory=_all_backends)
    dir: Path | None = None
    """Environment store (content-addressed by backend, Python version and lock); default
    ``<data_dir>/envs``."""
    interpreters: dict[str, str] = Field(default_factory=dict)
    """Python ``"X.Y"`` -> interpreter path available to venv environments; default: the DLHub interpreter
    only. A requested version not listed fails the build."""
    installer: Literal["uv", "pip"] = "uv"
    """uv locks and installs; ``pip`` installs an existing lock only (uv is still needed to lock)."""
    index_url: str | None = None
    """Package index; default pip's configuration (``PIP_INDEX_URL``, pip.conf), else PyPI."""
    extra_index_urls: list[str] = Field(default_factory=list)
    ca_bundle: Path | None = None
    """Extra CA certificates for the index (proxies); default ``SSL_CERT_FILE`` or pip.conf's ``cert``."""
    build_timeout_s: PositiveFloat = 900.0
    """Whole environment build (lock + install, or image build); the registry's ``sync_timeout_s`` also
    bounds a publish."""
    max_env_bytes: PositiveInt = 4096 * MiB
    """Disk quota of one environment (venv folder, or image size)."""
    processes_per_environment: PositiveInt = 1
    """Executor processes a worker keeps warm for each environment it serves."""
    max_warm_environments: PositiveInt = 8
    """Environment pools a worker keeps warm at once (a venv environment, or a docker environment for one
    version); starting another one first stops the least recently used idle one. A pool still running a task
    is never stopped, so the bound may be passed briefly while every warm pool is busy."""
    environment_idle_s: PositiveFloat = 600.0
    """A warm environment pool that has run no task for this long is stopped (started again on the next
    request)."""
    docker_url: str | None = None
    """Docker engine; default ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``) or the local
    socket."""
    docker_tls_cert_dir: Path | None = None
    """Mutual TLS to an engine at a ``tcp://`` ``docker_url`` (dockerd ``--tlsverify``): a directory holding
    ``ca.pem`` (the engine's CA), ``cert.pem`` and ``key.pem`` (this service's client certificate). Engine
    access is root-equivalent on the engine's host: give it only to the builder and workers."""
    docker_transfer: Literal["mount", "copy"] = "mount"
    """How an executor container gets its files. ``mount``: the engine bind-mounts the worker's runtime and
    version directories and the worker's socket directory (the engine must see this worker's filesystem: the
    fast path). ``copy``: for a worker in a container or on another host than its engine, each executor
    container gets the runtime and its one version directory copied in through the engine API (into
    anonymous volumes removed with it) and speaks over the engine's attach stream, relayed by a small
    process of the worker; slower to start (a copy per executor) and ~0.5 ms more per request."""
    docker_base_image: str = "dlhub-base:bookworm"
    docker_base_python: str = "3.11"
    """The base image's ``python3`` version (a servable asking for another one fails to build)."""
    docker_registry: str | None = None
    """Container registry (``host[:port][/prefix]``) the builder pushes every built image to (tag
    ``<registry>/dlhub-env:<environment id>``; the pushed reference and its repository digest are recorded in
    ``environment.json``); a worker lacking an image pulls it from there by that digest before rebuilding it
    from its lock. ``None``: images stay in the local engine and workers rebuild missing ones."""
    docker_registry_username: str | None = None
    """Registry credentials (optional; with ``docker_registry_password``). Without them the engine's own
    credentials, if any, apply."""
    docker_registry_password: SecretStr | None = None
    """A secret: never logged or shown in a settings repr."""
    docker_build_network: Literal["host", "none"] = "host"
    """Network of the image build (pip reaches the index); never a bridge."""
    docker_tmpfs_bytes: PositiveInt = 256 * MiB
    docker_user: str = "65534:65534"
    docker_memory_bytes: PositiveInt = 2048 * MiB
    """Memory limit of one executor container (cgroup; swap is not allowed beyond it)."""
    docker_cpus: PositiveFloat = 1.0
    """CPU limit of one executor container (``docker run --cpus``)."""
    docker_pids_limit: PositiveInt = 256
    """Processes and threads one executor container may have."""


class SearchConfig(BaseModel):
    """The search backend: embedded SQLite FTS5 (default) or Elasticsearch 8.

    Elasticsearch credentials (``elasticsearch_password``, ``elasticsearch_api_key``) are secrets: they are
    never logged or shown in a settings repr. Credentials in ``elasticsearch_url`` are stripped from logs.
    """

    backend: Literal["sqlite", "elasticsearch"] = "sqlite"
    sqlite_path: Path | None = None
    default_page_size: PositiveInt = 20
    max_page_size: PositiveInt = 1000
    elasticsearch_url: str = "http://127.0.0.1:9200"
    elasticsearch_index_alias: str = Field(default="dlhub-servables", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    elasticsearch_request_timeout_s: PositiveFloat = 10.0
    elasticsearch_startup_timeout_s: NonNegativeFloat = 30.0
    elasticsearch_refresh: Literal["wait_for", "true", "false"] = "wait_for"
    elasticsearch_number_of_shards: PositiveInt = 1
    elasticsearch_number_of_replicas: NonNegativeInt = 0
    elasticsearch_username: str | None = None
    elasticsearch_password: SecretStr | None = None
    elasticsearch_api_key: SecretStr | None = None
    elasticsearch_ca_certs: Path | None = None
    elasticsearch_verify_certs: bool = True


class MetricsConfig(BaseModel):
    """Prometheus metrics (``dlhub.common.metrics``). The registry serves them on ``GET /metrics`` of its own
    HTTP port (outside ``/api/v1``); every other service serves them on its own HTTP port, ``<service>_port``
    on ``host``.

    Port rule: a port of 0 means an ephemeral port chosen by the OS (no collision between the several workers
    of ``dlhub up``); the bound port is logged ("metrics endpoint") and written to
    ``<data_dir>/run/metrics/<service>-<pid>.port`` so that a scraper or a test can find it. Give a fixed port
    per service in a deployment where one process of each kind runs on a host (the compose stack).
    """

    enabled: bool = True
    """Off: ``/metrics`` answers 404, no metrics port is opened, the registry records nothing per request."""
    host: str = "127.0.0.1"
    broker_port: int = Field(default=0, ge=0, le=65535)
    worker_port: int = Field(default=0, ge=0, le=65535)
    builder_port: int = Field(default=0, ge=0, le=65535)
    search_port: int = Field(default=0, ge=0, le=65535)
    broker_update_interval_s: PositiveFloat = 1.0
    """How often the broker refreshes its queue-depth and handler gauges (on a timer, never per message)."""


class LoggingConfig(BaseModel):
    format: Literal["json", "console"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class DLHubSettings(BaseSettings):
    """Configuration of the whole stack; each service reads the sections it needs."""

    model_config = SettingsConfigDict(env_prefix="DLHUB_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """uvloop roughly halves the per-request cost of the event loop; "asyncio" is the fallback where uvloop
    is not installed (it is used automatically then)."""
    bus: BusConfig = Field(default_factory=BusConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    builder: BuilderConfig = Field(default_factory=BuilderConfig)
    environments: EnvironmentsConfig = Field(default_factory=EnvironmentsConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _default_keys_dir(self) -> DLHubSettings:
        # The bus keys belong to the data directory unless configured; BusConfig alone does not know it.
        if self.bus.curve_keys_dir is None:
            self.bus.curve_keys_dir = self.data_dir / "keys"
        return self

    # Derived locations inside the one data directory, unless configured explicitly.
    @property
    def store_sqlite_path(self) -> Path:
        return self.store.sqlite_path or self.data_dir / "registry.sqlite3"

    @property
    def search_sqlite_path(self) -> Path:
        return self.search.sqlite_path or self.data_dir / "search.sqlite3"

    @property
    def servable_dir(self) -> Path:
        """Where the builder extracts packages and the workers load them from."""
        return self.builder.servable_dir or self.worker.servable_dir or self.data_dir / "servables"

    @property
    def worker_bundle_dir(self) -> Path:
        """Where a Task Manager caches the bundles it fetched, by digest."""
        return self.worker.bundle_dir or self.data_dir / "bundle-cache"

    @property
    def environments_dir(self) -> Path:
        """Where per-servable environments are built (venvs) and recorded."""
        return self.environments.dir or self.data_dir / "envs"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> DLHubSettings:
    """Load settings from keyword overrides, the environment and an optional TOML file."""
    path = config_file or os.environ.get("DLHUB_CONFIG")

    class _FileSettings(DLHubSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            return tuple(sources)

    return _FileSettings(**overrides)
