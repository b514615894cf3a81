"""Persistent identifiers in publication documents: DOIs and ORCID iDs.

A version carries a DOI when its ``datacite.identifier`` has ``identifierType`` "DOI" and an identifier other
than the DLHub SDK's placeholder ``10.datacite/placeholder`` (which means "no DOI"). At publish time
``validate_identifiers`` checks the format of that DOI, of every related identifier of type DOI and of every
ORCID name identifier of the creators and contributors (including the ISO 7064 11,2 check character), and
raises ``ValidationFailed`` naming the offending field (``datacite.relatedIdentifiers[0].relatedIdentifier``).
This module depends on nothing else in the registry so that ``metadata`` and ``citation`` can both use it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from dlhub.common.errors import ValidationFailed

DOI_PLACEHOLDER: Final = "10.datacite/placeholder"
"""What the DLHub SDK writes when the publisher has no DOI."""
DOI_RE: Final = re.compile(r"^10\.\d{4,9}/\S+$", re.IGNORECASE)
ORCID_RE: Final = re.compile(r"^(?:https://orcid\.org/)?(?P<id>\d{4}-\d{4}-\d{4}-\d{3}[\dX])$")
ORCID_URL_PREFIX: Final = "https://orcid.org/"


def is_doi(value: str) -> bool:
    """Whether ``value`` is a DOI name (``10.<registrant>/<suffix>``, no URL prefix)."""
    return bool(DOI_RE.fullmatch(value))


def orcid_check_character(base_digits: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 15 digits of an ORCID iD."""
    total = 0
    for digit in base_digits:
        total = (total + int(digit)) * 2
    result = (12 - total % 11) % 11
    return "X" if result == 10 else str(result)


def orcid_id(value: str) -> str | None:
    """The bare ``0000-0002-1825-0097`` form of a valid ORCID iD (bare or ``https://orcid.org/`` URL)."""
    match = ORCID_RE.fullmatch(value.strip())
    if match is None:
        return None
    bare = match.group("id")
    digits = bare.replace("-", "")
    if orcid_check_character(digits[:15]) != digits[15]:
        return None
    return bare


def is_orcid(value: str) -> bool:
    return orcid_id(value) is not None


def doi_of(metadata: dict[str, Any]) -> str:
    """The version's own DOI, or "" when it has none (no DOI identifier, or the SDK placeholder)."""
    datacite = metadata.get("datacite")
    identifier = datacite.get("identifier") if isinstance(datacite, dict) else None
    if not isinstance(identifier, dict):
        return ""
    if str(identifier.get("identifierType") or "").upper() != "DOI":
        return ""
    value = identifier.get("identifier")
    if not isinstance(value, str) or value.strip().lower() == DOI_PLACEHOLDER:
        return ""
    return value.strip()


def related_identifiers(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's ``datacite.relatedIdentifiers`` entries that are objects with an identifier."""
    datacite = metadata.get("datacite")
    items = datacite.get("relatedIdentifiers") if isinstance(datacite, dict) else None
    if not isinstance(items, list):
        return []
    return [
        item
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("relatedIdentifier"), str)
        and item["relatedIdentifier"].strip()
    ]


def related_dois(metadata: dict[str, Any]) -> list[str]:
    """The DOIs among the related identifiers (paper, training data ...), in document order."""
    return [
        item["relatedIdentifier"].strip()
        for item in related_identifiers(metadata)
        if str(item.get("relatedIdentifierType") or "").upper() == "DOI"
    ]


def is_orcid_scheme(name_identifier: dict[str, Any]) -> bool:
    return str(name_identifier.get("nameIdentifierScheme") or "").upper() == "ORCID"


def _check_doi(value: Any, field: str, what: str) -> None:
    if not isinstance(value, str) or not is_doi(value.strip()):
        raise ValidationFailed(
            f"{field}: {what} {value!r} is not a DOI; expected 10.<registrant>/<suffix> "
            "(e.g. 10.5281/zenodo.1234567, without https://doi.org/)",
            field=field,
        )


def _check_name_identifiers(people: Any, section: str) -> None:
    if not isinstance(people, list):
        return
    for i, person in enumerate(people):
        identifiers = person.get("nameIdentifiers") if isinstance(person, dict) else None
        if not isinstance(identifiers, list):
            continue
        for j, entry in enumerate(identifiers):
            if not isinstance(entry, dict) or not is_orcid_scheme(entry):
                continue
            field = f"datacite.{section}[{i}].nameIdentifiers[{j}].nameIdentifier"
            value = entry.get("nameIdentifier")
            if not isinstance(value, str) or not ORCID_RE.fullmatch(value.strip()):
                raise ValidationFailed(
                    f"{field}: {value!r} is not an ORCID iD; expected 0000-0000-0000-000X "
                    "or https://orcid.org/0000-0000-0000-000X",
                    field=field,
                )
            if not is_orcid(value):
                raise ValidationFailed(
                    f"{field}: {value!r} fails the ORCID check digit (ISO 7064 11,2)", field=field
                )


def validate_identifiers(document: dict[str, Any]) -> None:
    """Check the DOI, related DOIs and ORCID iDs of a (schema-valid) publication document."""
    datacite = document.get("datacite")
    if not isinstance(datacite, dict):
        return
    identifier = datacite.get("identifier")
    if isinstance(identifier, dict) and str(identifier.get("identifierType") or "").upper() == "DOI":
        value = identifier.get("identifier")
        if not (isinstance(value, str) and value.strip().lower() == DOI_PLACEHOLDER):
            _check_doi(value, "datacite.identifier.identifier", "the identifier")
    items = datacite.get("relatedIdentifiers")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and str(item.get("relatedIdentifierType") or "").upper() == "DOI":
                field = f"datacite.relatedIdentifiers[{i}].relatedIdentifier"
                _check_doi(item.get("relatedIdentifier"), field, "the related identifier")
    _check_name_identifiers(datacite.get("creators"), "creators")
    _check_name_identifiers(datacite.get("contributors"), "contributors")
