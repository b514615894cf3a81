"""Validation and normalisation of publication documents.

The JSON Schema shipped beside this module (``schemas/dlhub-publication.schema.json``) accepts documents from
the DLHub SDK 2.1.0 unchanged. A rejected document raises ``ValidationFailed`` whose ``field`` is the dotted
path of the most relevant error (``datacite.creators``, ``servable.methods.run``,
``datacite.titles[0].title``).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError, best_match  # type: ignore[import-untyped]

from dlhub.common.errors import ValidationFailed
from dlhub.common.ids import NAME_RE
from dlhub.common.payloads import SearchDocument, TablePreview
from dlhub.common.url_files import FIELD as URL_FILES_FIELD
from dlhub.common.url_files import url_files
from dlhub.registry.argtypes import check_method_types, method_types
from dlhub.registry.datasets import search_terms
from dlhub.registry.identifiers import doi_of, related_identifiers, validate_identifiers
from dlhub.registry.pipelines import check_pipeline_document, is_pipeline
from dlhub.registry.placement import check_placement
from dlhub.registry.vectors import check_test_vectors

SCHEMA_RESOURCE = "dlhub-publication.schema.json"
MAX_SEARCH_COLUMNS = 64
MAX_SEARCH_COLUMN_CHARS = 64
"""The search document carries at most this many preview column names, each cut to this length: hits
show them, and the document stays small whatever the dataset."""


@functools.cache
def publication_schema() -> dict[str, Any]:
    """Return the publication JSON Schema shipped with the package."""
    text = resources.files("dlhub.registry").joinpath("schemas", SCHEMA_RESOURCE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    schema = publication_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_path(parts: Iterable[str | int]) -> str:
    """Render a path as ``a.b[0].c``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _error_field(error: ValidationError) -> str:
    path: list[str | int] = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        if missing:
            path.append(missing[0])
    return json_path(path) or "metadata"


def _error_message(error: ValidationError, field: str) -> str:
    if error.validator == "required":
        return f"{field} is required"
    if error.validator == "pattern" and field == "dlhub.name":
        return (
            "dlhub.name must be 1-128 characters of letters, digits, '_', '.' or '-' and start alphanumeric"
        )
    return f"{field}: {error.message}"


def validate_publication(document: Any) -> dict[str, Any]:
    """Check ``document`` against the publication schema; raise ``ValidationFailed`` naming the field."""
    if not isinstance(document, dict):
        raise ValidationFailed("the metadata document must be a JSON object", field="metadata")
    error = best_match(_validator().iter_errors(document))
    if error is not None:
        field = _error_field(error)
        raise ValidationFailed(_error_message(error, field), field=field)
    name = document["dlhub"]["name"]
    if not NAME_RE.fullmatch(name):  # the schema's pattern mirrors NAME_RE; keep the code authoritative
        raise ValidationFailed(f"invalid servable name {name!r}", field="dlhub.name")
    check_method_types(document)  # argument types: what the schema cannot say (shape sizes, nesting depth)
    validate_identifiers(document)  # DOI, related DOIs and ORCID iDs (the schema only knows their shape)
    # URL components: scheme, bucket, path and checksum shape, with messages naming what is wrong.
    if url_files(document) and is_pipeline(document):
        raise ValidationFailed("a pipeline has no package, so no URL components", field=URL_FILES_FIELD)
    check_placement(document, pipeline=is_pipeline(document))
    if is_pipeline(document):
        check_pipeline_document(document)  # its steps are checked against the registry at publish
    else:
        check_test_vectors(document)  # each test vector names a declared method
    return document


def normalise_publication(
    document: dict[str, Any], *, owner: str, document_id: str, published_at_ms: int
) -> dict[str, Any]:
    """Return a copy with the fields the service owns filled in (owner, id, dates, shorthand name)."""
    doc = copy.deepcopy(document)
    dlhub: dict[str, Any] = doc["dlhub"]
    dlhub["owner"] = owner
    dlhub["id"] = document_id
    dlhub["publication_date"] = published_at_ms
    dlhub["shorthand_name"] = f"{owner}/{dlhub['name']}"
    dlhub.setdefault("visible_to", ["public"])
    dlhub.setdefault("domains", [])
    dlhub.setdefault("type", "servable")
    return doc


def _creator_name(creator: dict[str, Any]) -> str:
    given = str(creator.get("givenName") or "").strip()
    family = str(creator.get("familyName") or "").strip()
    full = f"{given} {family}".strip()
    return full or str(creator.get("creatorName") or "").strip()


def title_of(metadata: dict[str, Any]) -> str:
    titles = (metadata.get("datacite") or {}).get("titles") or []
    return str(titles[0].get("title", "")) if titles and isinstance(titles[0], dict) else ""


def search_columns(previews: Iterable[TablePreview]) -> list[str]:
    """The distinct column names of a dataset's previews, in order, capped (``MAX_SEARCH_COLUMNS``)."""
    names = (c.name[:MAX_SEARCH_COLUMN_CHARS] for p in previews for c in p.columns if c.name)
    return list(dict.fromkeys(names))[:MAX_SEARCH_COLUMNS]


def search_document(
    *,
    owner: str,
    name: str,
    version: int,
    metadata: dict[str, Any],
    published_at_ms: int,
    previews: Iterable[TablePreview] = (),
) -> SearchDocument:
    """Build the search index entry of one (ready) version from its metadata."""
    datacite: dict[str, Any] = metadata.get("datacite") or {}
    dlhub: dict[str, Any] = metadata.get("dlhub") or {}
    servable: dict[str, Any] = metadata.get("servable") or {}
    descriptions = [d for d in datacite.get("descriptions") or [] if isinstance(d, dict)]
    abstract = next(
        (str(d.get("description", "")) for d in descriptions if d.get("descriptionType") == "Abstract"),
        str(descriptions[0].get("description", "")) if descriptions else "",
    )
    authors = [_creator_name(c) for c in datacite.get("creators") or [] if isinstance(c, dict)]
    keywords = [
        str(s["subject"]) for s in datacite.get("subjects") or [] if isinstance(s, dict) and s.get("subject")
    ]
    visible_to = list(dlhub.get("visible_to") or ["public"])
    owner_identity = f"user:{owner}"
    if owner_identity not in visible_to:
        visible_to.append(owner_identity)  # the owner always finds its own servables
    trained_on, tested_on = search_terms(metadata)
    return SearchDocument(
        id=f"{owner}/{name}",
        owner=owner,
        name=name,
        version=version,
        title=title_of(metadata),
        description=abstract,
        authors=[a for a in authors if a],
        domains=[str(d) for d in dlhub.get("domains") or []],
        keywords=keywords,
        model_type=str(servable.get("model_type") or ""),
        servable_type=str(servable.get("type") or ""),
        visible_to=visible_to,
        publication_date_s=published_at_ms / 1000.0,
        status="ready",
        doi=doi_of(metadata),
        related_identifiers=[str(r["relatedIdentifier"]).strip() for r in related_identifiers(metadata)],
        kind=str(dlhub.get("type") or "servable"),
        columns=search_columns(previews),
        trained_on=trained_on,
        tested_on=tested_on,
        methods=method_types(metadata),
    )
