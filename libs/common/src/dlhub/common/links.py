"""Links from a servable to its datasets, as the search index and the store match them.

A publication names its training and test data in ``dlhub.training_data`` / ``dlhub.test_data``: DLHub
references (``owner/name[@version]``, pinned to a version when published) or DOIs. A link is matched by
"terms": a reference by ``owner/name`` and by ``owner/name@version``, a DOI by its case-folded bare form,
so ``trained_on=alice/iris`` finds every version's users and ``trained_on=10.5281/ZENODO.1`` finds a DOI.
"""

from __future__ import annotations

import re
from typing import Final

DOI_PREFIXES: Final = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:")
_DOI_RE: Final = re.compile(r"^10\.\d{4,9}/\S+$", re.IGNORECASE)
MAX_LINK_CHARS: Final = 512


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` accepts "²", which ``int`` refuses."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def bare_doi(value: str) -> str | None:
    """The DOI name in ``value`` (bare, ``doi:`` or a doi.org URL), or None when it is no DOI."""
    text = value.strip()
    for prefix in DOI_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    return text if _DOI_RE.fullmatch(text) else None


def link_terms(ref: str) -> list[str]:
    """The terms a stored link is matched by (see the module docstring)."""
    doi = bare_doi(ref)
    if doi is not None:
        return [doi.casefold()]
    base, _, version = ref.strip().partition("@")
    return [base, f"{base}@{int(version)}"] if _is_number(version) else [base]


def query_link_term(value: str) -> str:
    """How a ``trained_on``/``tested_on`` filter value is matched: a DOI case-folded, a reference as
    given (a version written ``@03`` as ``@3``)."""
    doi = bare_doi(value)
    if doi is not None:
        return doi.casefold()
    base, _, version = value.strip().partition("@")
    return f"{base}@{int(version)}" if _is_number(version) else value.strip()


def store_target(ref: str) -> str:
    """The key the store indexes a link under: ``owner/name`` for a reference, ``doi:<folded>`` for a DOI
    (a dataset's reverse lookup asks for its name and, when it has one, its DOI)."""
    doi = bare_doi(ref)
    if doi is not None:
        return "doi:" + doi.casefold()
    return ref.strip().partition("@")[0]
