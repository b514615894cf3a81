"""Datasets as citable records and servables linked to them, over REST, the SDK and the CLI, on the
session's embedded stack: file manifests with checksums, tabular previews, DataCite/BibTeX of a dataset,
training/test links both ways in describe, the search filters by link, and links the publisher may not use.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlhub.client import DLHubClient
from dlhub.client.metadata import dataset_document, python_function_document
from dlhub.common.errors import ValidationFailed
from tests.support.polling import wait_until
from tests.support.stack import StackInfo, unique

ROWS = 30
LONG_CELL = "x" * 1000


def write_dataset(folder: Path) -> Path:
    """A CSV of ROWS rows (int, float, bool, text columns; one cell far over the cell cap) and a README."""
    lines = ["id,length_cm,is_setosa,species"]
    for i in range(ROWS):
        species = LONG_CELL if i == 2 else f'"iris, {i}"'
        lines.append(f"{i},{1.5 + i / 10},{'true' if i % 2 else 'false'},{species}")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "iris.csv").write_text("\n".join(lines) + "\n")
    (folder / "README.txt").write_text("Iris measurements.\n")
    return folder


@pytest.fixture(scope="module")
def dataset(alice: DLHubClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A public dataset of alice's: (owner/name, its folder)."""
    folder = write_dataset(tmp_path_factory.mktemp("dataset"))
    name = unique("iris_data")
    reply = alice.publish_dataset(
        name, ["data/iris.csv", "README.txt"], title="Iris data", authors=["Doe, Jane"], base_dir=folder
    )
    assert reply["status"] == "ready" and reply["version"] == 1
    return f"alice/{name}", folder


def model_document(name: str, **links: Any) -> dict[str, Any]:
    return python_function_document(
        name=name,
        module="e2efns",
        function="double",
        files=["e2efns.py"],
        title=f"Model {name}",
        authors=["Doe, Jane"],
        **links,
    )


@pytest.fixture(scope="module")
def linked(alice: DLHubClient, pkg_dir: Path, dataset: tuple[str, Path]) -> tuple[str, str]:
    """A public servable trained on the dataset and tested on a DOI: (owner/name, the test DOI)."""
    ref, _ = dataset
    doi = f"10.5281/zenodo.{uuid.uuid4().int % 10**8}"
    name = unique("linked_model")
    reply = alice.publish(model_document(name, training_data=[ref], test_data=[doi]), base_dir=pkg_dir)
    assert reply["status"] == "ready"
    return f"alice/{name}", doi


def test_describe_lists_files_with_checksums_and_a_preview(
    stack: StackInfo, dataset: tuple[str, Path]
) -> None:
    ref, folder = dataset
    described = httpx.get(f"{stack.api}/servables/{ref}").json()
    assert described["type"] == "dataset" and described["status"] == "ready"
    manifest = {entry["path"]: entry for entry in described["manifest"]}
    assert set(manifest) == {"data/iris.csv", "README.txt"}
    for path, entry in manifest.items():
        content = (folder / path).read_bytes()
        assert entry["size_bytes"] == len(content)
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
    (preview,) = described["previews"]
    assert preview["path"] == "data/iris.csv" and preview["format"] == "csv"
    assert preview["columns"] == [
        {"name": "id", "type": "integer"},
        {"name": "length_cm", "type": "number"},
        {"name": "is_setosa", "type": "boolean"},
        {"name": "species", "type": "string"},
    ]
    assert len(preview["rows"]) == 10 and preview["truncated"] is True  # builder.preview_rows
    assert preview["rows"][0] == ["0", "1.5", "false", "iris, 0"]
    long_cell = preview["rows"][2][3]
    assert len(long_cell) == 200 and long_cell.startswith("xxx")  # builder.preview_max_cell_chars
    assert described["used_by"] == [] or all(
        u["relation"] in ("training", "test") for u in described["used_by"]
    )


def test_dataset_citations(stack: StackInfo, alice: DLHubClient, dataset: tuple[str, Path]) -> None:
    ref, _ = dataset
    name = ref.split("/")[1]
    datacite = httpx.get(f"{stack.api}/servables/{ref}/citation", params={"format": "datacite"}).json()
    assert datacite["resourceType"]["resourceTypeGeneral"] == "Dataset"
    assert datacite["version"] == "1"
    bib = alice.citation(ref)
    assert isinstance(bib, str) and bib.startswith(f"@dataset{{alice_{name}_v1,")


def test_links_both_ways_in_describe_and_citation(
    stack: StackInfo, alice: DLHubClient, bob: DLHubClient, dataset: tuple[str, Path], linked: tuple[str, str]
) -> None:
    ref, _ = dataset
    model, doi = linked
    described = alice.describe(model)
    assert described["datasets"] == [
        {"dataset": f"{ref}@1", "relation": "training", "relationType": "IsDerivedFrom", "kind": "dlhub"},
        {"dataset": doi, "relation": "test", "relationType": "References", "kind": "doi"},
    ]
    users = bob.describe(ref)["used_by"]  # anyone who sees both
    assert {"servable": f"{model}@1", "title": f"Model {model.split('/')[1]}", "relation": "training",
            "relationType": "IsDerivedFrom", "dataset": f"{ref}@1"} in users  # fmt: skip
    datacite = alice.citation(model, format="datacite")
    assert isinstance(datacite, dict)
    related = datacite["relatedIdentifiers"]
    assert {
        "relatedIdentifier": f"{stack.api}/servables/{ref}/versions/1",
        "relatedIdentifierType": "URL",
        "relationType": "IsDerivedFrom",
    } in related
    assert {"relatedIdentifier": doi, "relatedIdentifierType": "DOI", "relationType": "References"} in related


def test_private_users_are_hidden_from_others(
    alice: DLHubClient, bob: DLHubClient, pkg_dir: Path, dataset: tuple[str, Path]
) -> None:
    ref, _ = dataset
    name = unique("private_user")
    doc = model_document(name, training_data=[ref])
    doc["dlhub"]["visible_to"] = ["user:alice"]
    alice.publish(doc, base_dir=pkg_dir)
    assert f"alice/{name}@1" in [u["servable"] for u in alice.describe(ref)["used_by"]]
    assert f"alice/{name}@1" not in [u["servable"] for u in bob.describe(ref)["used_by"]]


def test_search_filters_by_link(
    alice: DLHubClient, bob: DLHubClient, dataset: tuple[str, Path], linked: tuple[str, str]
) -> None:
    ref, _ = dataset
    model, doi = linked

    def found(client: DLHubClient = alice, **filters: Any) -> list[str]:
        return [h["shorthand_name"] for h in client.search(**filters)["hits"]]

    wait_until(lambda: model in found(trained_on=ref), timeout_s=10, message="search by training data")
    assert model in found(trained_on=f"{ref}@1")
    assert model not in found(trained_on=f"{ref}@2")
    assert model in found(tested_on=doi.upper())
    assert model in found(tested_on=f"https://doi.org/{doi}")
    assert model not in found(tested_on=ref)
    assert model in found(bob, trained_on=ref, tested_on=doi)
    hit = next(h for h in alice.search(trained_on=ref)["hits"] if h["shorthand_name"] == model)
    assert hit["trained_on"] == [ref, f"{ref}@1"] and hit["kind"] == "servable"
    # the dataset's own hit carries its column names
    columns = ["id", "length_cm", "is_setosa", "species"]
    wait_until(
        lambda: (
            [(h["kind"], h["columns"]) for h in alice.search(name=ref.split("/")[1])["hits"]]
            == [("dataset", columns)]
        ),
        timeout_s=10,
        message="the dataset's hit with its columns",
    )
    # the kind filter and facet (REST, through the SDK's pass-through)
    assert model not in found(trained_on=ref, kind="dataset") and model in found(
        trained_on=ref, kind="servable"
    )
    assert found(name=ref.split("/")[1], kind="dataset") == [ref]
    counts = alice.search(name=ref.split("/")[1], facets="kind", limit=1)["facets"]["kind"]
    assert counts == [{"value": "dataset", "count": 1}]
    refused = httpx.get(f"{alice.url}/api/v1/search", params={"kind": "model"})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "kind"


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        (["alice/no_such_dataset"], "not found"),
        (["10.5/not-a-doi"], "is not a DOI"),
        (["https://example.org/data.csv"], "is not a DOI"),
        (["not a reference"], "expected 'owner/name'"),
    ],
)
def test_links_to_missing_or_malformed_datasets_are_refused(
    stack: StackInfo, pkg_dir: Path, refs: list[str], message: str
) -> None:
    bob = DLHubClient(stack.url, stack.tokens["bob"])
    with pytest.raises(ValidationFailed) as caught:
        bob.publish(model_document(unique("bad_link"), training_data=refs), base_dir=pkg_dir)
    assert caught.value.field == "dlhub.training_data[0]" and message in caught.value.message


def test_links_to_private_datasets_and_servables_are_refused(
    stack: StackInfo, alice: DLHubClient, pkg_dir: Path, tmp_path: Path
) -> None:
    folder = write_dataset(tmp_path)
    private = unique("private_data")
    doc = dataset_document(name=private, files=["README.txt"], title="Private", authors=["Doe, J"])
    doc["dlhub"]["visible_to"] = ["user:alice"]
    alice.publish(doc, base_dir=folder)
    body = dataset_document(name=unique("bad_link"), files=[], title="Derived", authors=["Doe, J"])
    body["dlhub"]["test_data"] = [f"alice/{private}"]
    reply = httpx.post(
        f"{stack.api}/servables", json=body, headers={"Authorization": f"Bearer {stack.tokens['bob']}"}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == "dlhub.test_data[0]"
    assert "not found" in error["message"]  # the same answer as for a dataset that does not exist
    # the owner may link it; a servable is not a dataset
    assert alice.publish(model_document(unique("own_link"), test_data=[f"alice/{private}"]), base_dir=pkg_dir)
    model = unique("not_data")
    alice.publish(model_document(model), base_dir=pkg_dir)
    with pytest.raises(ValidationFailed) as caught:
        alice.publish(model_document(unique("bad_link"), training_data=[f"alice/{model}"]), base_dir=pkg_dir)
    assert "is not a dataset" in caught.value.message


def test_cli_dataset_and_links(
    stack: StackInfo, dataset: tuple[str, Path], tmp_path: Path, pkg_dir: Path
) -> None:
    ref, _ = dataset
    env = dict(stack.env, DLHUB_URL=stack.url, DLHUB_TOKEN=stack.tokens["alice"])

    def dlhub(*args: str, cwd: Path = tmp_path) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dlhub.client.cli", *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    write_dataset(tmp_path)
    name = unique("cli_data")
    dlhub("init", "--dataset", "--name", name, "--file", "data/iris.csv", "--author", "Doe, Jane")
    dlhub("publish")
    described = json.loads(dlhub("describe", f"alice/{name}"))
    assert described["type"] == "dataset" and [m["path"] for m in described["manifest"]] == ["data/iris.csv"]
    assert described["previews"][0]["columns"][0] == {"name": "id", "type": "integer"}
    assert json.loads(dlhub("cite", f"alice/{name}", "--format", "datacite"))["resourceType"] == {
        "resourceTypeGeneral": "Dataset"
    }

    model = unique("cli_model")
    dlhub(
        "init", "--name", model, "--function", "e2efns:double", "--training-data", ref,
        "--test-data", f"alice/{name}", "--output", str(tmp_path / "model.json"), cwd=pkg_dir,
    )  # fmt: skip
    document = json.loads((tmp_path / "model.json").read_text())
    assert document["dlhub"]["training_data"] == [ref]
    (pkg_dir / "model.json").write_text(json.dumps(document))
    dlhub("publish", "model.json", cwd=pkg_dir)
    wait_until(
        lambda: f"alice/{model}" in dlhub("search", "--trained-on", ref, "--json"),
        timeout_s=10,
        message="CLI search by training data",
    )
    hits = json.loads(dlhub("search", "--tested-on", f"alice/{name}", "--json"))["hits"]
    assert [h["shorthand_name"] for h in hits] == [f"alice/{model}"]
