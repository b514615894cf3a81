"""Citations (BibTeX, DataCite JSON), DOI and ORCID validation, and search by DOI.

Unit tests of ``dlhub.registry.citation`` / ``identifiers``; end to end over HTTP against the real embedded
stack, through the SDK and the CLI: tests/stack/test_citation_http.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dlhub.client.metadata import python_function_document
from dlhub.common.config import DLHubSettings, RegistryConfig
from dlhub.common.errors import ValidationFailed
from dlhub.registry.citation import (
    bibtex,
    bibtex_author,
    bibtex_authors,
    bibtex_escape,
    bibtex_key,
    bibtex_verbatim,
    datacite_json,
    publication_year,
)
from dlhub.registry.http.citations import api_base
from dlhub.registry.http.keys import SETTINGS
from dlhub.registry.identifiers import (
    DOI_PLACEHOLDER,
    doi_of,
    is_doi,
    is_orcid,
    orcid_check_character,
    orcid_id,
    related_dois,
    validate_identifiers,
)
from dlhub.registry.metadata import search_document, validate_publication
from dlhub.registry.store import VersionRecord

API = "https://dlhub.example.org/api/v1"
ORCID = "0000-0002-1825-0097"  # ORCID's documented example iD (valid check digit)
ORCID_X = "0000-0002-1694-233X"  # check character X
PUBLISHED_MS = 1_700_000_000_000  # 2023-11-14


def document(**datacite: Any) -> dict[str, Any]:
    doc = python_function_document(
        name="cite_me",
        module="e2efns",
        function="noop",
        title="Band gaps of perovskites",
        authors=["Doe, Jane", "Müller, Ana"],
        files=["e2efns.py"],
    )
    doc["datacite"].update(datacite)
    return doc


def record(metadata: dict[str, Any], version: int = 3) -> VersionRecord:
    return VersionRecord(
        owner="alice",
        name="cite_me",
        version=version,
        status="ready",
        metadata=metadata,
        published_at_ms=PUBLISHED_MS,
    )


def cited_document() -> dict[str, Any]:
    doc = document(
        identifier={"identifier": "10.5555/dlhub.cite_me", "identifierType": "DOI"},
        relatedIdentifiers=[
            {
                "relatedIdentifier": "10.1000/paper.42",
                "relatedIdentifierType": "DOI",
                "relationType": "IsDescribedBy",
            },
            {
                "relatedIdentifier": "10.5281/zenodo.999",
                "relatedIdentifierType": "DOI",
                "relationType": "IsDerivedFrom",
            },
            {
                "relatedIdentifier": "https://example.org/code",
                "relatedIdentifierType": "URL",
                "relationType": "IsSupplementedBy",
            },
        ],
        publicationYear="",
    )
    doc["datacite"]["creators"][0]["nameIdentifiers"] = [
        {"nameIdentifier": f"https://orcid.org/{ORCID}", "nameIdentifierScheme": "ORCID"}
    ]
    return doc


# --- identifiers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("10.5555/dlhub.cite_me", True),
        ("10.1000/ABC(1)<2>;3", True),
        ("10.12345678/x", True),
        ("10.123/x", False),  # registrant code of 4-9 digits
        ("10.1234567890/x", False),
        ("10.5555/", False),
        ("10.5555/with space", False),
        ("https://doi.org/10.5555/x", False),
        ("doi:10.5555/x", False),
        ("11.5555/x", False),
        ("", False),
    ],
)
def test_doi_format(value: str, ok: bool) -> None:
    assert is_doi(value) is ok


def test_orcid_checksum() -> None:
    assert orcid_check_character("000000021825009") == "7"
    assert orcid_check_character("000000021694233") == "X"
    assert is_orcid(ORCID) and is_orcid(ORCID_X) and is_orcid("https://orcid.org/0000-0001-5109-3700")
    assert orcid_id(f"https://orcid.org/{ORCID}") == ORCID
    assert not is_orcid("0000-0002-1825-0098")  # wrong check digit
    assert not is_orcid("0000-0002-1694-2330")
    assert not is_orcid("0000-0002-1825-009")
    assert not is_orcid("0000000218250097")
    assert not is_orcid("http://orcid.org/0000-0002-1825-0097")
    assert not is_orcid("0000-0002-1694-233x")


def test_placeholder_means_no_doi() -> None:
    doc = document()
    assert doc["datacite"]["identifier"]["identifier"] == DOI_PLACEHOLDER
    validate_identifiers(doc)
    assert doi_of(doc) == ""
    assert (
        doi_of(document(identifier={"identifier": "10.DataCite/Placeholder", "identifierType": "DOI"})) == ""
    )
    assert doi_of(document(identifier={"identifier": "10.5555/x", "identifierType": "DOI"})) == "10.5555/x"
    assert doi_of(document(identifier={"identifier": "10.5555/x", "identifierType": "URL"})) == ""
    assert doi_of({}) == ""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda d: d["datacite"]["identifier"].update(identifier="10.55/x"),
            "datacite.identifier.identifier",
        ),
        (
            lambda d: d["datacite"]["identifier"].update(identifier="https://doi.org/10.5555/x"),
            "datacite.identifier.identifier",
        ),
        (lambda d: d["datacite"]["identifier"].update(identifier=""), "datacite.identifier.identifier"),
        (
            lambda d: d["datacite"]["relatedIdentifiers"][1].update(relatedIdentifier="paper"),
            "datacite.relatedIdentifiers[1].relatedIdentifier",
        ),
        (
            lambda d: d["datacite"]["relatedIdentifiers"][0].pop("relatedIdentifier"),
            "datacite.relatedIdentifiers[0].relatedIdentifier",
        ),
        (
            lambda d: d["datacite"]["creators"][0]["nameIdentifiers"][0].update(
                nameIdentifier="0000-0002-1825-0098"
            ),
            "datacite.creators[0].nameIdentifiers[0].nameIdentifier",
        ),
        (
            lambda d: d["datacite"]["creators"][1].update(
                nameIdentifiers=[{"nameIdentifier": "jane", "nameIdentifierScheme": "orcid"}]
            ),
            "datacite.creators[1].nameIdentifiers[0].nameIdentifier",
        ),
        (
            lambda d: d["datacite"].update(
                contributors=[{"nameIdentifiers": [{"nameIdentifier": "1", "nameIdentifierScheme": "ORCID"}]}]
            ),
            "datacite.contributors[0].nameIdentifiers[0].nameIdentifier",
        ),
    ],
)
def test_malformed_identifiers_name_the_field(change: Any, field: str) -> None:
    doc = cited_document()
    validate_publication(copy.deepcopy(doc))
    change(doc)
    with pytest.raises(ValidationFailed) as caught:
        validate_publication(doc)
    assert caught.value.field == field


def test_other_identifier_schemes_are_not_checked() -> None:
    doc = cited_document()
    doc["datacite"]["relatedIdentifiers"].append(
        {"relatedIdentifier": "arXiv:2101.00001", "relatedIdentifierType": "arXiv", "relationType": "Cites"}
    )
    doc["datacite"]["creators"][1]["nameIdentifiers"] = [
        {"nameIdentifier": "whatever", "nameIdentifierScheme": "ISNI"}
    ]
    validate_publication(doc)
    assert related_dois(doc) == ["10.1000/paper.42", "10.5281/zenodo.999"]


def test_search_document_carries_the_dois() -> None:
    doc = cited_document()
    entry = search_document(owner="alice", name="cite_me", version=3, metadata=doc, published_at_ms=1)
    assert entry.doi == "10.5555/dlhub.cite_me"
    assert entry.related_identifiers == ["10.1000/paper.42", "10.5281/zenodo.999", "https://example.org/code"]
    plain = search_document(owner="alice", name="x", version=1, metadata=document(), published_at_ms=1)
    assert plain.doi == "" and plain.related_identifiers == []


# --- BibTeX --------------------------------------------------------------------------------------------


def test_bibtex_escaping() -> None:
    assert bibtex_escape("50% of $x_1$ & {y} #2 ^ ~ \\") == (
        r"50\% of \$x\_1\$ \& \{y\} \#2 \textasciicircum{} \textasciitilde{} \textbackslash{}"
    )
    assert bibtex_escape("  two\n lines\t") == "two lines"
    assert bibtex_escape("Zürich") == "Zürich"
    assert bibtex_verbatim("10.1000/a_b{c}") == "10.1000/a_b%7Bc%7D"
    assert bibtex_key("alice", "iris-rf.v2", 3) == "alice_iris-rf.v2_v3"


def test_bibtex_authors() -> None:
    assert bibtex_author({"familyName": "Doe", "givenName": "Jane"}) == "Doe, Jane"
    assert bibtex_author({"familyName": "van der Berg", "givenName": "Jan"}) == "van der Berg, Jan"
    assert bibtex_author({"familyName": "Anderson", "givenName": "Sand"}) == "Anderson, Sand"
    assert bibtex_author({"familyName": "Smith and Jones"}) == "{Smith and Jones}"
    assert bibtex_author({"creatorName": "Argonne National Laboratory"}) == "{Argonne National Laboratory}"
    assert bibtex_author({"creatorName": "Curie, Marie"}) == "Curie, Marie"
    assert bibtex_author({"creatorName": "Lab A, Lab B, Lab C"}) == "{Lab A, Lab B, Lab C}"
    assert bibtex_author({"familyName": "O'Neil & Co", "givenName": "Ann"}) == r"O'Neil \& Co, Ann"
    creators = [{"familyName": "Doe", "givenName": "Jane"}, {}, {"familyName": "Müller", "givenName": "Ana"}]
    assert bibtex_authors(creators) == "Doe, Jane and Müller, Ana"


def test_bibtex_entry() -> None:
    text = bibtex(record(cited_document()), api_base=API)
    assert text.startswith("@misc{alice_cite_me_v3,\n") and text.endswith("}\n")
    lines = {line.split("=")[0].strip(): line.split("=", 1)[1].strip() for line in text.splitlines()[1:-1]}
    assert lines["author"] == "{Doe, Jane and Müller, Ana},"
    assert lines["title"] == "{{Band gaps of perovskites}},"
    assert lines["year"] == "{2023},"  # publicationYear is empty: the publication date's year
    assert lines["publisher"] == "{DLHub},"
    assert lines["version"] == "{3},"
    assert lines["doi"] == "{10.5555/dlhub.cite_me},"
    assert lines["url"] == "{https://dlhub.example.org/api/v1/servables/alice/cite_me/versions/3},"
    assert lines["note"] == "{IsDescribedBy doi:10.1000/paper.42; IsDerivedFrom doi:10.5281/zenodo.999}"
    assert text.count("{") == text.count("}")


def test_bibtex_without_doi_and_with_specials() -> None:
    doc = document(publicationYear="2021", publisher="Lab & Co")
    doc["datacite"]["titles"][0]["title"] = "Iris_RF: 100% {accurate}"
    doc["datacite"]["resourceType"] = {"resourceTypeGeneral": "Software"}
    text = bibtex(record(doc, version=1), api_base=API)
    assert text.startswith("@software{alice_cite_me_v1,")
    assert "doi" not in text and "note" not in text
    assert r"{{Iris\_RF: 100\% \{accurate\}}}" in text
    assert r"{Lab \& Co}" in text and "{2021}" in text


# --- DataCite ------------------------------------------------------------------------------------------


def test_datacite_json() -> None:
    out = datacite_json(record(cited_document()), api_base=API)
    url = f"{API}/servables/alice/cite_me/versions/3"
    assert out["identifier"] == {"identifier": "10.5555/dlhub.cite_me", "identifierType": "DOI"}
    assert out["doi"] == "10.5555/dlhub.cite_me"
    assert out["url"] == url and out["version"] == "3" and out["publicationYear"] == "2023"
    jane, ana = out["creators"]
    assert jane["name"] == "Doe, Jane" and jane["nameType"] == "Personal" and jane["familyName"] == "Doe"
    assert jane["nameIdentifiers"] == [
        {
            "nameIdentifier": f"https://orcid.org/{ORCID}",
            "nameIdentifierScheme": "ORCID",
            "schemeURI": "https://orcid.org",
        }
    ]
    assert ana["name"] == "Müller, Ana" and ana["nameIdentifiers"] == []
    assert out["titles"] == [{"title": "Band gaps of perovskites"}]
    assert out["publisher"] == "DLHub"
    assert out["resourceType"] == {"resourceTypeGeneral": "InteractiveResource"}
    related = out["relatedIdentifiers"]
    assert related[0] == {
        "relatedIdentifier": "10.1000/paper.42",
        "relatedIdentifierType": "DOI",
        "relationType": "IsDescribedBy",
    }
    assert related[-1] == {
        "relatedIdentifier": f"{API}/servables/alice/cite_me",
        "relatedIdentifierType": "URL",
        "relationType": "IsVersionOf",
    }
    assert {"date": "2023-11-14", "dateType": "Issued"} in out["dates"]
    assert {"alternateIdentifier": "alice/cite_me@3", "alternateIdentifierType": "DLHub"} in out[
        "alternateIdentifiers"
    ]
    json.dumps(out)  # plain JSON


def test_datacite_without_doi_uses_the_url() -> None:
    doc = document(publicationYear=2020, dates=[{"date": "2019-01-01", "dateType": "Issued"}])
    out = datacite_json(record(doc, version=1), api_base=API + "/")
    assert out["identifier"] == {
        "identifier": f"{API}/servables/alice/cite_me/versions/1",
        "identifierType": "URL",
    }
    assert "doi" not in out and out["publicationYear"] == "2020"
    assert out["dates"] == [{"date": "2019-01-01", "dateType": "Issued"}]
    assert publication_year(record(document(publicationYear=""))) == "2023"


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        (None, "http://registry.local:8642/api/v1"),
        ("https://dlhub.example.org", "https://dlhub.example.org/api/v1"),
        ("https://dlhub.example.org/api/v1/", "https://dlhub.example.org/api/v1"),
    ],
)
def test_api_base(public_url: str | None, expected: str) -> None:
    app = web.Application()
    app[SETTINGS] = DLHubSettings(registry=RegistryConfig(public_url=public_url))
    request = make_mocked_request("GET", "/x", headers={"Host": "registry.local:8642"}, app=app)
    assert api_base(request) == expected


# --- end to end ------------------------------------------------------------------------------------------


def stack_document(name: str, tag: str, **dlhub: Any) -> dict[str, Any]:
    doc = cited_document()
    doc["dlhub"]["name"] = name
    doc["dlhub"].update(dlhub)
    doc["datacite"]["identifier"]["identifier"] = f"10.5555/dlhub.{tag}"
    doc["datacite"]["relatedIdentifiers"][0]["relatedIdentifier"] = f"10.1000/Paper.{tag}"
    doc["datacite"]["relatedIdentifiers"][1]["relatedIdentifier"] = f"10.5281/zenodo.{tag}"
    return doc


# --- withdrawn (deleted) versions ---------------------------------------------------------------------------

DELETED_MS = 1_750_000_000_000  # 2025-06-15


def tombstone(metadata: dict[str, Any], version: int = 3) -> VersionRecord:
    return VersionRecord(
        owner="alice",
        name="cite_me",
        version=version,
        status="deleted",
        metadata=metadata,
        published_at_ms=PUBLISHED_MS,
        deleted_at_ms=DELETED_MS,
        deleted_by="alice",
    )


def test_citations_of_a_tombstone_say_withdrawn() -> None:
    doc = cited_document()
    text = bibtex(tombstone(doc), api_base=API)
    note = next(line for line in text.splitlines() if line.strip().startswith("note"))
    assert "Withdrawn: this version was deleted on 2025-06-15" in note
    assert "IsDescribedBy doi:10.1000/paper.42" in note  # the related DOIs are still there
    assert "{10.5555/dlhub.cite_me}" in text  # the DOI is kept: it must keep resolving

    out = datacite_json(tombstone(doc), api_base=API)
    assert out["state"] == "registered" and out["doi"] == "10.5555/dlhub.cite_me"
    assert {"date": "2025-06-15", "dateType": "Withdrawn"} in out["dates"]
    assert out["descriptions"][-1]["descriptionType"] == "Other"
    assert out["descriptions"][-1]["description"].startswith("Withdrawn")
    assert out["url"] == f"{API}/servables/alice/cite_me/versions/3/citation"
    live = datacite_json(record(doc), api_base=API)
    assert "state" not in live and all(d["dateType"] != "Withdrawn" for d in live["dates"])
    assert "Withdrawn" not in bibtex(record(doc), api_base=API)
