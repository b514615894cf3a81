"""The typed HTTP contract: query parameters, request bodies and responses as msgspec structs.

Handlers parse into and answer with these; ``openapi`` generates the document's components from them
(``msgspec.json.schema_components``), so the schema cannot drift from the code. A field that is sometimes
absent from an answer is ``X | UnsetType`` (left out when unset); fields that are always present but may
be null are ``X | None``. ``PublicationDocument`` and ``DataCite`` describe free-form JSON the registry
passes through (publication documents, DataCite records): they exist for the schema only.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from dlhub.common.ids import DEVICE_KIND_PATTERN
from dlhub.common.payloads import BuildState, FacetName, FileEntry, Kind, SortField, SortOrder, TablePreview
from dlhub.common.payloads import ReindexOutcome as ReindexOutcome
from dlhub.registry.auth import PRINCIPAL_PATTERN
from dlhub.registry.jobs import ApplyRequest as ApplyRequest
from dlhub.registry.outcomes import TaskError as TaskError
from dlhub.registry.outcomes import Timings as Timings
from dlhub.registry.pipelines import SERVABLE_REF_PATTERN
from dlhub.registry.runs import PipelineRequest as PipelineRequest
from dlhub.registry.runs import PipelineStep as PipelineStep
from dlhub.registry.runs import RunRequest as RunRequest
from dlhub.registry.runs import RunResult as RunResult
from dlhub.registry.runs import Warnings
from dlhub.registry.store import TaskKind, TaskState, VersionStatus

REF: Final = "#/components/schemas/{name}"
PAGE_SIZE_CAP: Final = 1000
"""The largest page the registry serves; ``search.max_page_size`` may lower it (never raise it)."""
MAX_OFFSET: Final = 2**31
MAX_REASON_CHARS: Final = 2000

Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Limit = Annotated[
    int, Meta(ge=1, le=PAGE_SIZE_CAP, description="Page size (default search.default_page_size)")
]
Offset = Annotated[int, Meta(ge=0, le=MAX_OFFSET, description="Number of entries to skip")]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


Document = Annotated[dict[str, Any], Meta(extra_json_schema=_ref("PublicationDocument"))]
Steps = Annotated[
    list[dict[str, Any]],
    Meta(
        description="Pipelines only: the pinned steps (servable owner/name@version, method, parameters)",
        extra_json_schema={"items": _ref("PipelineStep")},
    ),
]


# ---- errors -------------------------------------------------------------------------------------------


class ErrorDetail(Struct, kw_only=True):
    type: Annotated[str, Meta(description="Stable error code, e.g. validation_error")]
    message: str
    field: Annotated[str, Meta(description="Path of the offending field or parameter")] | UnsetType = UNSET


class Error(Struct, kw_only=True):
    error: ErrorDetail


# ---- query parameters ---------------------------------------------------------------------------------


class ServablesQuery(Struct, kw_only=True):
    owner: Annotated[str, Meta(description="Only this owner's servables")] | UnsetType = UNSET
    limit: Limit | UnsetType = UNSET
    offset: Offset = 0


# what http.query.epoch_seconds accepts, and nothing else; empty counts as absent, like every text parameter
_MOMENT: Final = {
    "anyOf": [
        {"maxLength": 0},
        {"pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
        {"format": "date", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        {
            "format": "date-time",
            "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
            r"([Zz]|[+-][0-9]{2}:[0-9]{2})?$",
        },
    ]
}


_JSON_SPACE: Final = r"[ \t\n\r]*"
_SIZE: Final = r"(?:null|0|[1-9][0-9]{0,17})"
SHAPE_PATTERN: Final = (
    rf"^{_JSON_SPACE}\[{_JSON_SPACE}(?:{_SIZE}{_JSON_SPACE}(?:,{_JSON_SPACE}{_SIZE}{_JSON_SPACE}){{0,31}})?\]"
    rf"{_JSON_SPACE}$"
)
"""A JSON array of at most 32 sizes, each null or a non-negative integer below 10**18 (``[null,4]``)."""
_SHAPE: Final = {"anyOf": [{"maxLength": 0}, {"pattern": SHAPE_PATTERN}]}


_SHAPE_RULE: Final = "matches a declared ndarray shape that accepts it (see docs/api.md)"
InputType = Annotated[
    str, Meta(description="A method's input type (ndarray, list, dict, string ...), any case")
]
InputItemType = Annotated[
    str, Meta(description="A type in the item-type chain of a method's input (lists, ndarrays), any case")
]
InputShape = Annotated[
    str,
    Meta(
        description="The shape of the input data as JSON, null for a size that varies ([null,4]): "
        + _SHAPE_RULE,
        extra_json_schema=_SHAPE,
    ),
]
OutputType = Annotated[str, Meta(description="A method's output type, any case")]
OutputItemType = Annotated[
    str, Meta(description="A type in the item-type chain of a method's output (lists, ndarrays), any case")
]
OutputShape = Annotated[
    str,
    Meta(
        description=f"The shape of the output data as JSON ([null,1]): {_SHAPE_RULE}",
        extra_json_schema=_SHAPE,
    ),
]


class SearchQueryParams(Struct, kw_only=True):
    q: Annotated[str, Meta(description="Free text (prefix matching)")] = ""
    owner: Annotated[str, Meta(description="Exact owner")] | UnsetType = UNSET
    name: Annotated[str, Meta(description="Exact name")] | UnsetType = UNSET
    domain: Annotated[str, Meta(description="Exact domain")] | UnsetType = UNSET
    author: Annotated[str, Meta(description="Exact author")] | UnsetType = UNSET
    doi: (
        Annotated[str, Meta(description="The servable's DOI or one of its related identifiers (any case)")]
        | UnsetType
    ) = UNSET
    model_type: Annotated[str, Meta(description="Exact model_type")] | UnsetType = UNSET
    servable_type: Annotated[str, Meta(description="Exact servable_type")] | UnsetType = UNSET
    kind: Annotated[Kind, Meta(description="Only servables, pipelines or datasets")] | UnsetType = UNSET
    trained_on: (
        Annotated[
            str,
            Meta(
                description="Trained on this dataset: owner/name, owner/name@version or a DOI",
                max_length=512,
            ),
        ]
        | UnsetType
    ) = UNSET
    tested_on: (
        Annotated[
            str,
            Meta(
                description="Tested on this dataset: owner/name, owner/name@version or a DOI", max_length=512
            ),
        ]
        | UnsetType
    ) = UNSET
    input_type: InputType | UnsetType = UNSET
    input_item_type: InputItemType | UnsetType = UNSET
    input_shape: InputShape | UnsetType = UNSET
    output_type: OutputType | UnsetType = UNSET
    output_item_type: OutputItemType | UnsetType = UNSET
    output_shape: OutputShape | UnsetType = UNSET
    published_from: (
        Annotated[
            str,
            Meta(
                description="Published at or after: epoch seconds, or an ISO 8601 (RFC 3339) date or "
                "date-time (UTC without an offset)",
                extra_json_schema=_MOMENT,
            ),
        ]
        | UnsetType
    ) = UNSET
    published_to: (
        Annotated[
            str,
            Meta(
                description="Published at or before (a date alone includes that whole day)",
                extra_json_schema=_MOMENT,
            ),
        ]
        | UnsetType
    ) = UNSET
    facets: Annotated[list[FacetName], Meta(description="Comma-separated facets to count")] = msgspec.field(
        default_factory=list
    )
    sort: Annotated[
        SortField, Meta(description="Order of hits (without q, relevance is publication date)")
    ] = "relevance"
    order: (
        Annotated[
            SortOrder,
            Meta(description="Direction (default desc for relevance and publication_date, asc for name)"),
        ]
        | UnsetType
    ) = UNSET
    limit: Limit | UnsetType = UNSET
    offset: Offset = 0


class CitationQuery(Struct, kw_only=True):
    format: Annotated[
        Literal["bibtex", "datacite"],
        Meta(description="bibtex (application/x-bibtex entry) or datacite (DataCite 4.x JSON); empty is 400"),
    ] = "bibtex"


class BlobUploadQuery(Struct, kw_only=True):
    filename: Annotated[str, Meta(description="File name of a raw-body upload")] | UnsetType = UNSET


class BuildQuery(Struct, kw_only=True):
    follow: Annotated[
        bool,
        Meta(
            description="Stream the record as application/x-ndjson: the record so far, then one line per "
            "event until the build is ready or failed (or registry.build_follow_timeout_s passes)"
        ),
    ] = False


class ExportQuery(Struct, kw_only=True):
    format: Annotated[
        Literal["archive", "image"],
        Meta(
            description="archive: a .tar.gz that runs with a plain Python venv (application/gzip); image: a "
            "`docker save` tarball of a self-contained image (application/x-tar, docker-environment versions "
            "only, 400 for others; 503 environment_unavailable when the registry has no Docker engine)"
        ),
    ] = "archive"


class BlobContentQuery(Struct, kw_only=True):
    expires: Annotated[int, Meta(description="Expiry, epoch seconds")]
    sig: Annotated[str, Meta(description="HMAC-SHA256 signature")]


# ---- request bodies -----------------------------------------------------------------------------------


class DeprecateRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[
        str, Meta(description="Shown in run warnings", extra_json_schema={"maxLength": 2000})
    ] = ""
    replacement: Annotated[
        str | None,
        Meta(
            description="owner/name@version to use instead (empty or null: none)",
            extra_json_schema={"pattern": f"^$|{SERVABLE_REF_PATTERN}"},
        ),
    ] = None


DeviceKind = Annotated[str, Meta(pattern=DEVICE_KIND_PATTERN)]


class ServablePlacement(Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a servable runs (docs/task-managers.md, "Placement"); every field optional."""

    site: (
        Annotated[
            str,
            Meta(min_length=1, max_length=200, description="Only Task Managers with this site (worker.site)"),
        ]
        | UnsetType
    ) = UNSET
    devices: (
        Annotated[
            dict[DeviceKind, Annotated[int, Meta(ge=1, le=64)]],
            Meta(
                min_length=1,
                max_length=8,
                description='Devices needed by kind, with how many ({"gpu": 1}); only Task Managers offering '
                "that many (worker.devices) run it",
            ),
        ]
        | UnsetType
    ) = UNSET
    replicas: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=1000,
                description="Spread over at most this many eligible Task Managers, the same ones while they "
                "stay registered (they keep its executors warm)",
            ),
        ]
        | UnsetType
    ) = UNSET


class PublicationServable(Struct, kw_only=True):
    type: Annotated[str, Meta(description="'pipeline' for a pipeline")] | UnsetType = UNSET
    steps: (
        Annotated[
            list[PipelineStep],
            Meta(max_length=64, description="Pipelines only; pinned to owner/name@version when published"),
        ]
        | UnsetType
    ) = UNSET
    placement: ServablePlacement | UnsetType = UNSET


class PublicationDocument(Struct, kw_only=True):
    """DLHub publication document (datacite, dlhub, servable sections). A pipeline has dlhub.type
    "pipeline" and servable {"type": "pipeline", "steps": [PipelineStep]} (see docs/api.md)."""

    datacite: dict[str, Any]
    dlhub: dict[str, Any]
    servable: PublicationServable | UnsetType = UNSET


class PublishRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """The multipart form of a publication: no parts but these two."""

    metadata: Annotated[Document, Meta(description="The publication document as JSON")]
    package: (
        Annotated[
            str,
            Meta(
                description="Optional archive: .tar.gz, .tgz, .tar or .zip",
                extra_json_schema={"contentMediaType": "application/octet-stream"},
            ),
        ]
        | UnsetType
    ) = UNSET


class BlobUploadForm(Struct, kw_only=True, forbid_unknown_fields=True):
    file: Annotated[str, Meta(extra_json_schema={"format": "binary"})]


# ---- responses ----------------------------------------------------------------------------------------


class PublishAccepted(Struct, kw_only=True):
    owner: str
    name: str
    version: int
    shorthand_name: str
    task_id: str
    status: VersionStatus
    status_url: str


class VersionSummary(Struct, kw_only=True):
    """Lifecycle fields of one version; the deprecation fields only when deprecated, the deletion fields
    only for tombstones, status_reason and digest only in the versions list."""

    version: int
    status: VersionStatus
    published_at: Timestamp
    deprecated: bool
    status_reason: str | UnsetType = UNSET
    digest: str | UnsetType = UNSET
    deprecation_reason: str | UnsetType = UNSET
    deprecation_replacement: Annotated[str | None, Meta(description="owner/name@version")] | UnsetType = UNSET
    deprecated_at: Timestamp | UnsetType | None = UNSET
    deleted_at: Timestamp | UnsetType | None = UNSET
    deleted_by: str | UnsetType = UNSET
    environment: (
        Annotated[str, Meta(description="Environment id the version runs in ('' for the shared one)")]
        | UnsetType
    ) = UNSET
    build_state: (
        Annotated[BuildState | None, Meta(description="State of its build (null: published before records)")]
        | UnsetType
    ) = UNSET


class Deprecation(VersionSummary, kw_only=True):
    owner: str
    name: str
    shorthand_name: str


class DatasetLink(Struct, kw_only=True):
    """A dataset a version names as its training or test data (or, for a dataset job's output, its source
    dataset and the servable that computed it: relation ``source`` / ``model``)."""

    dataset: Annotated[str, Meta(description="owner/name@version (pinned when published) or a DOI")]
    relation: Literal["training", "test", "source", "model"]
    relationType: Annotated[
        str, Meta(description="The DataCite relationType: IsDerivedFrom, References or IsCompiledBy")
    ]
    kind: Literal["dlhub", "doi"]


class DatasetUse(Struct, kw_only=True):
    """A servable that names this dataset (its newest version the caller can see that does)."""

    servable: Annotated[str, Meta(description="owner/name@version")]
    title: str
    relation: Literal["training", "test", "source", "model"]
    relationType: str
    dataset: Annotated[str, Meta(description="The reference as the servable names it")]


class VectorCheck(Struct, kw_only=True):
    index: Annotated[int, Meta(ge=0)]
    passed: bool
    message: Annotated[str, Meta(description="why the vector failed")] | UnsetType = UNSET


class LastVerification(Struct, kw_only=True):
    at: Annotated[Timestamp, Meta(description="When the vectors ran")]
    trigger: Annotated[
        Literal["publish", "verify"],
        Meta(description="publish: the check after the build; verify: POST .../verify"),
    ]
    passed: Annotated[bool, Meta(description="every vector reproduced its expected output")]
    passed_count: Annotated[int, Meta(ge=0)]
    total: Annotated[int, Meta(ge=0)]
    vectors: list[VectorCheck]


class Servable(Struct, kw_only=True):
    type: Annotated[str, Meta(description="servable, pipeline or dataset")]
    steps: Steps | UnsetType = UNSET
    owner: str
    name: str
    version: int
    shorthand_name: str
    status: VersionStatus
    status_reason: str
    digest: str
    files: list[str]
    published_at: Timestamp
    deprecated: bool
    deprecation_reason: str | None
    deprecation_replacement: str | None
    metadata: Document
    versions: list[VersionSummary]
    environment: Annotated[
        str, Meta(description="Environment id the version runs in ('' for the shared one)")
    ]
    build_state: Annotated[
        BuildState | None, Meta(description="State of its build (null: published before build records)")
    ]
    manifest: Annotated[
        list[FileEntry],
        Meta(description="Each regular file with size and sha256 (empty until built, and for tombstones)"),
    ] = msgspec.field(default_factory=list)
    datasets: Annotated[
        list[DatasetLink], Meta(description="The training and test datasets this version names")
    ] = msgspec.field(default_factory=list)
    previews: (
        Annotated[
            list[TablePreview],
            Meta(description="Datasets only: columns and first rows of their tabular files"),
        ]
        | UnsetType
    ) = UNSET
    used_by: (
        Annotated[
            list[DatasetUse],
            Meta(
                description="Datasets only: servables trained or tested on it (models trained on it), "
                "the first 100; search with trained_on/tested_on lists them all"
            ),
        ]
        | UnsetType
    ) = UNSET
    used_by_truncated: (
        Annotated[bool, Meta(description="Datasets only: more servables name it than used_by lists")]
        | UnsetType
    ) = UNSET
    last_verification: Annotated[
        LastVerification | None,
        Meta(description="The latest run of its test vectors (null: none declared, or not run since stored)"),
    ] = None
    placement: Annotated[
        ServablePlacement | None,
        Meta(description="Its servable.placement: site, devices, replicas (null: runs on any Task Manager)"),
    ] = None


class ServableSummary(Struct, kw_only=True):
    type: Annotated[str, Meta(description="servable, pipeline or dataset")]
    steps: Steps | UnsetType = UNSET
    owner: str
    name: str
    version: int
    shorthand_name: str
    status: VersionStatus
    published_at: Timestamp
    deprecated: bool
    title: str


class ServableList(Struct, kw_only=True):
    total: int
    limit: int
    offset: int
    servables: list[ServableSummary]


class VersionList(Struct, kw_only=True):
    owner: str
    name: str
    versions: list[VersionSummary]


class Deleted(Struct, kw_only=True):
    deleted: Annotated[list[int], Meta(description="Versions deleted by this request")]


class TaskAccepted(Struct, kw_only=True):
    task_id: str
    state: Literal["pending", "completed"]
    status_url: str
    cached: Annotated[bool, Meta(description="completed at once from the result cache")]
    warnings: Warnings | UnsetType = UNSET


class JobAccepted(Struct, kw_only=True):
    """The 202 of ``POST .../apply``: the job's task (kind ``job``)."""

    task_id: str
    state: Literal["pending"]
    status_url: str
    results_url: Annotated[str, Meta(description="the per-row results so far, as JSON lines")]
    dataset: Annotated[str, Meta(description="the dataset version read, owner/name@version")]
    over: Literal["rows", "files"]
    file: Annotated[str | None, Meta(description="over rows: the tabular file read")]
    files: Annotated[str | None, Meta(description="over files: the glob given (null: every file)")]
    total: Annotated[
        Annotated[int, Meta(ge=0)] | None, Meta(description="over files: how many files were selected")
    ]
    servable: Annotated[str, Meta(description="the servable or pipeline version run, owner/name@version")]
    mode: Literal["batch", "row"]
    columns: Annotated[list[str], Meta(description="over rows: the columns each row passes")]


class JobProgress(Struct, kw_only=True):
    """A dataset job's rows or files: ``done`` (with an output or a failure), ``failed``, ``total`` (null
    until counted)."""

    done: Annotated[int, Meta(ge=0)]
    total: Annotated[int, Meta(ge=0)] | None
    failed: Annotated[int, Meta(ge=0)]


class Task(Struct, kw_only=True):
    task_id: str
    kind: TaskKind
    state: TaskState
    servable: str
    created_at: Timestamp
    updated_at: Timestamp
    output: Annotated[msgspec.Raw, Meta(description="Any JSON value")] | UnsetType = UNSET
    error: TaskError | UnsetType = UNSET
    timings: Timings | UnsetType = UNSET
    progress: JobProgress | UnsetType = UNSET
    results_url: Annotated[str, Meta(description="dataset jobs: the per-row results so far")] | UnsetType = (
        UNSET
    )


class VectorReport(Struct, kw_only=True):
    index: Annotated[int, Meta(ge=0)]
    passed: bool
    message: Annotated[str, Meta(description="why the vector failed")] | UnsetType = UNSET
    timings: Timings


class VerifyReport(Struct, kw_only=True):
    servable: Annotated[str, Meta(description="owner/name@version")]
    passed: Annotated[bool, Meta(description="every test vector reproduced its expected output")]
    vectors: list[VectorReport]
    note: Annotated[str, Meta(description="'no test vectors' when the version declares none")] | UnsetType = (
        UNSET
    )


class SearchHit(Struct, kw_only=True):
    owner: str
    name: str
    version: int
    shorthand_name: str
    title: str
    description: str
    authors: list[str]
    domains: list[str]
    model_type: str
    servable_type: str
    doi: Annotated[str, Meta(description="The version's DOI ('' without one)")]
    related_identifiers: list[str]
    score: float
    kind: Annotated[str, Meta(description="servable, pipeline or dataset")] = "servable"
    columns: Annotated[list[str], Meta(description="Datasets: the column names of their previews")] = (
        msgspec.field(default_factory=list)
    )
    trained_on: Annotated[list[str], Meta(description="Link terms of its training datasets")] = msgspec.field(
        default_factory=list
    )
    tested_on: Annotated[list[str], Meta(description="Link terms of its test datasets")] = msgspec.field(
        default_factory=list
    )


class FacetCount(Struct, kw_only=True):
    value: str
    count: int


class SearchResults(Struct, kw_only=True):
    total: int
    limit: int
    offset: int
    hits: list[SearchHit]
    facets: Annotated[
        dict[str, list[FacetCount]],
        Meta(description="Requested facets: value counts over every visible match, by count then value"),
    ]


class DataCiteIdentifier(Struct, kw_only=True):
    identifier: str
    identifierType: Literal["DOI", "URL"]


class DataCiteCreator(Struct, kw_only=True):
    name: str | UnsetType = UNSET
    nameType: str | UnsetType = UNSET
    givenName: str | UnsetType = UNSET
    familyName: str | UnsetType = UNSET
    affiliation: list[str] | UnsetType = UNSET
    nameIdentifiers: list[dict[str, Any]] | UnsetType = UNSET


Objects = list[dict[str, Any]]


class DataCite(Struct, kw_only=True, rename={"schema_version": "schemaVersion"}):
    """DataCite 4.x metadata of one version (kernel-4 field names)."""

    schema_version: str | UnsetType = UNSET
    identifier: Annotated[
        DataCiteIdentifier,
        Meta(description="The DOI when the publisher supplied one, else the version's URL"),
    ]
    doi: str | UnsetType = UNSET
    state: (
        Annotated[
            Literal["registered"],
            Meta(description="Only for a deleted (withdrawn) version: resolves, no longer findable"),
        ]
        | UnsetType
    ) = UNSET
    creators: list[DataCiteCreator]
    titles: Objects
    publisher: str
    publicationYear: str
    resourceType: dict[str, Any]
    subjects: Objects | UnsetType = UNSET
    contributors: Objects | UnsetType = UNSET
    dates: Objects | UnsetType = UNSET
    alternateIdentifiers: Objects | UnsetType = UNSET
    relatedIdentifiers: Objects | UnsetType = UNSET
    version: Annotated[str, Meta(description="The registry's version number")]
    rightsList: Objects | UnsetType = UNSET
    descriptions: Objects | UnsetType = UNSET
    fundingReferences: Objects | UnsetType = UNSET
    url: Annotated[str, Meta(description="The version in the registry")]


class HandlerStats(Struct, kw_only=True):
    handler_id: str
    kind: str
    topics: list[str]
    capacity: int
    inflight: int
    draining: Annotated[bool, Meta(description="Stopping: finishes its tasks, takes no new ones")] = False
    site: Annotated[str, Meta(description="A Task Manager's site (worker.site)")] = ""
    instance_id: Annotated[str, Meta(description="A Task Manager's stable name (worker.instance_id)")] = ""
    executors: Annotated[
        list[str], Meta(description="What it can launch: local or parsl, and venv or docker environments")
    ] = msgspec.field(default_factory=list)
    serves: Annotated[list[str], Meta(description="Servable name patterns it serves (owner/name globs)")] = (
        msgspec.field(default_factory=list)
    )
    devices: Annotated[
        list[str], Meta(description="Devices a Task Manager offers servables, kind:id (gpu:0)")
    ] = msgspec.field(default_factory=list)


class BrokerStats(Struct, kw_only=True):
    handler_counts: Annotated[dict[str, int], Meta(description="Registered handlers by kind")]
    queued: int
    inflight: int
    handlers: (
        Annotated[
            list[HandlerStats],
            Meta(description="The broker's handler table; only for administrators (registry.admin_users)"),
        ]
        | UnsetType
    ) = UNSET


class RegistryPeer(Struct, kw_only=True):
    """A registry process sharing this one's store (its heartbeat, ``registry.peer_heartbeat_interval_s``)."""

    instance_id: str
    url: Annotated[str, Meta(description="Where it said it answers (registry.internal_url, else host:port)")]
    last_seen_at: Timestamp
    alive: Annotated[bool, Meta(description="Beat within registry.peer_stale_after_s of this answer")]
    answering: Annotated[bool, Meta(description="The registry that answered this request")]


class Health(Struct, kw_only=True):
    status: Literal["ok"]
    broker: BrokerStats
    registries: (
        Annotated[
            list[RegistryPeer],
            Meta(
                description="Administrators only: every registry on this store (gone ones too, alive false)"
            ),
        ]
        | UnsetType
    ) = UNSET


class Blob(Struct, kw_only=True):
    blob_id: Annotated[str, Meta(description='Pass as {"blob": blob_id} for an input of type file')]
    size: Annotated[int, Meta(description="Bytes")]
    sha256: Annotated[str, Meta(description="Hex digest of the content")]
    filename: Annotated[str, Meta(description="Sanitised upload file name (may be empty)")]
    content_type: str
    created_at: Timestamp
    expires_at: Annotated[
        str, Meta(description="Swept after this time", extra_json_schema={"format": "date-time"})
    ]


ArchiveFormat = Literal["tar", "tar.gz", "tar.bz2", "tar.xz", "zip"]
Sha256Hex = Annotated[str, Meta(pattern="^[0-9a-f]{64}$", description="Hex sha256 of the bytes")]


class PackageFile(Struct, kw_only=True):
    path: Annotated[str, Meta(description="Path inside the package ('/'-separated); GET .../files/{path}")]
    size: Annotated[int, Meta(ge=0, description="Bytes")]
    sha256: Sha256Hex
    link: (
        Annotated[str, Meta(description="A symlink: the package path it points at (size and sha256 are its)")]
        | UnsetType
    ) = UNSET


class PackageArchive(Struct, kw_only=True):
    """The package as uploaded, served as is by GET .../package."""

    sha256: Sha256Hex
    size: Annotated[int, Meta(ge=0, description="Bytes")]
    format: ArchiveFormat
    filename: Annotated[str, Meta(description="The name Content-Disposition suggests")]


class FileList(Struct, kw_only=True):
    """A version's files, each with its size and sha256 (the ETag and Repr-Digest of its download)."""

    owner: str
    name: str
    version: int
    shorthand_name: str
    package: Annotated[PackageArchive | None, Meta(description="null: published without files")]
    total_bytes: Annotated[int, Meta(ge=0, description="Sum of the listed files' sizes")]
    files: list[PackageFile]


class BuildStateChange(Struct, kw_only=True):
    state: BuildState
    at: Timestamp


class BuildRecord(Struct, kw_only=True):
    """The build of one version: its states with timestamps and its log (the resolver's and installer's
    output), capped at registry.max_build_log_bytes around a marker line."""

    servable: Annotated[str, Meta(description="owner/name@version")]
    state: BuildState
    states: list[BuildStateChange]
    environment: Annotated[str, Meta(description="Environment id ('' for the shared one or not yet known)")]
    backend: Annotated[str, Meta(description="venv or docker ('' for the shared environment)")]
    error: Annotated[str, Meta(description="Why it failed (the version's status_reason); '' otherwise")]
    log: list[str]
    dropped_lines: Annotated[int, Meta(ge=0, description="Log lines left out at the marker line")]
    updated_at: Timestamp


class BuildEvent(Struct, kw_only=True, forbid_unknown_fields=True):
    """One line of a followed build after the record: a state change, or new log lines."""

    state: BuildState | UnsetType = UNSET
    at: Timestamp | UnsetType = UNSET
    error: Annotated[str, Meta(description="With state failed")] | UnsetType = UNSET
    lines: list[str] | UnsetType = UNSET


class BlobDeleted(Struct, kw_only=True):
    deleted: Annotated[str, Meta(description="The blob id")]


# ---- identity, access and audit -----------------------------------------------------------------------

Principal = Annotated[
    str,
    Meta(
        description="'public', 'user:<name>', 'group:<id>' or 'identity:<uuid>' (Globus URNs accepted)",
        max_length=200,
        pattern=PRINCIPAL_PATTERN,
    ),
]


class WhoAmI(Struct, kw_only=True):
    user: str | None
    provider: Annotated[str, Meta(description="local or globus; 'anonymous' without a token")]
    identities: Annotated[list[str], Meta(description="Principals matched against visible_to/maintainers")]
    groups: list[str]
    admin: bool
    token: Annotated[str | None, Meta(description="The last characters of the token's hash, for support")]


class AuthInfo(Struct, kw_only=True):
    """How to sign in to this registry (``dlhub login`` reads it)."""

    provider: Literal["local", "globus"]
    native_client_id: str | None = None
    scope: str | None = None
    authorize_url: (
        Annotated[str, Meta(description="Globus: the OAuth2 authorization endpoint (code flow with PKCE)")]
        | None
    ) = None
    token_url: Annotated[str, Meta(description="Globus: the OAuth2 token endpoint")] | None = None


class AccessRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """Change who may see or manage a servable (every version). Omitted lists stay as they are."""

    visible_to: Annotated[list[Principal], Meta(max_length=1000)] | None = None
    add: Annotated[list[Principal], Meta(max_length=1000, description="Principals to add to visible_to")] = []
    remove: Annotated[
        list[Principal], Meta(max_length=1000, description="Principals to remove from visible_to")
    ] = []
    maintainers: Annotated[list[Principal], Meta(max_length=1000)] | None = None


class Access(Struct, kw_only=True):
    owner: str
    name: str
    shorthand_name: str
    visible_to: list[str]
    maintainers: list[str]


class AuditQueryParams(Struct, kw_only=True):
    actor: Annotated[str, Meta(description="Only this user's changes ('-': the operator's CLI)")] = ""
    action: Annotated[str, Meta(description="Only this action, e.g. visibility or token.create")] = ""
    target: Annotated[str, Meta(description="Only this target: owner/name, owner/name@v, user:<name>")] = ""
    since: Annotated[
        str,
        Meta(
            description="At or after: epoch seconds, or an ISO 8601 (RFC 3339) date or date-time",
            extra_json_schema=_MOMENT,
        ),
    ] = ""
    until: Annotated[
        str,
        Meta(
            description="At or before (a date alone includes that whole day)",
            extra_json_schema=_MOMENT,
        ),
    ] = ""
    limit: Annotated[int, Meta(ge=1, le=PAGE_SIZE_CAP, description="At most this many events")] = 100


class AuditEvent(Struct, kw_only=True):
    at: Timestamp
    actor: str
    action: Annotated[
        str, Meta(description="publish, update, delete, deprecate, undeprecate, visibility, token.*")
    ]
    target: str
    detail: dict[str, Any]


class AuditLog(Struct, kw_only=True):
    events: list[AuditEvent]


SCHEMA_TYPES: Final[tuple[type[Struct], ...]] = (
    Error,
    PublicationDocument,
    PublishRequest,
    BlobUploadForm,
    DeprecateRequest,
    RunRequest,
    PipelineRequest,
    PipelineStep,
    PublishAccepted,
    VersionSummary,
    Deprecation,
    Servable,
    ServableList,
    VersionList,
    Deleted,
    RunResult,
    TaskAccepted,
    ApplyRequest,
    JobAccepted,
    Task,
    TaskError,
    Timings,
    VerifyReport,
    SearchResults,
    DataCite,
    ReindexOutcome,
    Health,
    Blob,
    BlobDeleted,
    FileList,
    BuildRecord,
    BuildEvent,
    WhoAmI,
    AuthInfo,
    AccessRequest,
    Access,
    AuditLog,
)
"""Every struct the document names; the rest (hits, facets, handler stats ...) come in as their parts."""
QUERY_TYPES: Final[tuple[type[Struct], ...]] = (
    ServablesQuery,
    SearchQueryParams,
    CitationQuery,
    BlobUploadQuery,
    BlobContentQuery,
    BuildQuery,
    ExportQuery,
    AuditQueryParams,
)
