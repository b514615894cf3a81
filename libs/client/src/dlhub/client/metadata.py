"""Write DLHub publication documents in the layout of the original DLHub SDK (2.1.0), so that documents
from either tool publish the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

SDK_COMPAT_VERSION = "2.1.0"
ANY_TYPE: dict[str, Any] = {"type": "python object", "python_type": "builtins.object"}


def creators(authors: Sequence[str], affiliations: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Turn ``"Family, Given"`` strings into DataCite creators."""
    result = []
    for author in authors:
        family, _, given = (part.strip() for part in author.partition(","))
        result.append(
            {
                "givenName": given,
                "familyName": family,
                "affiliations": list(affiliations),
                "nameIdentifiers": [],
            }
        )
    return result


def base_document(
    *,
    name: str,
    title: str,
    authors: Sequence[str],
    affiliations: Sequence[str] = (),
    description: str = "",
    domains: Sequence[str] = (),
    visible_to: Sequence[str] = ("public",),
    files: dict[str, Any] | None = None,
    dependencies: dict[str, str] | None = None,
    training_data: Sequence[str] = (),
    test_data: Sequence[str] = (),
) -> dict[str, Any]:
    """The common sections; ``training_data``/``test_data``: datasets as ``owner/name[@version]`` or DOIs
    (the registry checks them and pins references to a version)."""
    descriptions = [{"description": description, "descriptionType": "Abstract"}] if description else []
    document: dict[str, Any] = {
        "datacite": {
            "identifier": {"identifier": "10.datacite/placeholder", "identifierType": "DOI"},
            "creators": creators(authors, affiliations),
            "titles": [{"title": title}],
            "publisher": "DLHub",
            "publicationYear": str(dt.date.today().year),
            "resourceType": {"resourceTypeGeneral": "InteractiveResource"},
            "subjects": [],
            "contributors": [],
            "descriptions": descriptions,
            "alternateIdentifiers": [],
            "relatedIdentifiers": [],
            "rightsList": [],
            "fundingReferences": [],
        },
        "dlhub": {
            "version": SDK_COMPAT_VERSION,
            "domains": list(domains),
            "visible_to": list(visible_to),
            "name": name,
            "files": files or {},
            "dependencies": {"python": dependencies or {}},
            "type": "servable",
        },
    }
    add_dataset_links(document, training_data=training_data, test_data=test_data)
    return document


def add_dataset_links(
    document: dict[str, Any], *, training_data: Sequence[str] = (), test_data: Sequence[str] = ()
) -> dict[str, Any]:
    """Name the datasets a servable was trained and tested on (``dlhub.training_data``/``test_data``)."""
    dlhub: dict[str, Any] = document["dlhub"]
    for key, refs in (("training_data", training_data), ("test_data", test_data)):
        if refs:
            dlhub[key] = list(dict.fromkeys([*dlhub.get(key, []), *refs]))
    return document


def dataset_document(
    *,
    name: str,
    files: Sequence[str],
    title: str,
    authors: Sequence[str],
    **common: Any,
) -> dict[str, Any]:
    """A dataset: its files (shipped in the package) with DataCite ``resourceTypeGeneral`` Dataset; the
    registry lists each file's size and sha256 and previews its CSV/TSV/JSON lines files."""
    doc = base_document(name=name, title=title, authors=authors, files={"data": list(files)}, **common)
    doc["datacite"]["resourceType"] = {"resourceTypeGeneral": "Dataset"}
    doc["dlhub"]["type"] = "dataset"
    return doc


def python_function_document(
    *,
    name: str,
    module: str,
    function: str,
    title: str,
    authors: Sequence[str],
    files: Sequence[str] = (),
    autobatch: bool = False,
    unpack: bool = False,
    input_type: dict[str, Any] | None = None,
    output_type: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    **common: Any,
) -> dict[str, Any]:
    """A python-function servable (shim ``python.PythonStaticMethodServable``); without types, its input and
    output are ``python object`` (anything)."""
    doc = base_document(
        name=name, title=title, authors=authors, files={"other": list(files)} if files else {}, **common
    )
    doc["servable"] = {
        "type": "Python static method",
        "shim": "python.PythonStaticMethodServable",
        "methods": {
            "run": {
                "input": input_type or dict(ANY_TYPE, description="Input to the function"),
                "output": output_type or dict(ANY_TYPE, description="Output of the function"),
                "parameters": dict(parameters or {}),
                "method_details": {
                    "module": module,
                    "method_name": function,
                    "autobatch": autobatch,
                    "unpack": unpack,
                },
            }
        },
    }
    return doc


def sklearn_document(
    *,
    name: str,
    model_path: str,
    title: str,
    authors: Sequence[str],
    n_input_columns: int,
    method: str = "predict",
    serialization_method: str = "pickle",
    model_type: str = "",
    classes: Sequence[Any] | None = None,
    **common: Any,
) -> dict[str, Any]:
    """A scikit-learn servable (shim ``sklearn.ScikitLearnServable``)."""
    doc = base_document(name=name, title=title, authors=authors, files={"model": model_path}, **common)
    options: dict[str, Any] = {"serialization_method": serialization_method}
    if classes is not None:
        options.update(classes=list(classes), is_classifier=True)
    output: dict[str, Any] = {"type": "ndarray", "shape": [None], "description": "Model output"}
    doc["servable"] = {
        "type": "Scikit-learn estimator",
        "shim": "sklearn.ScikitLearnServable",
        "model_type": model_type,
        "model_summary": model_type,
        "methods": {
            "run": {
                "input": {
                    "type": "ndarray",
                    "shape": [None, n_input_columns],
                    "item_type": {"type": "float"},
                    "description": f"Records of {n_input_columns} features",
                },
                "output": output,
                "parameters": {},
                "method_details": {"method_name": method},
            }
        },
        "options": options,
    }
    return doc


def pipeline_document(
    *,
    name: str,
    steps: Sequence[str | Mapping[str, Any]],
    title: str,
    authors: Sequence[str],
    **common: Any,
) -> dict[str, Any]:
    """A pipeline: servable versions run in order, each output the next input, as one servable.

    ``steps``: ``"owner/name[@version]"`` strings or ``{"servable", "method"?, "parameters"?}`` mappings. The
    registry pins unpinned steps to their current version and derives ``methods.run`` (the first step's
    input type, the last step's output type) when the pipeline is published.
    """
    doc = base_document(name=name, title=title, authors=authors, **common)
    doc["dlhub"]["type"] = "pipeline"
    doc["servable"] = {
        "type": "pipeline",
        "shim": "pipeline",
        "steps": [_pipeline_step(step) for step in steps],
    }
    return doc


def _pipeline_step(step: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(step, str):
        return {"servable": step, "method": "run", "parameters": {}}
    return {"method": "run", "parameters": {}} | dict(step)
