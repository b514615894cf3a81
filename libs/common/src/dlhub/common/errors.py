"""Error types shared by all services.

Every error has a stable ``code`` (the wire name clients match on) and an HTTP status, so that a failure
raised deep inside a service reaches the REST caller with the same type it was raised with.
"""

from __future__ import annotations

from typing import ClassVar


class DLHubError(Exception):
    """Base of every typed DLHub error."""

    code: ClassVar[str] = "dlhub_error"
    http_status: ClassVar[int] = 500
    retry_after_s: float | None = None
    """Set (per class or per instance) on errors a caller should retry later: the REST answer carries
    ``Retry-After``, in whole seconds rounded up."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"type": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidMessage(DLHubError):
    """A frame or message on the bus could not be decoded or violates a limit."""

    code = "invalid_message"
    http_status = 400


class MessageTooLarge(InvalidMessage):
    code = "message_too_large"
    http_status = 413


class ValidationFailed(DLHubError):
    """Input or metadata failed validation; ``field`` names the offending path."""

    code = "validation_error"
    http_status = 400


class InvalidPath(ValidationFailed):
    """A file path in a request is unsafe or malformed (``..``, absolute, NUL, encoded slash, a link that
    leaves the package)."""

    code = "invalid_path"


class RangeNotSatisfiable(DLHubError):
    """A ``Range`` request starts past the end of the file (the answer says its size in ``Content-Range``)."""

    code = "range_not_satisfiable"
    http_status = 416


class NotFound(DLHubError):
    code = "not_found"
    http_status = 404


class Conflict(DLHubError):
    code = "conflict"
    http_status = 409


class Gone(DLHubError):
    """The resource existed and was deleted; only a tombstone remains."""

    code = "gone"
    http_status = 410


class Unauthorized(DLHubError):
    code = "unauthorized"
    http_status = 401


class AuthUnavailable(DLHubError):
    """The identity provider (Globus Auth) cannot be reached or refused to answer; try again."""

    code = "auth_unavailable"
    http_status = 503


class RateLimited(DLHubError):
    """Too many requests from one identity; ``retry_after_s`` says when the next one will be accepted."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Forbidden(DLHubError):
    code = "forbidden"
    http_status = 403


class PayloadTooLarge(DLHubError):
    code = "payload_too_large"
    http_status = 413


class UnsafePackage(DLHubError):
    """An uploaded archive tried to write outside its directory or held a forbidden member."""

    code = "unsafe_package"
    http_status = 400


class BuildFailed(DLHubError):
    code = "build_failed"
    http_status = 422


class RegistryError(BuildFailed):
    """The container registry refused or could not be reached (push or pull); the message names the registry
    and carries its own answer."""

    code = "registry_error"
    http_status = 502


class ChecksumMismatch(BuildFailed):
    """A component fetched from a URL does not have the sha256 its publication declares; the message names
    the file and both digests."""

    code = "checksum_mismatch"
    http_status = 422


class UrlFetchFailed(BuildFailed):
    """A component named by URL could not be fetched: refused, not found, too slow, too many redirects."""

    code = "url_fetch_failed"
    http_status = 502


class EnvironmentUnavailable(DLHubError):
    """The servable's environment cannot run here (no Docker engine, a missing interpreter, a failed
    rebuild from its lock)."""

    code = "environment_unavailable"
    http_status = 503


class PackageUnavailable(DLHubError):
    """A Task Manager without a servable version's files could not fetch its bundle from the registry
    (unreachable, unknown digest, too large, or no ``worker.registry_url`` configured)."""

    code = "package_unavailable"
    http_status = 503


class PackageTampered(DLHubError):
    """A bundle fetched by a Task Manager does not have the sha256 digest the registry recorded at build
    time: refused, and nothing of it is kept."""

    code = "package_tampered"
    http_status = 502


class ServableNotReady(DLHubError):
    code = "servable_not_ready"
    http_status = 409


class TaskTimeout(DLHubError):
    """The task did not finish before its deadline."""

    code = "task_timeout"
    http_status = 504


class NoHandler(DLHubError):
    """No service or worker is registered for the task's topic."""

    code = "no_handler"
    http_status = 503


class HandlerLost(DLHubError):
    """The handler running the task stopped heartbeating; the task's outcome is unknown."""

    code = "handler_lost"
    http_status = 502


class WorkerLost(HandlerLost):
    """The OS process executing the servable died while running the task."""

    code = "worker_lost"


class TaskNotStarted(DLHubError):
    """A draining worker hands back a task it had not started (queued inside it): the broker routes it
    again. Only a handler the broker knows to be draining is believed; it never reaches a client otherwise."""

    code = "not_started"
    http_status = 503


class BrokerUnavailable(DLHubError):
    code = "broker_unavailable"
    http_status = 503
    retry_after_s = 1


class QueueFull(DLHubError):
    """A bounded queue is full (the broker's for the task's topic, or the registry's calls in flight): the
    task was refused before it was accepted, so it is safe to submit again after ``Retry-After``."""

    code = "queue_full"
    http_status = 503
    retry_after_s = 1


class ShuttingDown(DLHubError):
    """The service is draining before it stops (SIGTERM): the request was refused before it was accepted."""

    code = "shutting_down"
    http_status = 503
    retry_after_s = 1


class RegistryRestarted(DLHubError):
    """The registry that accepted the task restarted and the broker no longer holds the task or its result."""

    code = "registry_restarted"
    http_status = 503


class RegistryLost(DLHubError):
    """The registry that accepted the task stopped heartbeating; another took the task over, but the broker no
    longer held it or its result (a build: its version was no longer building for it)."""

    code = "registry_lost"
    http_status = 503


class BrokerRestarted(DLHubError):
    """The broker restarted while the task was in flight; the task and its outcome were lost with it."""

    code = "broker_restarted"
    http_status = 503


class DeadlineExceeded(DLHubError):
    """The task was still unfinished well past its timeout (e.g. the registry that accepted it is gone)."""

    code = "deadline_exceeded"
    http_status = 504


class TaskCancelled(DLHubError):
    """The submitter cancelled the task (a dataset job); what it had done is kept."""

    code = "cancelled"
    http_status = 409


class StoreUnavailable(DLHubError):
    """The registry's metadata store (e.g. the MongoDB server) cannot be reached right now."""

    code = "store_unavailable"
    http_status = 503


class StorageFull(DLHubError):
    """The disk holding the data directory (or the metadata store) is full: nothing was written; the request
    can be retried once space is freed."""

    code = "storage_full"
    http_status = 507


class ServableError(DLHubError):
    """The servable itself raised; ``exception_type`` carries the model's own exception class name."""

    code = "servable_error"
    http_status = 500


ERRORS_BY_CODE: dict[str, type[DLHubError]] = {
    cls.code: cls
    for cls in (
        DLHubError,
        InvalidMessage,
        MessageTooLarge,
        ValidationFailed,
        InvalidPath,
        RangeNotSatisfiable,
        NotFound,
        Conflict,
        Gone,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsafePackage,
        BuildFailed,
        RegistryError,
        ChecksumMismatch,
        UrlFetchFailed,
        EnvironmentUnavailable,
        PackageUnavailable,
        PackageTampered,
        ServableNotReady,
        TaskTimeout,
        NoHandler,
        HandlerLost,
        WorkerLost,
        TaskNotStarted,
        BrokerUnavailable,
        RegistryRestarted,
        RegistryLost,
        BrokerRestarted,
        DeadlineExceeded,
        TaskCancelled,
        QueueFull,
        ShuttingDown,
        StoreUnavailable,
        StorageFull,
        ServableError,
    )
}


def error_class(code: str) -> type[DLHubError]:
    """Map a wire error code back to its class (unknown codes become the base class)."""
    return ERRORS_BY_CODE.get(code, DLHubError)
