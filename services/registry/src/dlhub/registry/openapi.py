"""The OpenAPI 3.1 description of the REST API (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _json_content(schema)
    return out


def _error(description: str) -> dict[str, Any]:
    return _response(description, _ref("Error"))


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input (the error names the field)",
        401: "Missing, invalid or expired token",
        403: "Not the owner",
        404: "Unknown or invisible resource",
        410: "Deleted: the version (or every version) is a tombstone (error type gone)",
        409: "The servable has no ready version",
        413: "Request body too large",
        503: "Broker or service unavailable",
    }
    return {str(code): _error(text[code]) for code in codes}


_WARNINGS = {
    "type": "array",
    "items": {"type": "string"},
    "description": "Present when a version run is deprecated: '<owner>/<name>@<v> is deprecated: <reason>'",
}
_DEPRECATION_FIELDS: dict[str, Any] = {
    "deprecated": {"type": "boolean"},
    "deprecation_reason": {"type": ["string", "null"]},
    "deprecation_replacement": {"type": ["string", "null"], "description": "owner/name@version"},
    "deprecated_at": {"type": ["string", "null"], "format": "date-time"},
}
_KIND_FIELDS: dict[str, Any] = {
    "type": {"type": "string", "enum": ["servable", "pipeline", "dataset"]},
    "steps": {
        "type": "array",
        "items": _ref("PipelineStep"),
        "description": "Pipelines only: the pinned steps (servable owner/name@version, method, parameters)",
    },
}
_TOMBSTONE_FIELDS: dict[str, Any] = {
    "deleted_at": {"type": ["string", "null"], "format": "date-time", "description": "tombstones only"},
    "deleted_by": {"type": "string", "description": "tombstones only"},
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


OWNER = _param("owner", "path", {"type": "string"}, "Owner (user name) of the servable")
NAME = _param("name", "path", {"type": "string"}, "Servable name (dlhub.name)")
VERSION = _param("version", "path", {"type": "integer", "minimum": 1}, "Version number")
LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1}, "Page size")
OFFSET = _param("offset", "query", {"type": "integer", "minimum": 0}, "Number of entries to skip")

TIMINGS = {
    "type": "object",
    "properties": {
        k: {"type": "number"} for k in ("inference_ms", "invocation_ms", "queue_ms", "request_ms")
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string", "description": "Stable error code, e.g. validation_error"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "Path of the offending field"},
                },
            }
        },
    },
    "TaskError": {
        "type": "object",
        "required": ["type", "message"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "exception_type": {"type": "string"},
            "traceback": {"type": "string"},
            "step": {"type": "integer"},
            "topic": {"type": "string"},
        },
    },
    "Timings": TIMINGS,
    "PublicationDocument": {
        "type": "object",
        "description": "DLHub publication document (datacite, dlhub, servable sections). A pipeline has "
        'dlhub.type "pipeline" and servable {"type": "pipeline", "steps": [PipelineStep]} (see docs/api.md).',
        "required": ["datacite", "dlhub"],
        "properties": {
            "datacite": {"type": "object"},
            "dlhub": {"type": "object"},
            "servable": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "description": "'pipeline' for a pipeline"},
                    "steps": {
                        "type": "array",
                        "items": _ref("PipelineStep"),
                        "maxItems": 64,
                        "description": "Pipelines only; pinned to owner/name@version when published",
                    },
                },
            },
        },
    },
    "PipelineStep": {
        "type": "object",
        "required": ["servable"],
        "properties": {
            "servable": {"type": "string", "description": "owner/name or owner/name@version"},
            "method": {"type": "string", "default": "run"},
            "parameters": {"type": "object"},
        },
    },
    "PublishRequest": {
        "type": "object",
        "required": ["metadata"],
        "properties": {
            "metadata": {"type": "string", "description": "The publication document as JSON"},
            "package": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "Optional archive: .tar.gz, .tgz, .tar or .zip",
            },
        },
    },
    "PublishAccepted": {
        "type": "object",
        "required": ["owner", "name", "version", "shorthand_name", "task_id", "status"],
        "properties": {
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "shorthand_name": {"type": "string"},
            "task_id": {"type": "string"},
            "status": {"type": "string", "enum": ["building"]},
            "status_url": {"type": "string"},
        },
    },
    "VersionStatus": {"type": "string", "enum": ["building", "ready", "failed", "deleted"]},
    "VersionSummary": {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            "status": _ref("VersionStatus"),
            "status_reason": {"type": "string"},
            "digest": {"type": "string"},
            "published_at": {"type": "string", "format": "date-time"},
            **_DEPRECATION_FIELDS,
            **_TOMBSTONE_FIELDS,
        },
    },
    "DeprecateRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {"type": "string", "maxLength": 2000, "description": "Shown in run warnings"},
            "replacement": {"type": ["string", "null"], "description": "owner/name@version to use instead"},
        },
    },
    "Deprecation": {
        "type": "object",
        "required": ["owner", "name", "version", "deprecated"],
        "properties": {
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "shorthand_name": {"type": "string"},
            "version": {"type": "integer"},
            "status": _ref("VersionStatus"),
            "published_at": {"type": "string", "format": "date-time"},
            **_DEPRECATION_FIELDS,
        },
    },
    "Servable": {
        "type": "object",
        "required": ["owner", "name", "version", "shorthand_name", "status", "metadata", "versions"],
        "properties": {
            **_KIND_FIELDS,
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "shorthand_name": {"type": "string"},
            "status": _ref("VersionStatus"),
            "status_reason": {"type": "string"},
            "digest": {"type": "string"},
            "files": {"type": "array", "items": {"type": "string"}},
            "published_at": {"type": "string", "format": "date-time"},
            "deprecated": {"type": "boolean"},
            "deprecation_reason": {"type": ["string", "null"]},
            "deprecation_replacement": {"type": ["string", "null"]},
            "metadata": _ref("PublicationDocument"),
            "versions": {"type": "array", "items": _ref("VersionSummary")},
        },
    },
    "ServableList": {
        "type": "object",
        "properties": {
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "servables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        **_KIND_FIELDS,
                        "owner": {"type": "string"},
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "shorthand_name": {"type": "string"},
                        "status": _ref("VersionStatus"),
                        "published_at": {"type": "string", "format": "date-time"},
                        "deprecated": {"type": "boolean"},
                        "title": {"type": "string"},
                    },
                },
            },
        },
    },
    "VersionList": {
        "type": "object",
        "properties": {
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "versions": {"type": "array", "items": _ref("VersionSummary")},
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {"deleted": {"type": "array", "items": {"type": "integer"}}},
    },
    "RunRequest": {
        "type": "object",
        "properties": {
            "inputs": {"description": "Any JSON value"},
            "parameters": {"type": "object"},
            "method": {"type": "string", "default": "run"},
            "asynchronous": {"type": "boolean", "default": False},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "memoize": {
                "type": "boolean",
                "default": True,
                "description": "false: skip the result cache lookup (the fresh result is still stored)",
            },
        },
    },
    "RunResult": {
        "type": "object",
        "required": ["task_id", "state", "timings", "servable"],
        "properties": {
            "task_id": {"type": "string"},
            "state": {"type": "string", "enum": ["completed", "failed"]},
            "output": {"description": "Any JSON value"},
            "error": _ref("TaskError"),
            "timings": _ref("Timings"),
            "servable": {
                "type": "string",
                "description": "owner/name@version (a published pipeline's own; comma-separated steps for "
                "/pipelines/run)",
            },
            "cached": {"type": "boolean", "description": "answered from the result cache (memoization)"},
            "warnings": _WARNINGS,
        },
    },
    "VerifyReport": {
        "type": "object",
        "required": ["servable", "passed", "vectors"],
        "properties": {
            "servable": {"type": "string", "description": "owner/name@version"},
            "passed": {"type": "boolean", "description": "every test vector reproduced its expected output"},
            "vectors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "passed", "timings"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "passed": {"type": "boolean"},
                        "message": {"type": "string", "description": "why the vector failed"},
                        "timings": _ref("Timings"),
                    },
                },
            },
            "note": {"type": "string", "description": "'no test vectors' when the version declares none"},
        },
    },
    "TaskAccepted": {
        "type": "object",
        "required": ["task_id", "state", "status_url"],
        "properties": {
            "task_id": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "completed"]},
            "status_url": {"type": "string"},
            "cached": {"type": "boolean", "description": "completed at once from the result cache"},
            "warnings": _WARNINGS,
        },
    },
    "PipelineRequest": {
        "type": "object",
        "required": ["steps"],
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": _ref("PipelineStep"),
            },
            "inputs": {"description": "Any JSON value"},
            "asynchronous": {"type": "boolean", "default": False},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "memoize": {
                "type": "boolean",
                "default": True,
                "description": "false: skip the result cache lookup (the fresh result is still stored)",
            },
        },
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "kind", "state", "servable", "created_at", "updated_at"],
        "properties": {
            "task_id": {"type": "string"},
            "kind": {"type": "string", "enum": ["run", "build"]},
            "state": {"type": "string", "enum": ["pending", "running", "completed", "failed"]},
            "servable": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "output": {"description": "Any JSON value"},
            "error": _ref("TaskError"),
            "timings": _ref("Timings"),
        },
    },
    "SearchResults": {
        "type": "object",
        "required": ["total", "limit", "offset", "hits"],
        "properties": {
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "hits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "owner": {"type": "string"},
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "shorthand_name": {"type": "string"},
                        "title": {"type": "string"},
                        "description": {"type": "string"},
                        "authors": {"type": "array", "items": {"type": "string"}},
                        "domains": {"type": "array", "items": {"type": "string"}},
                        "model_type": {"type": "string"},
                        "servable_type": {"type": "string"},
                        "doi": {"type": "string", "description": "The version's DOI ('' without one)"},
                        "related_identifiers": {"type": "array", "items": {"type": "string"}},
                        "score": {"type": "number"},
                    },
                },
            },
            "facets": {
                "type": "object",
                "description": "Requested facets: value counts over every visible match, by count then value",
                "additionalProperties": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["value", "count"],
                        "properties": {"value": {"type": "string"}, "count": {"type": "integer"}},
                    },
                },
            },
        },
    },
    "DataCite": {
        "type": "object",
        "description": "DataCite 4.x metadata of one version (kernel-4 field names)",
        "required": [
            "identifier",
            "creators",
            "titles",
            "publisher",
            "publicationYear",
            "resourceType",
            "version",
            "url",
        ],
        "properties": {
            "schemaVersion": {"type": "string"},
            "identifier": {
                "type": "object",
                "description": "The DOI when the publisher supplied one, else the version's URL",
                "required": ["identifier", "identifierType"],
                "properties": {
                    "identifier": {"type": "string"},
                    "identifierType": {"type": "string", "enum": ["DOI", "URL"]},
                },
            },
            "doi": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["registered"],
                "description": "Only for a deleted (withdrawn) version: resolves, no longer findable",
            },
            "creators": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "nameType": {"type": "string"},
                        "givenName": {"type": "string"},
                        "familyName": {"type": "string"},
                        "affiliation": {"type": "array", "items": {"type": "string"}},
                        "nameIdentifiers": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
            "titles": {"type": "array", "items": {"type": "object"}},
            "publisher": {"type": "string"},
            "publicationYear": {"type": "string"},
            "resourceType": {"type": "object"},
            "subjects": {"type": "array", "items": {"type": "object"}},
            "contributors": {"type": "array", "items": {"type": "object"}},
            "dates": {"type": "array", "items": {"type": "object"}},
            "alternateIdentifiers": {"type": "array", "items": {"type": "object"}},
            "relatedIdentifiers": {"type": "array", "items": {"type": "object"}},
            "version": {"type": "string", "description": "The registry's version number"},
            "rightsList": {"type": "array", "items": {"type": "object"}},
            "descriptions": {"type": "array", "items": {"type": "object"}},
            "fundingReferences": {"type": "array", "items": {"type": "object"}},
            "url": {"type": "string", "description": "The version in the registry"},
        },
    },
    "ReindexOutcome": {
        "type": "object",
        "required": ["documents", "index"],
        "properties": {
            "documents": {"type": "integer", "description": "Documents in the new index"},
            "index": {"type": "string", "description": "The index now serving queries"},
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "broker": {
                "type": "object",
                "properties": {
                    "handlers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "handler_id": {"type": "string"},
                                "kind": {"type": "string"},
                                "topics": {"type": "array", "items": {"type": "string"}},
                                "capacity": {"type": "integer"},
                                "inflight": {"type": "integer"},
                            },
                        },
                    },
                    "queued": {"type": "integer"},
                    "inflight": {"type": "integer"},
                },
            },
        },
    },
}

_DEPRECATION_HEADERS = {
    "Deprecation": {
        "description": "Set when a version on the route is deprecated: '@<epoch seconds>' (RFC 9745)",
        "schema": {"type": "string"},
    },
    "Warning": {
        "description": "One '299 - \"<warning>\"' per deprecated version on the route",
        "schema": {"type": "string"},
    },
}
_RUN_RESPONSES = {
    "200": _response(
        "Synchronous result (state completed, or failed when the servable failed)", _ref("RunResult")
    )
    | {"headers": _DEPRECATION_HEADERS},
    "202": _response("Asynchronous run accepted", _ref("TaskAccepted")) | {"headers": _DEPRECATION_HEADERS},
    **_errors(400, 401, 404, 409, 410, 413, 503),
}
_VERIFY_RESPONSES = {
    "200": _response("The verification report (passed false when a vector failed)", _ref("VerifyReport")),
    **_errors(401, 404, 409, 410, 503),
}
_DEPRECATE_RESPONSES = {
    "200": _response("The version's deprecation state", _ref("Deprecation")),
    **_errors(400, 401, 403, 404, 410),
}
_RUN_PIPELINE_NOTE = (
    "A published pipeline runs here too: its pinned steps become one broker route (method 'run', no "
    "parameters; inputs checked against the first step). A step the caller cannot see is 404, a deleted "
    "step 410, a step not ready 409, each naming servable.steps[i]; failures carry error.step and "
    "error.topic."
)
_PUBLISH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": _ref("PublishRequest")},
        JSON: {"schema": _ref("PublicationDocument")},  # a document without files, e.g. a pipeline
    },
}
_CITATION_FORMAT = _param(
    "format",
    "query",
    {"type": "string", "enum": ["bibtex", "datacite"], "default": "bibtex"},
    "bibtex (text/x-bibtex entry) or datacite (DataCite 4.x JSON)",
)
_CITATION_RESPONSES = {
    "200": {
        "description": "The citation: a BibTeX entry (format=bibtex) or DataCite JSON (format=datacite). "
        "A deleted version stays citable and is marked withdrawn (BibTeX note; DataCite state "
        "'registered', a Withdrawn date and description, url = this citation)",
        "content": {
            "application/x-bibtex": {"schema": {"type": "string"}},
            JSON: {"schema": _ref("DataCite")},
        },
    },
    **_errors(400, 401, 404),
}
_BLOB_ID = _param("blob_id", "path", {"type": "string"}, "Blob id (from POST /blobs)")
_BLOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["blob_id", "size", "sha256", "expires_at"],
    "properties": {
        "blob_id": {"type": "string", "description": 'Pass as {"blob": blob_id} for an input of type file'},
        "size": {"type": "integer", "description": "Bytes"},
        "sha256": {"type": "string", "description": "Hex digest of the content"},
        "filename": {"type": "string", "description": "Sanitised upload file name (may be empty)"},
        "content_type": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time", "description": "Swept after this time"},
    },
}
_BLOB_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _blob_paths() -> dict[str, Any]:
    return {
        "/blobs": {
            "post": {
                "operationId": "uploadBlob",
                "summary": "Upload a file for inputs of type file (raw body or multipart 'file' part)",
                "security": _SECURED,
                "parameters": [
                    _param("filename", "query", {"type": "string"}, "File name of a raw-body upload")
                ],
                "requestBody": _BLOB_UPLOAD_BODY,
                "responses": {
                    "201": _response("Stored", _BLOB_SCHEMA),
                    **_errors(400, 401, 413),
                },
            },
        },
        "/blobs/{blob_id}": {
            "parameters": [_BLOB_ID],
            "get": {
                "operationId": "describeBlob",
                "summary": "One of the caller's blobs (404 for others' blobs)",
                "security": _SECURED,
                "responses": {"200": _response("The blob", _BLOB_SCHEMA), **_errors(401, 404)},
            },
            "delete": {
                "operationId": "deleteBlob",
                "summary": "Delete one of the caller's blobs before it expires",
                "security": _SECURED,
                "responses": {
                    "200": _response(
                        "Deleted", {"type": "object", "properties": {"deleted": {"type": "string"}}}
                    ),
                    **_errors(401, 404),
                },
            },
        },
        "/blobs/{blob_id}/content": {
            "parameters": [_BLOB_ID],
            "get": {
                "operationId": "downloadBlob",
                "summary": "The blob's bytes through a signed URL (what workers fetch); no token needed",
                "security": [{}],
                "parameters": [
                    _param("expires", "query", {"type": "integer"}, "Expiry, epoch seconds", required=True),
                    _param("sig", "query", {"type": "string"}, "HMAC-SHA256 signature", required=True),
                ],
                "responses": {
                    "200": {
                        "description": "The content",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "403": _error("Missing, invalid or expired signature"),
                    "404": _error("The blob expired or was deleted"),
                },
            },
        },
    }


_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_OPTIONAL_AUTH: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]


def build_openapi() -> dict[str, Any]:
    """Return the OpenAPI document as a dict."""
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Broker reachability and registered handlers",
                "security": [{}],
                "responses": {"200": _response("Healthy", _ref("Health")), **_errors(503)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [{}],
                "responses": {"200": _response("The OpenAPI document", {"type": "object"})},
            }
        },
        "/servables": {
            "post": {
                "operationId": "publish",
                "summary": "Publish a new servable or a new version of one",
                "security": _SECURED,
                "requestBody": _PUBLISH_BODY,
                "responses": {
                    "202": _response("Accepted; building", _ref("PublishAccepted")),
                    **_errors(400, 401, 413),
                },
            },
            "get": {
                "operationId": "listServables",
                "summary": "The latest visible version of each servable",
                "security": _OPTIONAL_AUTH,
                "parameters": [
                    _param("owner", "query", {"type": "string"}, "Only this owner's servables"),
                    LIMIT,
                    OFFSET,
                ],
                "responses": {"200": _response("Servables", _ref("ServableList")), **_errors(400, 401)},
            },
        },
        "/servables/{owner}/{name}": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "describeServable",
                "summary": "Describe the newest version that is not deleted",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The servable", _ref("Servable")), **_errors(401, 404, 410)},
            },
            "put": {
                "operationId": "updateServable",
                "summary": "Publish a new version: JSON metadata (same files) or multipart (new files)",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("PublicationDocument")},
                        "multipart/form-data": {"schema": _ref("PublishRequest")},
                    },
                },
                "responses": {
                    "202": _response("Accepted; building", _ref("PublishAccepted")),
                    **_errors(400, 401, 403, 404, 410, 413),
                },
            },
            "delete": {
                "operationId": "deleteServable",
                "summary": "Delete every version (owner only); each becomes a tombstone (status deleted)",
                "security": _SECURED,
                "responses": {
                    "200": _response("Versions deleted by this request", _ref("Deleted")),
                    **_errors(401, 403, 404, 410),
                },
            },
        },
        "/servables/{owner}/{name}/versions": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "listVersions",
                "summary": "Every visible version, tombstones (status deleted) included",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("Versions", _ref("VersionList")), **_errors(401, 404)},
            },
        },
        "/servables/{owner}/{name}/versions/{version}": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "describeVersion",
                "summary": "Describe one version (410 when deleted)",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The version", _ref("Servable")), **_errors(401, 404, 410)},
            },
            "delete": {
                "operationId": "deleteVersion",
                "summary": "Delete one version (owner only); it becomes a tombstone (status deleted)",
                "security": _SECURED,
                "responses": {
                    "200": _response("Versions deleted by this request", _ref("Deleted")),
                    **_errors(401, 403, 404, 410),
                },
            },
        },
        "/servables/{owner}/{name}/versions/{version}/deprecate": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "deprecateVersion",
                "summary": "Deprecate a version (owner only): still runnable with a warning; latest skips it",
                "security": _SECURED,
                "requestBody": {"required": False, "content": _json_content(_ref("DeprecateRequest"))},
                "responses": _DEPRECATE_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/undeprecate": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "undeprecateVersion",
                "summary": "Clear the deprecation of a version (owner only)",
                "security": _SECURED,
                "responses": _DEPRECATE_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/citation": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "citeServable",
                "summary": "Citation of the newest live version (all deleted: the newest, withdrawn)",
                "security": _OPTIONAL_AUTH,
                "parameters": [_CITATION_FORMAT],
                "responses": _CITATION_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/citation": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "citeServableVersion",
                "summary": "Citation of one version, deleted ones included (marked withdrawn)",
                "security": _OPTIONAL_AUTH,
                "parameters": [_CITATION_FORMAT],
                "responses": _CITATION_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/run": {
            "parameters": [OWNER, NAME],
            "post": {
                "operationId": "runServable",
                "summary": "Run the latest version (newest ready one not deprecated, else newest ready)",
                "description": _RUN_PIPELINE_NOTE,
                "security": _OPTIONAL_AUTH,
                "requestBody": {"required": True, "content": _json_content(_ref("RunRequest"))},
                "responses": _RUN_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/run": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "runServableVersion",
                "summary": "Run a pinned version",
                "description": _RUN_PIPELINE_NOTE,
                "security": _OPTIONAL_AUTH,
                "requestBody": {"required": True, "content": _json_content(_ref("RunRequest"))},
                "responses": _RUN_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/verify": {
            "parameters": [OWNER, NAME],
            "post": {
                "operationId": "verifyServable",
                "summary": "Re-run the published test vectors of the latest ready version",
                "security": _OPTIONAL_AUTH,
                "responses": _VERIFY_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/verify": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "verifyServableVersion",
                "summary": "Re-run the published test vectors of a pinned version (409 unless ready)",
                "security": _OPTIONAL_AUTH,
                "responses": _VERIFY_RESPONSES,
            },
        },
        "/pipelines/run": {
            "post": {
                "operationId": "runPipeline",
                "summary": "Run servables as a server-side pipeline (each output feeds the next step)",
                "security": _OPTIONAL_AUTH,
                "requestBody": {"required": True, "content": _json_content(_ref("PipelineRequest"))},
                "responses": _RUN_RESPONSES,
            },
        },
        "/tasks/{task_id}": {
            "parameters": [_param("task_id", "path", {"type": "string"}, "Task id")],
            "get": {
                "operationId": "getTask",
                "summary": "Status and result of an asynchronous run or a build",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The task", _ref("Task")), **_errors(401, 404)},
            },
        },
        "/search": {
            "get": {
                "operationId": "search",
                "summary": "Free-text (prefix) and field search over visible servables",
                "security": _OPTIONAL_AUTH,
                "parameters": [
                    _param("q", "query", {"type": "string"}, "Free text"),
                    *[
                        _param(f, "query", {"type": "string"}, f"Exact {f}")
                        for f in ("owner", "name", "domain", "author", "model_type", "servable_type")
                    ],
                    _param(
                        "doi",
                        "query",
                        {"type": "string"},
                        "The servable's DOI or one of its related identifiers (case-insensitive)",
                    ),
                    _param(
                        "published_from",
                        "query",
                        {"type": "string"},
                        "Published at or after: ISO 8601 date or date-time (UTC default) or epoch seconds",
                    ),
                    _param(
                        "published_to",
                        "query",
                        {"type": "string"},
                        "Published at or before (a date alone includes that whole day)",
                    ),
                    _param(
                        "facets",
                        "query",
                        {"type": "string"},
                        "Comma-separated facets to count: domain, model_type, servable_type, owner",
                    ),
                    _param(
                        "sort",
                        "query",
                        {"type": "string", "enum": ["relevance", "publication_date", "name"]},
                        "Order of hits (default relevance; without q, publication date)",
                    ),
                    _param(
                        "order",
                        "query",
                        {"type": "string", "enum": ["asc", "desc"]},
                        "Direction (default desc for relevance and publication_date, asc for name)",
                    ),
                    LIMIT,
                    OFFSET,
                ],
                "responses": {"200": _response("Hits", _ref("SearchResults")), **_errors(400, 401, 503)},
            },
        },
        "/search/reindex": {
            "post": {
                "operationId": "reindexSearch",
                "summary": "Rebuild the search index without downtime (registry.admin_users only)",
                "security": _SECURED,
                "responses": {
                    "200": _response("The new index", _ref("ReindexOutcome")),
                    **_errors(401, 403, 503),
                },
            },
        },
        **_blob_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DLHub REST API",
            "version": "1.0.0",
            "description": "Publish, discover and run scientific models (servables). Errors are "
            '{"error": {"type", "message", "field"?}} with the status of their type.',
        },
        "servers": [{"url": "/api/v1"}],
        "security": _OPTIONAL_AUTH,
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Local API token from `dlhub token create <user>`",
                }
            },
        },
    }


@functools.cache
def openapi_json() -> bytes:
    return msgspec.json.encode(build_openapi())
