"""The OpenAPI 3.1 description of the REST API (served at ``/api/v1/openapi.json``).

Only the path table is written here: paths, parameters, which ``contract`` struct each request and response
uses, status codes and descriptions. Every schema is generated from the structs
(``msgspec.json.schema_components``), query parameters included, so bounds and choices come from the same
``Meta``/``Literal`` annotations the server enforces.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import msgspec

from dlhub.registry.http import contract as c

JSON = "application/json"
NDJSON = "application/x-ndjson"


def _ref(type_: type[msgspec.Struct] | str) -> dict[str, str]:
    name = type_ if isinstance(type_, str) else type_.__name__
    return {"$ref": c.REF.format(name=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _response(
    description: str, schema: dict[str, Any] | type[msgspec.Struct] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _json_content(schema if isinstance(schema, dict) else _ref(schema))
    return out


def _error(description: str) -> dict[str, Any]:
    return _response(description, c.Error)


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input (the error names the field or parameter)",
        401: "Missing, invalid or expired token",
        403: "Not the owner or a maintainer it names (or not an administrator)",
        404: "Unknown or invisible resource",
        410: "Deleted: the version (or every version) is a tombstone (error type gone)",
        409: "The servable has no ready version",
        413: "Request body too large",
        429: "Rate limit exceeded (rate_limited); Retry-After says when to try again",
        503: "Broker or service unavailable",
    }
    return {str(code): _error(text[code]) for code in codes}


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


@functools.cache
def _query_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(c.QUERY_TYPES, ref_template=c.REF)
    return components


def _query(type_: type[msgspec.Struct]) -> list[dict[str, Any]]:
    """The query parameters of ``type_``, one per field, with the field's generated schema."""
    schema = _query_schemas()[type_.__name__]
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
            "description": description,
        }
        if prop.get("type") == "array":  # ?facets=domain,owner
            param |= {"style": "form", "explode": False}
        params.append(param)
    return params


OWNER = _param("owner", "path", {"type": "string"}, "Owner (user name) of the servable")
NAME = _param("name", "path", {"type": "string"}, "Servable name (dlhub.name)")
VERSION = _param("version", "path", {"type": "integer", "minimum": 1}, "Version number (400 below 1)")

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
    "200": _response("Synchronous result (state completed, or failed when the servable failed)", c.RunResult)
    | {"headers": _DEPRECATION_HEADERS},
    "202": _response("Asynchronous run accepted", c.TaskAccepted) | {"headers": _DEPRECATION_HEADERS},
    **_errors(400, 401, 404, 409, 410, 413, 503),
}
_VERIFY_RESPONSES = {
    "200": _response("The verification report (passed false when a vector failed)", c.VerifyReport),
    **_errors(401, 404, 409, 410, 503),
}
_DEPRECATE_RESPONSES = {
    "200": _response("The version's deprecation state", c.Deprecation),
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
        "multipart/form-data": {
            "schema": _ref(c.PublishRequest),
            "encoding": {"metadata": {"contentType": JSON}},  # the document is the part's JSON body
        },
        JSON: {"schema": _ref(c.PublicationDocument)},  # a document without files, e.g. a pipeline
    },
}
_CITATION_RESPONSES = {
    "200": {
        "description": "The citation: a BibTeX entry (format=bibtex) or DataCite JSON (format=datacite). "
        "A deleted version stays citable and is marked withdrawn (BibTeX note; DataCite state "
        "'registered', a Withdrawn date and description, url = this citation)",
        "content": {
            "application/x-bibtex": {"schema": {"type": "string"}},
            JSON: {"schema": _ref(c.DataCite)},
        },
    },
    **_errors(400, 401, 404),
}
_BUILD_NOTE = (
    "Visible like describe (404 hidden, 410 deleted). With follow=true the answer is application/x-ndjson: "
    "the record so far (BuildRecord) on the first line, then one BuildEvent per line (a state change, or "
    "new log lines) as they happen, ending when the build is ready or failed. Versions published before "
    "build records get one implied from their status."
)
_EXPORT_NOTE = (
    "files/ (the package), dlhub.json (metadata), requirements.lock (its own environment's hash-pinned "
    "lock) or requirements.txt (shared environment: pinned, no hashes), run.py, README.txt with the "
    "commands, runtime/ (the executor's loader) and, for a docker environment, a Dockerfile. Visible like "
    "describe; 409 unless ready; 400 for a pipeline. format=image (docker-environment versions; 400 for "
    "others): `docker save` of a self-contained image, the version's environment image plus files/, "
    "dlhub.json, the lock, run.py and runtime/ in /servable, running run.py as 65534:65534 (`docker load -i "
    "FILE`, then `docker run --rm -i --network none <DLHub-Image> '<json input>'`), tagged "
    "dlhub-export:<owner>.<name>.<version>-<digest> and built on the registry's Docker engine "
    "(environments.docker_url) once per version; 503 environment_unavailable when the registry cannot "
    "reach an engine (naming the pushed environment image when environments.docker_registry is set)."
)
_FILES_NOTE = (
    "Visible like describe (404 hidden, 410 deleted); 409 unless the version is ready. Without {version}: "
    "the version describe shows (Content-Location names it). Every download has a strong ETag (the "
    "quoted hex sha256 of the bytes) and Repr-Digest: sha-256=:<base64>: (RFC 9530, the whole file's "
    "digest, on a 206 too); If-None-Match answers 304, one Range 206 (several ranges or bad syntax: the "
    "whole file, 200; starting past the end: 416 with Content-Range: bytes */<size>), If-Range with "
    "another ETag the whole file."
)
_FILE_PATH = _param(
    "path",
    "path",
    # One segment, as an OpenAPI path parameter is: a nested file's further segments follow unencoded.
    {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": r"^(?!\.\.?$)[^/\\\x00]+$"},
    "The file's path in the package, as GET .../files lists it: its segments are joined by '/' sent as is "
    "(data/table.csv), each percent-encoded otherwise. An encoded slash or backslash, a NUL, a backslash, a "
    "leading '/', empty, '.' or '..' segments: 400 invalid_path",
)
_DOWNLOAD_PARAMS = [
    _param("Range", "header", {"type": "string"}, "One byte range, e.g. bytes=0-1023, bytes=-512"),
    _param("If-None-Match", "header", {"type": "string"}, "ETags already held: 304 when one matches"),
    _param("If-Range", "header", {"type": "string"}, "Honour Range only if the ETag is still this one"),
]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_DOWNLOAD_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in (
        ("ETag", "Strong: the quoted hex sha256 of the whole file"),
        ("Repr-Digest", "sha-256=:<base64 of the sha256>: of the whole file (RFC 9530)"),
        ("Accept-Ranges", "bytes"),
        ("Content-Disposition", "attachment, with the file name"),
        ("Content-Location", "The pinned version's URL of this file"),
    )
}


def _download_responses(what: str, media: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": what, "headers": _DOWNLOAD_HEADERS, "content": media},
        "206": {
            "description": "The requested byte range (Content-Range: bytes <first>-<last>/<size>)",
            "headers": _DOWNLOAD_HEADERS
            | {"Content-Range": {"description": "The range sent", "schema": {"type": "string"}}},
            "content": media,
        },
        "304": {"description": "Not modified: If-None-Match named the ETag", "headers": _DOWNLOAD_HEADERS},
        **_errors(400, 401, 404, 409, 410),
        "416": _error(
            "Range starts past the end (Content-Range: bytes */<size>; type range_not_satisfiable)"
        ),
    }


def _file_paths() -> dict[str, Any]:
    """A version's files: the list, one file, the package as uploaded (pinned, or the latest)."""
    paths: dict[str, Any] = {}
    for prefix, params, suffix, which in (
        ("/servables/{owner}/{name}", [OWNER, NAME], "Latest", "the newest version not deleted"),
        ("/servables/{owner}/{name}/versions/{version}", [OWNER, NAME, VERSION], "Version", "one version"),
    ):
        paths[prefix + "/files"] = {
            "parameters": params,
            "get": {
                "operationId": f"listFiles{suffix}",
                "summary": f"The files of {which}: path, size and sha256 of each, and the package",
                "description": _FILES_NOTE,
                "security": _OPTIONAL_AUTH,
                "responses": {
                    "200": _response("The files", c.FileList),
                    **_errors(400, 401, 404, 409, 410),
                },
            },
        }
        paths[prefix + "/files/{path}"] = {
            "parameters": [*params, _FILE_PATH],
            "get": {
                "operationId": f"downloadFile{suffix}",
                "summary": f"One file of {which}, streamed (ETag, Range, Repr-Digest)",
                "description": _FILES_NOTE,
                "security": _OPTIONAL_AUTH,
                "parameters": _DOWNLOAD_PARAMS,
                "responses": _download_responses(
                    "The file (Content-Type guessed from its name)", {"*/*": _BINARY}
                ),
            },
        }
        paths[prefix + "/package"] = {
            "parameters": params,
            "get": {
                "operationId": f"downloadPackage{suffix}",
                "summary": f"The package of {which} exactly as uploaded (a tar, compressed or not, or a zip)",
                "description": _FILES_NOTE + " 404 for a version published without files (e.g. a pipeline).",
                "security": _OPTIONAL_AUTH,
                "parameters": _DOWNLOAD_PARAMS,
                "responses": _download_responses(
                    "The package",
                    {
                        media: _BINARY
                        for media in (
                            "application/gzip",
                            "application/x-tar",
                            "application/zip",
                            "application/x-bzip2",
                            "application/x-xz",
                        )
                    },
                ),
            },
        }
    return paths


_BLOB_ID = _param("blob_id", "path", {"type": "string"}, "Blob id (from POST /blobs)")
_BLOB_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": _ref(c.BlobUploadForm)},
        # an empty body is a 400 (a mistake, not an empty file)
        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
    },
}


def _blob_paths() -> dict[str, Any]:
    return {
        "/blobs": {
            "post": {
                "operationId": "uploadBlob",
                "summary": "Upload a file for inputs of type file (raw body or multipart 'file' part)",
                "security": _SECURED,
                "parameters": _query(c.BlobUploadQuery),
                "requestBody": _BLOB_UPLOAD_BODY,
                "responses": {
                    "201": _response("Stored", c.Blob),
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
                "responses": {"200": _response("The blob", c.Blob), **_errors(401, 404)},
            },
            "delete": {
                "operationId": "deleteBlob",
                "summary": "Delete one of the caller's blobs before it expires",
                "security": _SECURED,
                "responses": {
                    "200": _response("Deleted", c.BlobDeleted),
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
                "parameters": _query(c.BlobContentQuery),
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


def _service_paths() -> dict[str, Any]:
    """Health and this document."""
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Broker reachability and handler counts; the handler table for administrators",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("Healthy", _ref(c.Health)), **_errors(401, 503)},
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
    }


def _servable_paths() -> dict[str, Any]:
    """Publishing, listing, describing, updating and deleting servables."""
    return {
        "/servables": {
            "post": {
                "operationId": "publish",
                "summary": "Publish a new servable or a new version of one",
                "security": _SECURED,
                "requestBody": _PUBLISH_BODY,
                "responses": {
                    "202": _response("Accepted; building", _ref(c.PublishAccepted)),
                    **_errors(400, 401, 413),
                },
            },
            "get": {
                "operationId": "listServables",
                "summary": "The latest visible version of each servable",
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.ServablesQuery),
                "responses": {"200": _response("Servables", _ref(c.ServableList)), **_errors(400, 401)},
            },
        },
        "/servables/{owner}/{name}": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "describeServable",
                "summary": "Describe the newest version that is not deleted",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The servable", _ref(c.Servable)), **_errors(401, 404, 410)},
            },
            "put": {
                "operationId": "updateServable",
                "summary": "Publish a new version: JSON metadata (same files) or multipart (new files)",
                "security": _SECURED,
                "requestBody": _PUBLISH_BODY,
                "responses": {
                    "202": _response("Accepted; building", _ref(c.PublishAccepted)),
                    **_errors(400, 401, 403, 404, 410, 413),
                },
            },
            "delete": {
                "operationId": "deleteServable",
                "summary": "Delete every version (owner only); each becomes a tombstone (status deleted)",
                "security": _SECURED,
                "responses": {
                    "200": _response("Versions deleted by this request", _ref(c.Deleted)),
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
                "responses": {"200": _response("Versions", _ref(c.VersionList)), **_errors(401, 404)},
            },
        },
    }


def _version_paths() -> dict[str, Any]:
    """One version: describe, delete, (un)deprecate, and citations."""
    return {
        "/servables/{owner}/{name}/versions/{version}": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "describeVersion",
                "summary": "Describe one version (410 when deleted)",
                "security": _OPTIONAL_AUTH,
                "responses": {
                    "200": _response("The version", _ref(c.Servable)),
                    **_errors(400, 401, 404, 410),
                },
            },
            "delete": {
                "operationId": "deleteVersion",
                "summary": "Delete one version (owner only); it becomes a tombstone (status deleted)",
                "security": _SECURED,
                "responses": {
                    "200": _response("Versions deleted by this request", _ref(c.Deleted)),
                    **_errors(400, 401, 403, 404, 410),
                },
            },
        },
        "/servables/{owner}/{name}/versions/{version}/deprecate": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "deprecateVersion",
                "summary": "Deprecate a version (owner only): still runnable with a warning; latest skips it",
                "security": _SECURED,
                "requestBody": {"required": False, "content": _json_content(_ref(c.DeprecateRequest))},
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
        "/servables/{owner}/{name}/versions/{version}/build": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "getBuild",
                "summary": "The version's build record: states with timestamps, environment, error and log",
                "description": _BUILD_NOTE,
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.BuildQuery),
                "responses": {
                    "200": {
                        "description": "The record, or (follow=true) a stream of JSON lines",
                        "content": {
                            JSON: {"schema": _ref(c.BuildRecord)},
                            NDJSON: {
                                "schema": {"oneOf": [_ref(c.BuildRecord), _ref(c.BuildEvent)]},
                                "x-ndjson-lines": "first BuildRecord, then BuildEvent",
                            },
                        },
                    },
                    **_errors(400, 401, 404, 410),
                },
            },
        },
        "/servables/{owner}/{name}/versions/{version}/export": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "exportVersion",
                "summary": "The version as a .tar.gz that runs with a plain Python venv, or as an image",
                "description": _EXPORT_NOTE,
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.ExportQuery),
                "responses": {
                    "200": {
                        "description": "format=archive: the archive (<owner>-<name>-<version>.tar.gz); "
                        "format=image: `docker save` of the image (<owner>-<name>-<version>.image.tar), "
                        "streamed",
                        "headers": {
                            "DLHub-Image": {
                                "description": "format=image: the tag `docker load` gives the image",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **_errors(400, 401, 404, 409, 410, 503),
                },
            },
        },
        "/servables/{owner}/{name}/citation": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "citeServable",
                "summary": "Citation of the newest live version (all deleted: the newest, withdrawn)",
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.CitationQuery),
                "responses": _CITATION_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/citation": {
            "parameters": [OWNER, NAME, VERSION],
            "get": {
                "operationId": "citeServableVersion",
                "summary": "Citation of one version, deleted ones included (marked withdrawn)",
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.CitationQuery),
                "responses": _CITATION_RESPONSES,
            },
        },
    }


def _run_paths() -> dict[str, Any]:
    """Runs, verification and pipelines."""
    return {
        "/servables/{owner}/{name}/run": {
            "parameters": [OWNER, NAME],
            "post": {
                "operationId": "runServable",
                "summary": "Run the latest version (newest ready one not deprecated, else newest ready)",
                "description": _RUN_PIPELINE_NOTE,
                "security": _OPTIONAL_AUTH,
                "requestBody": {"required": True, "content": _json_content(_ref(c.RunRequest))},
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
                "requestBody": {"required": True, "content": _json_content(_ref(c.RunRequest))},
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
                "responses": {**_VERIFY_RESPONSES, **_errors(400)},
            },
        },
        "/pipelines/run": {
            "post": {
                "operationId": "runPipeline",
                "summary": "Run servables as a server-side pipeline (each output feeds the next step)",
                "security": _OPTIONAL_AUTH,
                "requestBody": {"required": True, "content": _json_content(_ref(c.PipelineRequest))},
                "responses": _RUN_RESPONSES,
            },
        },
    }


_APPLY_NOTE = (
    "Starts a dataset job: the servable or pipeline named in the body runs over every row of one tabular "
    "file of this dataset, in batches through the broker; GET /tasks/{task_id} shows its progress, and when "
    "it is done its output: a new dataset of the caller's, linked to both inputs. Needs a token."
)
_APPLY_RESPONSES: Final = {
    "202": _response("The job's task", _ref(c.JobAccepted)),
    **_errors(400, 401, 404, 409, 410, 503),
}
_TASK_ID = _param("task_id", "path", {"type": "string"}, "Task id")


def _job_paths() -> dict[str, Any]:
    """Dataset jobs: apply, cancel, results."""
    apply_body = {"required": True, "content": _json_content(_ref(c.ApplyRequest))}
    return {
        "/servables/{owner}/{name}/apply": {
            "parameters": [OWNER, NAME],
            "post": {
                "operationId": "applyToDataset",
                "summary": "Apply a servable to every row of the dataset's newest ready version",
                "description": _APPLY_NOTE,
                "security": _SECURED,
                "requestBody": apply_body,
                "responses": _APPLY_RESPONSES,
            },
        },
        "/servables/{owner}/{name}/versions/{version}/apply": {
            "parameters": [OWNER, NAME, VERSION],
            "post": {
                "operationId": "applyToDatasetVersion",
                "summary": "Apply a servable to every row of a pinned dataset version",
                "description": _APPLY_NOTE,
                "security": _SECURED,
                "requestBody": apply_body,
                "responses": _APPLY_RESPONSES,
            },
        },
        "/tasks/{task_id}/cancel": {
            "parameters": [_TASK_ID],
            "post": {
                "operationId": "cancelTask",
                "summary": "Cancel a dataset job (its submitter): it ends failed with error.type cancelled",
                "security": _SECURED,
                "responses": {
                    "200": _response("The task, ended", _ref(c.Task)),
                    **_errors(401, 404),
                    "409": _error("The task has already ended"),
                },
            },
        },
        "/tasks/{task_id}/results": {
            "parameters": [_TASK_ID],
            "get": {
                "operationId": "getTaskResults",
                "summary": "A dataset job's per-row results so far, in row order (JSON lines)",
                "security": _SECURED,
                "responses": {
                    "200": {
                        "description": 'One line per row: {"index", "output", "error"}',
                        "content": {NDJSON: {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404),
                },
            },
        },
    }


def _task_and_search_paths() -> dict[str, Any]:
    """Tasks and search."""
    return {
        "/tasks/{task_id}": {
            "parameters": [_param("task_id", "path", {"type": "string"}, "Task id")],
            "get": {
                "operationId": "getTask",
                "summary": "Status and result of an asynchronous run or a build",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The task", _ref(c.Task)), **_errors(401, 404)},
            },
        },
        "/search": {
            "get": {
                "operationId": "search",
                "summary": "Free-text (prefix) and field search over visible servables",
                "security": _OPTIONAL_AUTH,
                "parameters": _query(c.SearchQueryParams),
                "responses": {"200": _response("Hits", _ref(c.SearchResults)), **_errors(400, 401, 503)},
            },
        },
        "/search/reindex": {
            "post": {
                "operationId": "reindexSearch",
                "summary": "Rebuild the search index without downtime (registry.admin_users only)",
                "security": _SECURED,
                "responses": {
                    "200": _response("The new index", _ref(c.ReindexOutcome)),
                    **_errors(401, 403, 503),
                },
            },
        },
    }


def _identity_paths() -> dict[str, Any]:
    """Who am I, how to sign in, who may see a servable, and the audit log."""
    return {
        "/whoami": {
            "get": {
                "operationId": "whoAmI",
                "summary": "The caller as the registry sees it: user, identities, groups, administrator",
                "security": _OPTIONAL_AUTH,
                "responses": {"200": _response("The caller", c.WhoAmI), **_errors(401, 429)},
            }
        },
        "/auth": {
            "get": {
                "operationId": "authInfo",
                "summary": "How to sign in: the provider and, for Globus, the native client and scope",
                "security": [],
                "responses": {"200": _response("Sign-in settings", c.AuthInfo)},
            }
        },
        "/servables/{owner}/{name}/access": {
            "parameters": [OWNER, NAME],
            "get": {
                "operationId": "getAccess",
                "summary": "Who may see and who may manage the servable",
                "security": _OPTIONAL_AUTH,
                "responses": {
                    "200": _response("visible_to and maintainers", c.Access),
                    **_errors(401, 404, 410, 429),
                },
            },
            "put": {
                "operationId": "setAccess",
                "summary": "Share: set visible_to (owner, maintainers) or maintainers (owner), all versions",
                "description": "Takes effect at once in describe, run and search.",
                "security": _SECURED,
                "requestBody": {"required": True, "content": _json_content(_ref(c.AccessRequest))},
                "responses": {
                    "200": _response("The new access lists", c.Access),
                    **_errors(400, 401, 403, 404, 410, 429),
                },
            },
        },
        "/audit": {
            "get": {
                "operationId": "listAudit",
                "summary": "Audit events, newest first (registry.admin_users only)",
                "security": _SECURED,
                "parameters": _query(c.AuditQueryParams),
                "responses": {"200": _response("Events", c.AuditLog), **_errors(400, 401, 403, 429)},
            }
        },
    }


def build_openapi() -> dict[str, Any]:
    """Return the OpenAPI document as a dict."""
    paths: dict[str, Any] = {
        **_service_paths(),
        **_servable_paths(),
        **_version_paths(),
        **_file_paths(),
        **_run_paths(),
        **_job_paths(),
        **_task_and_search_paths(),
        **_blob_paths(),
        **_identity_paths(),
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
            "schemas": _components(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A local API token (`dlhub token create <user>`) or, with auth.provider "
                    "= globus, a Globus Auth access token for the registry's scope (`dlhub login`)",
                }
            },
        },
    }


def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(c.SCHEMA_TYPES, ref_template=c.REF)
    return dict(sorted(components.items()))


@functools.cache
def openapi_json() -> bytes:
    return msgspec.json.encode(build_openapi())
