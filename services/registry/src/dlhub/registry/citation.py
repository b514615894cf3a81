"""Citations of servable versions: DataCite 4.x JSON and BibTeX, built from a version's publication document.

Both carry the version's DOI when the publisher supplied one (``identifiers.doi_of``: the SDK placeholder
means "no DOI"), the creators with their ORCID iDs, the related identifiers (the paper, training data ...),
our version number and the URL of the version in the registry. Without a DOI the DataCite identifier is that
URL (``identifierType`` "URL"). Nothing here depends on HTTP; ``handlers_citation`` serves the results.

A deleted version (a tombstone, which keeps its ``datacite`` section) is still citable, since a DOI must keep
resolving: its citation says it was withdrawn (BibTeX ``note``; DataCite ``state`` "registered", a
``Withdrawn`` date and a description) and its DataCite ``url`` is the citation itself, the one page of the
version that still answers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from dlhub.registry.datasets import is_dataset, links_of
from dlhub.registry.identifiers import (
    ORCID_URL_PREFIX,
    doi_of,
    is_orcid_scheme,
    orcid_id,
    related_identifiers,
)
from dlhub.registry.store import VersionRecord

DATACITE_SCHEMA: Final = "http://datacite.org/schema/kernel-4"
DEFAULT_PUBLISHER: Final = "DLHub"
DEFAULT_RESOURCE_TYPE: Final = "InteractiveResource"
DATASET_RESOURCE_TYPE: Final = "Dataset"
BIBTEX_ENTRY_TYPES: Final = {"Software": "software", DATASET_RESOURCE_TYPE: "dataset"}
"""biblatex entry types by resourceTypeGeneral; anything else is ``@misc``. ``@dataset`` (biblatex 3.8+)
rather than ``@misc`` for datasets, as ``@software`` for software: biblatex styles show them as such, and
classic BibTeX styles treat an unknown entry type as ``@misc``."""

# --- shared helpers --------------------------------------------------------------------------------------


def version_url(api_base: str, owner: str, name: str, version: int) -> str:
    """The registry URL of one version (``api_base`` ends with ``/api/v1``)."""
    return f"{api_base.rstrip('/')}/servables/{owner}/{name}/versions/{version}"


def servable_url(api_base: str, owner: str, name: str) -> str:
    return f"{api_base.rstrip('/')}/servables/{owner}/{name}"


def _datacite(metadata: dict[str, Any]) -> dict[str, Any]:
    section = metadata.get("datacite")
    return section if isinstance(section, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def publication_year(record: VersionRecord) -> str:
    """``datacite.publicationYear``, or the year the version was published when that is empty."""
    year = _text(_datacite(record.metadata).get("publicationYear"))
    return year or str(_published(record).year)


def _published(record: VersionRecord) -> datetime:
    return datetime.fromtimestamp(record.published_at_ms / 1000.0, tz=UTC)


def _title(record: VersionRecord) -> str:
    titles = _dicts(_datacite(record.metadata).get("titles"))
    return _text(titles[0].get("title")) if titles else ""


def _publisher(record: VersionRecord) -> str:
    return _text(_datacite(record.metadata).get("publisher")) or DEFAULT_PUBLISHER


def _resource_type(record: VersionRecord) -> dict[str, Any]:
    """The document's ``resourceType``; a dataset is always ``Dataset`` (whatever its document says)."""
    value = _datacite(record.metadata).get("resourceType")
    out = dict(value) if isinstance(value, dict) else {}
    if is_dataset(record.metadata):
        out["resourceTypeGeneral"] = DATASET_RESOURCE_TYPE
    out.setdefault("resourceTypeGeneral", DEFAULT_RESOURCE_TYPE)
    return out


def _dataset_links(record: VersionRecord, api_base: str) -> list[dict[str, Any]]:
    """The DLHub datasets the version names, as URL related identifiers (its DOIs are stored ones)."""
    out: list[dict[str, Any]] = []
    for link in links_of(record.metadata):
        if link["kind"] != "dlhub":
            continue
        owner, _, rest = link["dataset"].partition("/")
        name, _, version = rest.partition("@")
        url = (
            version_url(api_base, owner, name, int(version))
            if version.isascii() and version.isdigit()
            else servable_url(api_base, owner, name)
        )
        out.append(
            {"relatedIdentifier": url, "relatedIdentifierType": "URL", "relationType": link["relationType"]}
        )
    return out


def creator_parts(creator: dict[str, Any]) -> tuple[str, str, str]:
    """(family, given, literal name) of a DataCite creator; literal is ``creatorName``/``name`` if any."""
    family = _text(creator.get("familyName"))
    given = _text(creator.get("givenName"))
    literal = _text(creator.get("creatorName") or creator.get("name"))
    return family, given, literal


def _orcids(person: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for entry in _dicts(person.get("nameIdentifiers")):
        if is_orcid_scheme(entry):
            bare = orcid_id(_text(entry.get("nameIdentifier")))
            if bare is not None:
                out.append(bare)
    return out


# --- DataCite --------------------------------------------------------------------------------------------


def _name_identifiers(person: dict[str, Any]) -> list[dict[str, Any]]:
    """Name identifiers with ORCID iDs written as ``https://orcid.org/<id>`` URLs; others unchanged."""
    out: list[dict[str, Any]] = []
    for entry in _dicts(person.get("nameIdentifiers")):
        if is_orcid_scheme(entry):
            bare = orcid_id(_text(entry.get("nameIdentifier")))
            if bare is None:
                continue  # refused at publish time; older versions may still hold one
            out.append(
                {
                    "nameIdentifier": ORCID_URL_PREFIX + bare,
                    "nameIdentifierScheme": "ORCID",
                    "schemeURI": "https://orcid.org",
                }
            )
        else:
            out.append(dict(entry))
    return out


def _datacite_person(person: dict[str, Any], *, contributor: bool = False) -> dict[str, Any]:
    family, given, literal = creator_parts(person)
    name = f"{family}, {given}" if family and given else family or given or literal
    out: dict[str, Any] = {"name": name}
    if family or given:
        out["nameType"] = "Personal"
        if given:
            out["givenName"] = given
        if family:
            out["familyName"] = family
    affiliations = person.get("affiliations", person.get("affiliation"))
    if isinstance(affiliations, list):
        out["affiliation"] = [str(a) for a in affiliations if _text(a)]
    elif isinstance(affiliations, str) and affiliations.strip():
        out["affiliation"] = [affiliations.strip()]
    out["nameIdentifiers"] = _name_identifiers(person)
    if contributor and person.get("contributorType"):
        out["contributorType"] = str(person["contributorType"])
    return out


def _dates(record: VersionRecord) -> list[dict[str, Any]]:
    dates = [dict(d) for d in _dicts(_datacite(record.metadata).get("dates"))]
    if not any(str(d.get("dateType", "")).lower() == "issued" for d in dates):
        dates.append({"date": _published(record).date().isoformat(), "dateType": "Issued"})
    if record.deleted:
        dates.append({"date": withdrawn_date(record), "dateType": "Withdrawn"})
    return dates


def withdrawn_date(record: VersionRecord) -> str:
    """The day a tombstone was deleted (ISO 8601), or "" when the store did not record it."""
    if not record.deleted_at_ms:
        return ""
    return datetime.fromtimestamp(record.deleted_at_ms / 1000.0, tz=UTC).date().isoformat()


def withdrawal_notice(record: VersionRecord) -> str:
    when = withdrawn_date(record)
    return f"Withdrawn: this version was deleted{' on ' + when if when else ''} and can no longer be run."


def citation_url(api_base: str, record: VersionRecord) -> str:
    return version_url(api_base, record.owner, record.name, record.version) + "/citation"


def _descriptions(record: VersionRecord) -> list[dict[str, Any]]:
    descriptions = [dict(d) for d in _dicts(_datacite(record.metadata).get("descriptions"))]
    if record.deleted:
        descriptions.append({"description": withdrawal_notice(record), "descriptionType": "Other"})
    return descriptions


def datacite_json(record: VersionRecord, *, api_base: str) -> dict[str, Any]:
    """The DataCite 4.x JSON of ``record`` (``api_base``: the registry's API URL, ending ``/api/v1``)."""
    datacite = _datacite(record.metadata)
    url = version_url(api_base, record.owner, record.name, record.version)
    doi = doi_of(record.metadata)
    identifier = (
        {"identifier": doi, "identifierType": "DOI"} if doi else {"identifier": url, "identifierType": "URL"}
    )
    alternates = [dict(a) for a in _dicts(datacite.get("alternateIdentifiers"))]
    alternates.append({"alternateIdentifier": record.label, "alternateIdentifierType": "DLHub"})
    related = [dict(r) for r in related_identifiers(record.metadata)]
    related.extend(_dataset_links(record, api_base))
    related.append(
        {
            "relatedIdentifier": servable_url(api_base, record.owner, record.name),
            "relatedIdentifierType": "URL",
            "relationType": "IsVersionOf",
        }
    )
    out: dict[str, Any] = {
        "schemaVersion": DATACITE_SCHEMA,
        "identifier": identifier,
        "creators": [_datacite_person(c) for c in _dicts(datacite.get("creators"))],
        "titles": [dict(t) for t in _dicts(datacite.get("titles"))],
        "publisher": _publisher(record),
        "publicationYear": publication_year(record),
        "resourceType": _resource_type(record),
        "subjects": [dict(s) for s in _dicts(datacite.get("subjects"))],
        "contributors": [_datacite_person(c, contributor=True) for c in _dicts(datacite.get("contributors"))],
        "dates": _dates(record),
        "alternateIdentifiers": alternates,
        "relatedIdentifiers": related,
        "version": str(record.version),
        "rightsList": [dict(r) for r in _dicts(datacite.get("rightsList"))],
        "descriptions": _descriptions(record),
        "fundingReferences": [dict(f) for f in _dicts(datacite.get("fundingReferences"))],
        "url": url,
    }
    if doi:
        out["doi"] = doi
    if record.deleted:
        # DataCite's state for a DOI that still resolves but is no longer findable (a tombstone page).
        out["state"] = "registered"
        out["url"] = citation_url(api_base, record)
    return out


# --- BibTeX ----------------------------------------------------------------------------------------------

_BIBTEX_SPECIALS: Final = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
}
_BIBTEX_SPECIALS_RE: Final = re.compile("|".join(re.escape(c) for c in _BIBTEX_SPECIALS))
_WHITESPACE_RE: Final = re.compile(r"\s+")
_KEY_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9_.:-]+")
_AND_RE: Final = re.compile(r"\band\b", re.IGNORECASE)
_VERBATIM_ESCAPES: Final = {"{": "%7B", "}": "%7D", "\\": "%5C", " ": "%20"}


def bibtex_escape(text: str) -> str:
    """LaTeX-escape ``text`` for a braced BibTeX field value (whitespace runs become one space).

    Non-ASCII characters stay as they are (the response is UTF-8, for biber or bibtex8/bibtexu).
    """
    flat = _WHITESPACE_RE.sub(" ", text).strip()
    return _BIBTEX_SPECIALS_RE.sub(lambda m: _BIBTEX_SPECIALS[m.group(0)], flat)


def bibtex_verbatim(text: str) -> str:
    """A URL or DOI for a verbatim field: kept literal; braces, backslashes, spaces percent-encoded."""
    return "".join(_VERBATIM_ESCAPES.get(ch, ch) for ch in text.strip())


def bibtex_key(owner: str, name: str, version: int) -> str:
    """A stable citation key, ``owner_name_v3``: the same for the same version, whichever URL asked."""
    return _KEY_UNSAFE_RE.sub("_", f"{owner}_{name}_v{version}")


def _protect(part: str) -> str:
    """Brace a name part BibTeX would otherwise split (it contains the word "and")."""
    escaped = bibtex_escape(part)
    return "{" + escaped + "}" if _AND_RE.search(part) else escaped


def bibtex_author(creator: dict[str, Any]) -> str:
    """One author as "Family, Given"; an organisation (a literal name only) in braces, kept whole."""
    family, given, literal = creator_parts(creator)
    if family and given:
        return f"{_protect(family)}, {_protect(given)}"
    if family or given:
        return _protect(family or given)
    if literal.count(",") == 1:  # a personal name written "Family, Given"
        last, first = (part.strip() for part in literal.split(","))
        if last and first:
            return f"{_protect(last)}, {_protect(first)}"
    if literal:
        return "{" + bibtex_escape(literal) + "}"
    return ""


def bibtex_authors(creators: list[dict[str, Any]]) -> str:
    return " and ".join(a for a in (bibtex_author(c) for c in creators) if a)


def _related_note(record: VersionRecord) -> str:
    parts = []
    for item in related_identifiers(record.metadata):
        if str(item.get("relatedIdentifierType") or "").upper() != "DOI":
            continue
        relation = _text(item.get("relationType")) or "References"
        parts.append(f"{relation} doi:{_text(item['relatedIdentifier'])}")
    return "; ".join(parts)


def bibtex(record: VersionRecord, *, api_base: str) -> str:
    """The BibTeX entry of ``record``: ``@software`` for Software, ``@dataset`` for datasets, else
    ``@misc``."""
    datacite = _datacite(record.metadata)
    entry_type = BIBTEX_ENTRY_TYPES.get(str(_resource_type(record)["resourceTypeGeneral"]), "misc")
    fields: list[tuple[str, str]] = []
    authors = bibtex_authors(_dicts(datacite.get("creators")))
    if authors:
        fields.append(("author", authors))
    title = _title(record) or record.shorthand_name
    fields.append(("title", "{" + bibtex_escape(title) + "}"))  # inner braces keep the capitalisation
    fields.append(("year", bibtex_escape(publication_year(record))))
    fields.append(("publisher", bibtex_escape(_publisher(record))))
    fields.append(("version", str(record.version)))
    doi = doi_of(record.metadata)
    if doi:
        fields.append(("doi", bibtex_verbatim(doi)))
    fields.append(("url", bibtex_verbatim(version_url(api_base, record.owner, record.name, record.version))))
    note = "; ".join(
        n for n in (withdrawal_notice(record) if record.deleted else "", _related_note(record)) if n
    )
    if note:
        fields.append(("note", bibtex_escape(note)))
    width = max(len(name) for name, _ in fields)
    body = ",\n".join(f"  {name.ljust(width)} = {{{value}}}" for name, value in fields)
    return f"@{entry_type}{{{bibtex_key(record.owner, record.name, record.version)},\n{body}\n}}\n"
