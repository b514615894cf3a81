"""Datasets and the links from servables to them.

A dataset is a publication whose ``dlhub.type`` is ``dataset``: versioned, built (its files get sizes and
sha256 digests, its tabular files a preview) and cited like a servable (DataCite ``resourceTypeGeneral``
Dataset). Any publication may name the data it was trained and tested on in ``dlhub.training_data`` and
``dlhub.test_data``: DLHub references (``owner/name[@version]``) or DOIs. Publishing checks each reference
against what the publisher can see and pins it to a ready dataset version (like pipeline steps), checks each
DOI's shape, and records DOIs (the named ones and those of referenced datasets) as DataCite related
identifiers. The relation types (DataCite 4.x ``relationType``):

- training data: ``IsDerivedFrom`` (the model is derived from the data; the data ``IsSourceOf`` the model);
- test data: ``References`` (the model's record refers to its evaluation data, nothing is derived from it;
  ``IsCompiledBy`` means "B was used to create A", which fits training better than testing);
- the output of a dataset job (``jobs.py``) names the dataset it was computed from in ``dlhub.derived_from``
  (``IsDerivedFrom``) and the servable or pipeline that computed it in ``dlhub.generated_by``
  (``IsCompiledBy``: "B was used to create A"); the latter is the one link kind naming a servable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Final

from dlhub.common.errors import Gone, NotFound, ServableNotReady, ValidationFailed
from dlhub.common.links import bare_doi, link_terms, store_target
from dlhub.registry.auth import Caller
from dlhub.registry.identifiers import doi_of
from dlhub.registry.pipelines import VersionLookup, parse_servable_ref
from dlhub.registry.store import VersionRecord

DATASET_TYPE: Final = "dataset"
MAX_LINKS: Final = 32
"""At most this many references per list (the schema says so too)."""


@dataclass(frozen=True, slots=True)
class LinkKind:
    key: str
    relation: str
    relation_type: str
    names_servable: bool = False
    """The reference names a servable or pipeline (not a dataset)."""


LINK_KINDS: Final = (
    LinkKind("training_data", "training", "IsDerivedFrom"),
    LinkKind("test_data", "test", "References"),
    LinkKind("derived_from", "source", "IsDerivedFrom"),
    LinkKind("generated_by", "model", "IsCompiledBy", names_servable=True),
)
_LOOKUP_ERRORS: Final = (NotFound, Gone, ServableNotReady)


def is_dataset(metadata: dict[str, Any]) -> bool:
    dlhub = metadata.get("dlhub")
    return isinstance(dlhub, dict) and dlhub.get("type") == DATASET_TYPE


def declared_links(metadata: dict[str, Any]) -> list[tuple[LinkKind, str]]:
    """Every (kind, reference) the document names, in document order."""
    dlhub = metadata.get("dlhub")
    if not isinstance(dlhub, dict):
        return []
    return [
        (kind, ref)
        for kind in LINK_KINDS
        if isinstance(dlhub.get(kind.key), list)
        for ref in dlhub[kind.key]
        if isinstance(ref, str)
    ]


async def pin_links(lookup: VersionLookup, caller: Caller, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with its dataset references pinned and its DOIs recorded as DataCite related
    identifiers; 400 naming the field for a malformed DOI or a reference the publisher cannot use."""
    if not declared_links(document):
        return document
    doc = copy.deepcopy(document)
    dlhub: dict[str, Any] = doc["dlhub"]
    related: list[tuple[str, str]] = []
    for kind in LINK_KINDS:
        refs = dlhub.get(kind.key)
        if not isinstance(refs, list):
            continue
        pinned: list[str] = []
        for index, ref in enumerate(refs):
            field = f"dlhub.{kind.key}[{index}]"
            value, doi = await _pin_one(lookup, caller, str(ref), field, kind)
            pinned.append(value)
            if doi:
                related.append((doi, kind.relation_type))
        dlhub[kind.key] = list(dict.fromkeys(pinned))
    _add_related_dois(doc, related)
    return doc


async def _pin_one(
    lookup: VersionLookup, caller: Caller, ref: str, field: str, kind: LinkKind
) -> tuple[str, str]:
    """(the stored reference, the DOI to record or "") of one named dataset (or servable)."""
    doi = bare_doi(ref)
    if doi is not None:
        return doi, doi
    if ref.strip().lower().startswith(("10.", "doi:", "http://", "https://")):
        raise ValidationFailed(
            f"{field}: {ref!r} is not a DOI (10.<registrant>/<suffix>) nor a DLHub reference", field=field
        )
    owner, name, version = parse_servable_ref(ref.strip(), field)
    what = "servable" if kind.names_servable else "dataset"
    try:
        record = await lookup.runnable(caller, owner, name, version)
    except _LOOKUP_ERRORS as exc:
        raise ValidationFailed(f"{field}: {what} {ref}: {exc.message}", field=field) from None
    if is_dataset(record.metadata) == kind.names_servable:
        raise ValidationFailed(f"{field}: {record.label} is not a {what}", field=field)
    return record.label, doi_of(record.metadata)


def _add_related_dois(doc: dict[str, Any], related: list[tuple[str, str]]) -> None:
    if not related:
        return
    datacite: dict[str, Any] = doc["datacite"]
    items = datacite.get("relatedIdentifiers")
    existing: list[Any] = items if isinstance(items, list) else []
    seen = {
        (str(i.get("relatedIdentifier", "")).strip().casefold(), str(i.get("relationType", "")))
        for i in existing
        if isinstance(i, dict)
    }
    for doi, relation_type in related:
        if (doi.casefold(), relation_type) not in seen:
            seen.add((doi.casefold(), relation_type))
            existing.append(
                {"relatedIdentifier": doi, "relatedIdentifierType": "DOI", "relationType": relation_type}
            )
    datacite["relatedIdentifiers"] = existing


def links_of(metadata: dict[str, Any]) -> list[dict[str, str]]:
    """The datasets a version names, for describe: ``{"dataset", "relation", "relationType", "kind"}``."""
    return [
        {
            "dataset": ref,
            "relation": kind.relation,
            "relationType": kind.relation_type,
            "kind": "doi" if bare_doi(ref) is not None else "dlhub",
        }
        for kind, ref in declared_links(metadata)
    ]


def search_terms(metadata: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(trained_on, tested_on) terms of the search document (``dlhub.common.links.link_terms``)."""
    terms: dict[str, set[str]] = {kind.key: set() for kind in LINK_KINDS}
    for kind, ref in declared_links(metadata):
        terms[kind.key].update(link_terms(ref))
    return sorted(terms["training_data"]), sorted(terms["test_data"])


def dataset_targets(record: VersionRecord) -> list[str]:
    """The store keys a servable's link to this dataset is indexed under: its name, and its DOI if any."""
    targets = [record.shorthand_name]
    doi = doi_of(record.metadata)
    if doi:
        targets.append(store_target(doi))
    return targets


def used_by(dataset: VersionRecord, linking: list[VersionRecord], caller: Caller) -> list[dict[str, Any]]:
    """The servables (the newest visible linking version of each) that name ``dataset``, with how."""
    targets = set(dataset_targets(dataset))
    newest: dict[tuple[str, str], VersionRecord] = {}
    for record in linking:
        if caller.can_see(record.owner, record.visible_to):
            newest[(record.owner, record.name)] = record  # ordered by version: the last one wins
    out: list[dict[str, Any]] = []
    for _, record in sorted(newest.items()):
        for kind, ref in declared_links(record.metadata):
            if store_target(ref) in targets:
                out.append(
                    {
                        "servable": record.label,
                        "title": _title(record),
                        "relation": kind.relation,
                        "relationType": kind.relation_type,
                        "dataset": ref,
                    }
                )
    return out


def _title(record: VersionRecord) -> str:
    titles = (record.metadata.get("datacite") or {}).get("titles") or []
    first = titles[0] if titles and isinstance(titles[0], dict) else {}
    return str(first.get("title") or "")
