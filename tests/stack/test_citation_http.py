"""Citations over HTTP, the SDK and the CLI on the session's embedded stack (split from
tests/unit/test_citation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.common.errors import NotFound, ValidationFailed
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique
from tests.unit.test_citation import ORCID, document, stack_document


@pytest.fixture(scope="module")
def cited(alice: DLHubClient, pkg_dir: Path) -> tuple[str, str]:
    """A servable with two versions, a DOI, a paper DOI and an ORCID: (owner/name, unique tag)."""
    tag = uuid.uuid4().hex[:10]
    name = unique("cited")
    doc = stack_document(name, tag)
    reply = alice.publish(doc, base_dir=pkg_dir)
    assert reply["status"] == "ready" and reply["version"] == 1
    doc["datacite"]["titles"][0]["title"] = "Band gaps of perovskites, revised"
    assert alice.update(f"alice/{name}", doc)["version"] == 2
    return f"alice/{name}", tag


def test_bibtex_over_http_latest_and_pinned(stack: StackInfo, cited: tuple[str, str]) -> None:
    ref, tag = cited
    name = ref.split("/")[1]
    response = httpx.get(f"{stack.api}/servables/{ref}/citation", params={"format": "bibtex"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-bibtex; charset=utf-8"
    text = response.content.decode("utf-8")
    assert text.startswith(f"@misc{{alice_{name}_v2,")
    assert "{Doe, Jane and Müller, Ana}" in text
    assert "{{Band gaps of perovskites, revised}}" in text
    assert f"{{10.5555/dlhub.{tag}}}" in text
    assert f"{{{stack.api}/servables/{ref}/versions/2}}" in text
    assert f"IsDescribedBy doi:10.1000/Paper.{tag}" in text
    # no format: BibTeX as well
    assert httpx.get(f"{stack.api}/servables/{ref}/citation").text == text

    pinned = httpx.get(f"{stack.api}/servables/{ref}/versions/1/citation", params={"format": "bibtex"})
    assert pinned.status_code == 200 and pinned.text.startswith(f"@misc{{alice_{name}_v1,")
    assert "{{Band gaps of perovskites}}" in pinned.text and "/versions/1}" in pinned.text


def test_datacite_over_http_latest_and_pinned(
    stack: StackInfo, alice: DLHubClient, cited: tuple[str, str]
) -> None:
    ref, tag = cited
    response = httpx.get(f"{stack.api}/servables/{ref}/citation", params={"format": "datacite"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    latest = response.json()
    assert latest["identifier"] == {"identifier": f"10.5555/dlhub.{tag}", "identifierType": "DOI"}
    assert latest["version"] == "2" and latest["url"] == f"{stack.api}/servables/{ref}/versions/2"
    assert latest["creators"][0]["nameIdentifiers"][0]["nameIdentifier"] == f"https://orcid.org/{ORCID}"
    assert {
        "relatedIdentifier": f"10.1000/Paper.{tag}",
        "relatedIdentifierType": "DOI",
        "relationType": "IsDescribedBy",
    } in latest["relatedIdentifiers"]
    assert latest["publicationYear"].isdigit()

    pinned = alice.citation(f"{ref}@1", format="datacite")
    assert isinstance(pinned, dict)
    assert pinned["version"] == "1" and pinned["titles"] == [{"title": "Band gaps of perovskites"}]
    bib = alice.citation(ref)
    assert isinstance(bib, str) and "_v2," in bib


def test_citation_errors(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, cited: tuple[str, str]
) -> None:
    ref, _ = cited
    response = httpx.get(f"{stack.api}/servables/{ref}/citation", params={"format": "ris"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == "format"
    assert httpx.get(f"{stack.api}/servables/{ref}/versions/9/citation").status_code == 404
    assert httpx.get(f"{stack.api}/servables/alice/no_such_servable/citation").status_code == 404
    with pytest.raises(ValidationFailed) as caught:
        alice.citation(ref, format="xml")
    assert caught.value.field == "format"


def test_invisible_servable_citation_is_404(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("private_cite")
    alice.publish(stack_document(name, uuid.uuid4().hex[:10], visible_to=["user:alice"]), base_dir=pkg_dir)
    assert "@misc" in str(alice.citation(f"alice/{name}"))
    for path in (f"alice/{name}", f"alice/{name}@1"):
        with pytest.raises(NotFound):
            bob.citation(path)
        with pytest.raises(NotFound):
            bob.citation(path, format="datacite")
    assert httpx.get(f"{stack.api}/servables/alice/{name}/citation").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda d: d["datacite"]["identifier"].update(identifier="10.5/bad"),
            "datacite.identifier.identifier",
        ),
        (
            lambda d: d["datacite"]["relatedIdentifiers"][0].update(relatedIdentifier="doi.org/10.1000/x"),
            "datacite.relatedIdentifiers[0].relatedIdentifier",
        ),
        (
            lambda d: d["datacite"]["creators"][0]["nameIdentifiers"][0].update(
                nameIdentifier="https://orcid.org/0000-0002-1825-0098"
            ),
            "datacite.creators[0].nameIdentifiers[0].nameIdentifier",
        ),
    ],
)
def test_publish_refuses_malformed_identifiers(
    alice: DLHubClient, pkg_dir: Path, change: Any, field: str
) -> None:
    doc = stack_document(unique("bad_doi"), "x")
    change(doc)
    with pytest.raises(ValidationFailed) as caught:
        alice.publish(doc, base_dir=pkg_dir)
    assert caught.value.field == field


def test_placeholder_publishes_without_a_doi(alice: DLHubClient, pkg_dir: Path) -> None:
    name = unique("no_doi")
    doc = document()
    doc["dlhub"]["name"] = name
    alice.publish(doc, base_dir=pkg_dir)
    text = alice.citation(f"alice/{name}")
    assert isinstance(text, str) and "  doi " not in text and "10.datacite" not in text
    out = alice.citation(f"alice/{name}", format="datacite")
    assert isinstance(out, dict) and out["identifier"]["identifierType"] == "URL" and "doi" not in out


def test_search_by_doi_and_related_doi(alice: DLHubClient, bob: DLHubClient, cited: tuple[str, str]) -> None:
    ref, tag = cited
    name = ref.split("/")[1]

    def names(**filters: Any) -> list[str]:
        return [h["name"] for h in alice.search(**filters)["hits"]]

    wait_until(
        lambda: names(doi=f"10.5555/dlhub.{tag}") == [name],
        timeout_s=10,
        message="search by the servable's DOI",
    )
    hit = alice.search(doi=f"10.5555/DLHUB.{tag}")["hits"][0]
    assert hit["name"] == name and hit["version"] == 2 and hit["doi"] == f"10.5555/dlhub.{tag}"
    assert f"10.1000/Paper.{tag}" in hit["related_identifiers"]
    assert names(doi=f"10.1000/paper.{tag}") == [name]  # the paper's DOI, any case
    assert names(doi=f"10.5281/zenodo.{tag}") == [name]  # the training data
    assert names(doi=f"10.1000/paper.{tag}", author="Müller") == [name]
    assert names(doi=f"10.1000/paper.{tag}", author="Nobody") == []
    assert names(doi=f"10.5555/dlhub.{tag}x") == []
    assert [h["name"] for h in bob.search(doi=f"10.5555/dlhub.{tag}")["hits"]] == [name]


def test_cli_cite_and_search_by_doi(stack: StackInfo, cited: tuple[str, str], tmp_path: Path) -> None:
    ref, tag = cited
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])

    def dlhub(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert dlhub("cite", f"{ref}@1").startswith("@misc{")
    assert json.loads(dlhub("cite", ref, "--format", "datacite"))["version"] == "2"
    hits = json.loads(dlhub("search", "--doi", f"10.1000/paper.{tag}", "--json"))["hits"]
    assert [h["shorthand_name"] for h in hits] == [ref]


def test_citation_of_deleted_versions_over_http(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    name = unique("withdrawn")
    ref = f"alice/{name}"
    doc = stack_document(name, tag)
    alice.publish(doc, base_dir=pkg_dir)
    assert alice.update(ref, doc)["version"] == 2
    assert alice.delete(f"{ref}@2") == {"deleted": [2]}

    pinned = httpx.get(f"{stack.api}/servables/{ref}/versions/2/citation", params={"format": "bibtex"})
    assert pinned.status_code == 200, pinned.text
    assert (
        pinned.text.startswith(f"@misc{{alice_{name}_v2,")
        and "Withdrawn: this version was deleted" in pinned.text
    )
    assert f"{{10.5555/dlhub.{tag}}}" in pinned.text
    datacite = alice.citation(f"{ref}@2", format="datacite")
    assert isinstance(datacite, dict) and datacite["state"] == "registered"
    assert any(d["dateType"] == "Withdrawn" for d in datacite["dates"])
    assert datacite["url"] == f"{stack.api}/servables/{ref}/versions/2/citation"
    # describe and run of the deleted version stay 410; "latest" cites the live version 1
    assert httpx.get(f"{stack.api}/servables/{ref}/versions/2").status_code == 410
    assert httpx.post(f"{stack.api}/servables/{ref}/versions/2/run", json={"inputs": 1}).status_code == 410
    latest = alice.citation(ref)
    assert isinstance(latest, str) and "_v1," in latest and "Withdrawn" not in latest

    # everything deleted: latest cites the newest tombstone, still withdrawn
    alice.delete(ref)
    latest = alice.citation(ref)
    assert isinstance(latest, str) and "_v2," in latest and "Withdrawn" in latest
    first = alice.citation(f"{ref}@1", format="datacite")
    assert isinstance(first, dict) and first["state"] == "registered" and first["version"] == "1"
    assert httpx.get(f"{stack.api}/servables/{ref}/citation").status_code == 200  # anonymous, public
    with pytest.raises(NotFound):
        alice.citation(f"{ref}@7")


def test_tombstone_of_a_private_servable_is_not_citable_by_others(
    alice: DLHubClient, bob: DLHubClient, pkg_dir: Path
) -> None:
    name = unique("private_withdrawn")
    alice.publish(stack_document(name, uuid.uuid4().hex[:10], visible_to=["user:alice"]), base_dir=pkg_dir)
    alice.delete(f"alice/{name}")
    assert "Withdrawn" in str(alice.citation(f"alice/{name}@1"))
    with pytest.raises(NotFound):
        bob.citation(f"alice/{name}@1")
