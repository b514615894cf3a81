"""``python -m dlhub.search [--config FILE]``: serve search/index, search/query and search/reindex until
signalled, on the backend named by ``search.backend`` (``DLHUB_SEARCH__BACKEND=elasticsearch``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dlhub.common.bus import HandlerService
from dlhub.common.codec import Codec
from dlhub.common.config import DLHubSettings
from dlhub.common.logging import get_logger
from dlhub.common.service_main import run_service, serve_until_signalled
from dlhub.search.backends import describe_engine, make_engine
from dlhub.search.service import SEARCH_CAPACITY, SEARCH_TOPICS, SearchService

log = get_logger("dlhub.search")


async def serve(settings: DLHubSettings) -> None:
    codec = Codec(max_message_bytes=settings.bus.max_message_bytes)
    async with make_engine(settings) as engine:
        log.info("index open", documents=await engine.count())
        service = SearchService(engine=engine, codec=codec)
        handler = HandlerService(
            bus=settings.bus,
            codec=codec,
            kind="search",
            topics=list(SEARCH_TOPICS),
            capacity=SEARCH_CAPACITY,
            handle=service.handle,
        )
        ready = {
            "topics": list(SEARCH_TOPICS),
            "backend": settings.search.backend,
            "index": describe_engine(settings),
        }
        await serve_until_signalled(handler, settings, ready_fields=ready)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("search", serve, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
