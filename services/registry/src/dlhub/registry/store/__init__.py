"""Where the registry keeps versions, tasks and tokens: the ``MetadataStore`` interface and its records
(``interface``), the SQLite and MongoDB backends, the version cache, and ``factory.make_store``.

The interface is re-exported here because every domain module speaks it; backends are imported by name.
"""

from dlhub.registry.store.interface import (
    OPEN_TASK_STATES,
    AuditQuery,
    AuditRecord,
    BuildStateValue,
    MetadataStore,
    PackageFormat,
    RegistryInstance,
    StoredBuild,
    StoredVerification,
    TaskKind,
    TaskRecord,
    TaskState,
    TokenRecord,
    VectorCheck,
    VersionRecord,
    VersionStatus,
)

__all__ = [
    "OPEN_TASK_STATES",
    "AuditQuery",
    "AuditRecord",
    "BuildStateValue",
    "MetadataStore",
    "PackageFormat",
    "RegistryInstance",
    "StoredBuild",
    "StoredVerification",
    "TaskKind",
    "TaskRecord",
    "TaskState",
    "TokenRecord",
    "VectorCheck",
    "VersionRecord",
    "VersionStatus",
]
