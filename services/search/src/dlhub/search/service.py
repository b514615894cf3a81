"""Bus glue of the search service: one handler per topic, picked from a table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog

from dlhub.common.codec import Codec
from dlhub.common.errors import InvalidMessage
from dlhub.common.ids import SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC, SEARCH_REINDEX_TOPIC
from dlhub.common.logging import get_logger
from dlhub.common.messages import Dispatch, Result
from dlhub.common.payloads import IndexRequest, ReindexOutcome, ReindexRequest, SearchQuery, decode_payload
from dlhub.search.engine import SearchEngine

log = get_logger(__name__)

SEARCH_TOPICS: Final = (SEARCH_INDEX_TOPIC, SEARCH_QUERY_TOPIC, SEARCH_REINDEX_TOPIC)
SEARCH_CAPACITY: Final = 8
"""Concurrent tasks; the SQLite engine serialises them on its thread, Elasticsearch does not."""


class SearchService:
    """Handles ``search/index``, ``search/query`` and ``search/reindex`` against one ``SearchEngine``."""

    def __init__(self, *, engine: SearchEngine, codec: Codec) -> None:
        self.engine = engine
        self.codec = codec
        self._routes: dict[str, Callable[[msgspec.Raw], Awaitable[Any]]] = {
            SEARCH_INDEX_TOPIC: self.index,
            SEARCH_QUERY_TOPIC: self.search,
            SEARCH_REINDEX_TOPIC: self.reindex,
        }

    async def handle(self, dispatch: Dispatch) -> Result:
        route = self._routes.get(dispatch.topic)
        if route is None:
            raise InvalidMessage(f"search service does not serve topic {dispatch.topic!r}")
        with structlog.contextvars.bound_contextvars(task_id=dispatch.task_id, topic=dispatch.topic):
            try:
                output = await route(dispatch.inputs)
            except InvalidMessage as exc:
                log.warning("rejected malformed request", reason=exc.message)
                raise
        return Result(
            task_id=dispatch.task_id, ok=True, output=self.codec.encode_value(output), step=dispatch.step
        )

    async def index(self, raw: msgspec.Raw) -> dict[str, Any]:
        request = decode_payload(raw, IndexRequest)
        if request.op == "delete":
            existed = await self.engine.delete(request.id)
            log.info("document deleted", doc_id=request.id, existed=existed)
            return {"op": "delete", "id": request.id, "existed": existed}
        document = request.document
        if document is None:
            raise InvalidMessage("upsert needs a document", field="document")
        if document.id != request.id:
            raise InvalidMessage(
                f"document id {document.id!r} does not match request id {request.id!r}", field="document.id"
            )
        await self.engine.upsert(document)
        log.info("document indexed", doc_id=request.id, version=document.version)
        return {"op": "upsert", "id": request.id}

    async def search(self, raw: msgspec.Raw) -> Any:
        query = decode_payload(raw, SearchQuery)
        return await self.engine.query(query)

    async def reindex(self, raw: msgspec.Raw) -> ReindexOutcome:
        request = decode_payload(raw, ReindexRequest)
        index = await self.engine.reindex(request.documents)
        count = await self.engine.count()
        log.info("index rebuilt", documents=count, index=index)
        return ReindexOutcome(documents=count, index=index)
